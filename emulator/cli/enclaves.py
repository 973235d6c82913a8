"""CLI commands: run-enclave, describe-enclaves, terminate-enclave, console, explain.

Flags, stderr lines and stdout JSON as nitro-cli's (``src/lib.rs`` ``create_app!``,
``src/common/commands_parser.rs``, ``src/common/json_output.rs``; nitro-cli-contract.md).
Values are parsed here rather than by argparse so that a bad value gets nitro-cli's
``[ E03 ]`` and exit status 3, not argparse's usage error.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from emulator.nitro_cli_errors import nitro_cli_error

# serde_json names of RunEnclavesArgs, the --config file's keys (commands_parser.rs).
_CONFIG_KEYS = frozenset(
    {"eif_path", "enclave_cid", "memory_mib", "cpu_ids", "debug_mode", "attach_console", "cpu_count", "enclave_name"}
)


#: run-enclave's one stderr line for an EIF that nitro-cli built (docs/fidelity.md).
NITRO_CLI_NOTE = (
    "nitro-emu: a nitro-cli EIF: its PCRs are the file's own, but its kernel, init and nsm.ko are not "
    "run; the customer ramdisk's cmd runs in a container as the SDK's init would run it."
)


def _print_json(value: Any) -> None:
    """serde_json::to_string_pretty: 2-space indent, ``": "``."""
    print(json.dumps(value, indent=2))
    sys.stdout.flush()


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add this group's commands to the top-level parser."""
    run = subparsers.add_parser("run-enclave", help="start an enclave from an EIF")
    run.add_argument("--eif-path", help="path of the enclave image file")
    run.add_argument("--cpu-count", help="number of CPUs")
    run.add_argument("--cpu-ids", nargs="+", metavar="ID", help="the CPU ids to give the enclave")
    run.add_argument("--memory", help="memory in MiB (or with an M/G/T suffix)")
    run.add_argument("--enclave-cid", help="the enclave's VSOCK CID (default: the lowest free from 16)")
    run.add_argument("--debug-mode", action="store_true", help="console available; PCRs read as zeros")
    run.add_argument("--attach-console", action="store_true", help="attach the console (implies --debug-mode)")
    run.add_argument("--enclave-name", help="a name for the enclave (default: the EIF's file stem)")
    run.add_argument("--config", metavar="JSON", help="read the options from a JSON file")
    run.add_argument("--instance-id", help="nitro-emu: the parent instance id (PCR4), i- + 17 hex")
    run.add_argument(
        "--clock-offset", type=float, default=0.0, metavar="SECONDS",
        help="nitro-emu: the enclave's clock is this far ahead of the host's (negative: behind); "
        "its documents and certificates are dated by it (`nitro-emu clock` changes it later)",
    )
    run.set_defaults(handler=run_enclave_command)

    describe = subparsers.add_parser("describe-enclaves", help="list the running enclaves")
    describe.add_argument("--metadata", action="store_true", help="add the EIF's metadata")
    describe.set_defaults(handler=describe_enclaves_command)

    terminate = subparsers.add_parser("terminate-enclave", help="terminate enclaves")
    which = add_enclave_target(terminate)
    which.add_argument("--all", action="store_true", help="terminate every enclave of this home")
    terminate.set_defaults(handler=terminate_enclave_command)

    console = subparsers.add_parser("console", help="stream a debug-mode enclave's output")
    add_enclave_target(console)
    console.add_argument("--disconnect-timeout", metavar="SECONDS", help="disconnect after this many seconds")
    console.set_defaults(handler=console_command)

    clock = subparsers.add_parser("clock", help="nitro-emu: show or set a running enclave's clock offset")
    add_enclave_target(clock)
    clock.add_argument("--offset", type=float, metavar="SECONDS",
                       help="set it: seconds ahead of the host (negative: behind); 0 is the host's time")
    clock.set_defaults(handler=clock_command)

    explain = subparsers.add_parser("explain", help="explain a nitro-cli error code")
    explain.add_argument("--error-code", required=True, metavar="Exx")
    explain.set_defaults(handler=explain_command)


def add_enclave_target(parser: argparse.ArgumentParser) -> Any:
    """``--enclave-id`` | ``--enclave-name``, one required (nitro-cli's console/terminate);
    the group is returned for more choices (terminate's ``--all``)."""
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--enclave-id", help="the enclave's id (describe-enclaves)")
    group.add_argument("--enclave-name", help="the enclave's name")
    return group


