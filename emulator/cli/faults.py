"""CLI commands: ``nitro-emu fault nsm|kms|clear|show`` (docs/testing-unhappy-paths.md).

    nitro-emu fault nsm --enclave-name app --request Attestation --error InternalError --count 2
    nitro-emu fault nsm --enclave-id ID --delay 1.5                 # every request, until cleared
    nitro-emu fault kms --operation Decrypt --error ThrottlingException --count 1
    nitro-emu fault show --enclave-id ID        # or --kms
    nitro-emu fault clear --enclave-id ID       # or --kms
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from emulator.cli.enclaves import add_enclave_target
from emulator.settings import get_settings
from fake_nsm.faults import FaultControl


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``fault nsm|kms|show|clear`` to the top-level parser."""
    parser = subparsers.add_parser("fault", help="inject NSM / KMS faults (errors, delays, drops)")
    commands = parser.add_subparsers(dest="fault_command", metavar="COMMAND")
    commands.required = True
    nsm = commands.add_parser("nsm", help="make a running enclave's NSM misbehave")
    add_enclave_target(nsm)
    nsm.add_argument("--request", default="all", help="Attestation, DescribePCR, ExtendPCR, ... or all (default)")
    _action(nsm, "an NSM ErrorCode, e.g. InternalError")
    nsm.set_defaults(handler=_arm_nsm)
    kms = commands.add_parser("kms", help="make the local KMS of this state dir misbehave")
    kms.add_argument("--operation", default="all", help="Decrypt, GenerateDataKey, ... or all (default)")
    _action(kms, "ThrottlingException, KMSInternalException, DisabledException, KMSInvalidStateException, ...")
    kms.add_argument("--message", help="the error message (default: AWS's words for that error)")
    kms.set_defaults(handler=_arm_kms)
    for name, handler, words in (("show", _show, "list"), ("clear", _clear, "disarm")):
        command = commands.add_parser(name, help=f"{words} the armed faults of an enclave's NSM or of the KMS")
        group = add_enclave_target(command)
        group.add_argument("--kms", action="store_true", help="the local KMS of this state dir")
        if name == "clear":
            command.add_argument("--request", help="only the faults naming this request or operation")
        command.set_defaults(handler=handler)


def _action(parser: argparse.ArgumentParser, codes: str) -> None:
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--error", metavar="CODE", help=f"answer with this error: {codes}")
    action.add_argument("--delay", type=float, metavar="SECONDS", help="answer late")
    action.add_argument("--drop", action="store_true", help="close the connection without an answer")
    action.add_argument("--truncate", action="store_true", help="send half the answer, then close")
    parser.add_argument("--count", type=int, help="for the next N requests (default: until cleared)")


def _options(args: argparse.Namespace) -> dict[str, Any]:
    options = {"error": args.error, "delay": args.delay, "drop": args.drop, "truncate": args.truncate,
               "count": args.count}
    if getattr(args, "message", None):
        options["message"] = args.message
    return {key: value for key, value in options.items() if value not in (None, False)}


def _enclave_control(args: argparse.Namespace) -> FaultControl:
    from emulator.enclave.faults import nsm_fault_control
    from emulator.enclave.runtime import find_enclave

    info = find_enclave(enclave_id=args.enclave_id, name=args.enclave_name)
    return nsm_fault_control(get_settings(), info.enclave_id)


def _kms_control() -> FaultControl:
    from emulator.kms.faults import kms_fault_control, kms_faults_path
    from fake_nsm.faults import FaultPlan

    return kms_fault_control(FaultPlan(kms_faults_path(get_settings())))


def _control(args: argparse.Namespace) -> FaultControl:
    return _kms_control() if getattr(args, "kms", False) else _enclave_control(args)


def _arm_nsm(args: argparse.Namespace) -> int:
    fault = _enclave_control(args).add(args.request, **_options(args))
    print(json.dumps({"Armed": fault.describe()}, indent=2))
    return 0


def _arm_kms(args: argparse.Namespace) -> int:
    fault = _kms_control().add(args.operation, **_options(args))
    print(json.dumps({"Armed": fault.describe()}, indent=2))
    return 0


def _show(args: argparse.Namespace) -> int:
    print(json.dumps({"Faults": _control(args).armed()}, indent=2))
    return 0


def _clear(args: argparse.Namespace) -> int:
    print(json.dumps({"Cleared": _control(args).clear(args.request)}, indent=2))
    return 0