def _run_options(args: argparse.Namespace) -> dict[str, Any]:
    """The run options from the flags or from ``--config`` (never both)."""
    from emulator.enclave.resources import parse_int_argument, parse_memory

    if args.config:
        given = [f"--{flag.replace('_', '-')}" for flag in ("eif_path", "cpu_count", "cpu_ids", "memory",
                                                            "enclave_cid", "enclave_name")
                 if getattr(args, flag) is not None] + (["--debug-mode"] if args.debug_mode else [])
        if given:
            raise nitro_cli_error("ConflictingArgument", "config", given[0])
        return _config_options(Path(args.config), args.attach_console)
    if args.eif_path is None:
        raise nitro_cli_error("MissingArgument", "eif-path")
    if args.memory is None:
        raise nitro_cli_error("MissingArgument", "memory")
    if args.cpu_count is not None and args.cpu_ids is not None:
        raise nitro_cli_error("ConflictingArgument", "cpu-count", "cpu-ids")
    if args.cpu_count is None and args.cpu_ids is None:
        raise nitro_cli_error("MissingArgument", "cpu-count", detail="Give --cpu-count N or --cpu-ids ID...")
    return {
        "eif_path": args.eif_path,
        "memory_mib": parse_memory(args.memory),
        "cpu_count": parse_int_argument("cpu-count", args.cpu_count) if args.cpu_count is not None else None,
        "cpu_ids": [parse_int_argument("cpu-id", cpu) for cpu in args.cpu_ids] if args.cpu_ids else None,
        "enclave_cid": parse_int_argument("enclave-cid", args.enclave_cid) if args.enclave_cid is not None else None,
        "debug_mode": bool(args.debug_mode or args.attach_console),
        "attach_console": bool(args.attach_console),
        "enclave_name": args.enclave_name,
    }


def _config_options(path: Path, attach_console: bool) -> dict[str, Any]:
    """nitro-cli's ``--config`` JSON (RunEnclavesArgs): E19 unreadable, E17 bad JSON."""
    try:
        data = json.loads(path.read_text())
    except OSError as error:
        raise nitro_cli_error("FileOperationFailure", str(path), "Open", detail=f"({error.strerror}).") from error
    except ValueError as error:
        raise nitro_cli_error("SerdeError", detail=f"Invalid JSON format for config file {path}: {error}.") from error
    if not isinstance(data, dict):
        raise nitro_cli_error("SerdeError", detail=f"{path} must hold a JSON object.")
    unknown = sorted(set(data) - _CONFIG_KEYS)
    if unknown:
        raise nitro_cli_error("SerdeError", detail=f"unknown field(s) {unknown} in {path}; expected {sorted(_CONFIG_KEYS)}.")
    for key in ("eif_path", "memory_mib"):
        if key not in data:
            raise nitro_cli_error("SerdeError", detail=f"missing field `{key}` in {path}.")
    if data.get("cpu_count") is None and data.get("cpu_ids") is None:
        raise nitro_cli_error("MissingArgument", "cpu-count", detail="Missing both `cpu-count` and `cpu-ids`.")
    if data.get("cpu_count") is not None and data.get("cpu_ids") is not None:
        raise nitro_cli_error("ConflictingArgument", "cpu-count", "cpu-ids")
    for key in ("memory_mib", "cpu_count", "enclave_cid"):
        value = data.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            raise nitro_cli_error("SerdeError", detail=f"`{key}` in {path} must be a non-negative integer.")
    attach = bool(data.get("attach_console")) or attach_console
    return {
        "eif_path": data["eif_path"],
        "memory_mib": data["memory_mib"],
        "cpu_count": data.get("cpu_count"),
        "cpu_ids": data.get("cpu_ids"),
        "enclave_cid": data.get("enclave_cid"),
        "debug_mode": bool(data.get("debug_mode")) or attach,
        "attach_console": attach,
        "enclave_name": data.get("enclave_name"),
    }


def clock_command(args: argparse.Namespace) -> int:
    """``nitro-emu clock``: the enclave's offset and time, after setting it if asked."""
    from emulator.enclave.clock import EnclaveClock
    from emulator.enclave.runtime import find_enclave
    from emulator.settings import get_settings

    info = find_enclave(enclave_id=args.enclave_id, name=args.enclave_name)
    clock = EnclaveClock(get_settings(), info.enclave_id)
    if args.offset is not None:
        clock.set_offset(args.offset)
    _print_json({"EnclaveID": info.enclave_id, "NitroEmuClockOffset": clock.offset(),
                 "EnclaveTime": clock.now().isoformat(timespec="milliseconds")})
    return 0


def run_enclave_command(args: argparse.Namespace) -> int:
    from emulator.enclave.runtime import run_enclave

    options = _run_options(args)
    attach = options.pop("attach_console")

    def started(info: Any) -> None:
        # nitro-cli prints both once its checks passed (resource_manager.rs init_memory/start).
        print("Start allocating memory...", file=sys.stderr, flush=True)
        print(
            f"Started enclave with enclave-cid: {info.cid}, memory: {info.memory_mib} MiB, "
            f"cpu-ids: [{', '.join(map(str, info.cpu_ids))}]",
            file=sys.stderr, flush=True,
        )
        if info.extra.get("eif_layout") == "nitro-cli":
            print(NITRO_CLI_NOTE, file=sys.stderr, flush=True)

    info = run_enclave(
        options.pop("eif_path"), instance_id=args.instance_id, on_started=started,
        clock_offset=args.clock_offset, **options
    )
    _print_json(info.to_nitro_cli_json(kind="run"))
    if attach:
        return _console(info, None)
    return 0


def describe_enclaves_command(args: argparse.Namespace) -> int:
    from emulator.enclave.clock import EnclaveClock
    from emulator.enclave.faults import armed_nsm_faults
    from emulator.enclave.runtime import describe_enclaves, pop_exit_notices
    from emulator.settings import get_settings

    enclaves = describe_enclaves()
    for enclave_id, reason in pop_exit_notices():
        print(f"Enclave {enclave_id} has ended: {reason}", file=sys.stderr)
    settings = get_settings()
    described = []
    for info in enclaves:
        out = info.to_nitro_cli_json(kind="describe", metadata=args.metadata)
        offset = EnclaveClock(settings, info.enclave_id).offset()
        if offset:  # emulator-only keys, present only when in use
            out["NitroEmuClockOffset"] = offset
        if info.extra.get("transport", "host") != "host":
            print(f"Enclave {info.enclave_id} runs on the {info.extra['transport']} transport: "
                  f"{info.extra.get('transport_reason', '')}", file=sys.stderr)
        faults = armed_nsm_faults(settings, info.enclave_id)
        if faults:
            out["NitroEmuFaults"] = faults
            print(f"Enclave {info.enclave_id} has NSM faults armed: {'; '.join(faults)} "
                  f"(nitro-emu fault clear --enclave-id {info.enclave_id})", file=sys.stderr)
        described.append(out)
    _print_json(described)
    return 0


def terminate_enclave_command(args: argparse.Namespace) -> int:
    from emulator.enclave.runtime import describe_enclaves, terminate_enclave

    if args.all:
        targets = [info.enclave_id for info in describe_enclaves()]
        for enclave_id in targets:
            _report_terminated(terminate_enclave(enclave_id))
        return 0
    _report_terminated(terminate_enclave(args.enclave_id, name=args.enclave_name))
    return 0


def _report_terminated(info: Any) -> None:
    print(f"Successfully terminated enclave {info.enclave_id}.", file=sys.stderr, flush=True)
    _print_json(info.to_nitro_cli_json(kind="terminate"))


def console_command(args: argparse.Namespace) -> int:
    from emulator.enclave.resources import parse_int_argument
    from emulator.enclave.runtime import find_enclave, reap_now

    timeout = None
    if args.disconnect_timeout is not None:
        timeout = float(parse_int_argument("disconnect-timeout", args.disconnect_timeout))
    reap_now()
    info = find_enclave(enclave_id=args.enclave_id, name=args.enclave_name)
    return _console(info, timeout)


def _console(info: Any, timeout: float | None) -> int:
    from emulator.enclave.runtime import stream_console

    if not info.debug_mode:
        stream_console(info, lambda chunk: None)  # raises nitro-cli's E44
    print(f"Connecting to the console for enclave {info.cid}...", flush=True)
    print("Successfully connected to the console.", flush=True)
    out = sys.stdout.buffer

    def write(chunk: bytes) -> None:
        out.write(chunk)
        out.flush()

    reason = stream_console(info, write, disconnect_timeout=timeout)
    if reason is not None:
        print(f"Enclave {info.enclave_id} has ended: {reason}", file=sys.stderr, flush=True)
    return 0


def explain_command(args: argparse.Namespace) -> int:
    from emulator.nitro_cli_errors import explain

    print(explain(args.error_code))
    return 0
