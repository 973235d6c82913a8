"""CLI commands: ``nitro-emu nsm serve`` (see emulator.cli.app and docs/nsm.md).

Serves one fake NSM on a Unix socket so that enclave code can run as a plain process during
development: ``NITRO_EMU_NSM_SOCKET=PATH python app.py``. Documents are signed by the test CA
of the state directory (``$NITRO_EMU_HOME/ca``).
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType

from emulator.errors import EmulatorError

_PCR_ARG = re.compile(r"^(\d+)=([0-9a-fA-F]{96})$")
_SETTABLE_PCRS = (0, 1, 2, 3, 8)


class NsmServeError(EmulatorError):
    """``nsm serve`` was given an argument it cannot use."""


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add this group's commands to the top-level parser."""
    parser = subparsers.add_parser("nsm", help="the fake Nitro Secure Module")
    commands = parser.add_subparsers(dest="nsm_command", metavar="COMMAND")
    commands.required = True
    serve = commands.add_parser(
        "serve",
        help="serve one fake NSM on a Unix socket until interrupted",
        description=(
            "Serve one fake NSM on a Unix socket until SIGINT/SIGTERM. Point enclave code at it "
            "with NITRO_EMU_NSM_SOCKET=PATH."
        ),
    )
    serve.add_argument("--socket", required=True, type=Path, help="the Unix socket path to create")
    serve.add_argument(
        "--pcr",
        action="append",
        default=[],
        metavar="N=HEX",
        help="set PCR N (0, 1, 2, 3 or 8) to 48 bytes of hex; repeatable",
    )
    serve.add_argument("--debug-mode", action="store_true", help="zero PCR0/1/2/8 as a debug-mode enclave")
    serve.add_argument("--instance-id", help="parent instance id hashed into PCR4 (default: random i-<17 hex>)")
    serve.add_argument("--module-id", help="the enclave id (default: <instance id>-enc<16 hex>)")
    serve.add_argument(
        "--strict", action="store_true", help="limit Attestation user_data and nonce to 512 bytes"
    )
    serve.set_defaults(handler=_serve)


def _parse_pcrs(values: list[str]) -> dict[int, bytes]:
    pcrs: dict[int, bytes] = {}
    for value in values:
        match = _PCR_ARG.match(value)
        if match is None:
            raise NsmServeError(f"--pcr {value!r}: expected N=HEX with 96 hex digits (48 bytes)")
        index = int(match.group(1))
        if index not in _SETTABLE_PCRS:
            raise NsmServeError(
                f"--pcr {index}: only PCRs 0, 1, 2, 3 and 8 can be set (PCR4 comes from --instance-id)"
            )
        pcrs[index] = bytes.fromhex(match.group(2))
    return pcrs


def enclave_ids(instance_id: str | None, module_id: str | None) -> tuple[str, str]:
    """(instance id, module id) shaped like AWS's: ``i-<17 hex>`` and ``<instance>-enc<16 hex>``.

    The 16 hex digits are the start time in ms (48 bits) and 16 random bits (nitro-facts §2.2).
    """
    if instance_id is None:
        instance_id = module_id.split("-enc")[0] if module_id else "i-" + secrets.token_hex(9)[:17]
    if not instance_id.isascii() or not instance_id:
        raise NsmServeError(f"--instance-id must be ASCII, like i-0123456789abcdef0: {instance_id!r}")
    if module_id is None:
        module_id = f"{instance_id}-enc{int(time.time() * 1000) & (2**48 - 1):012x}{secrets.randbits(16):04x}"
    return instance_id, module_id


def _serve(args: argparse.Namespace) -> int:
    pcrs = _parse_pcrs(args.pcr)
    instance_id, module_id = enclave_ids(args.instance_id, args.module_id)

    from emulator.enclave.resources import open_home_ca
    from emulator.settings import get_settings
    from fake_nsm.device import NsmDevice
    from fake_nsm.document_signer import DocumentSigner
    from fake_nsm.server import NsmServer

    settings = get_settings()
    settings.ensure_home()
    signer = DocumentSigner(open_home_ca(settings), module_id)
    device = NsmDevice(
        module_id=module_id,
        signer=signer,
        measurements={i: v for i, v in pcrs.items() if i != 3},
        debug_mode=args.debug_mode,
        instance_id=instance_id,
        pcr3=pcrs.get(3),
        strict=args.strict,
    )
    socket_path: Path = args.socket.expanduser().absolute()
    socket_path.parent.mkdir(parents=True, exist_ok=True)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with NsmServer(socket_path, device):
            print(
                f"NSM {module_id} serving on {socket_path} (pid {os.getpid()}); "
                f"use NITRO_EMU_NSM_SOCKET={socket_path}; Ctrl-C to stop",
                file=sys.stderr,
                flush=True,
            )
            while not stop.wait(0.5):
                pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print(f"NSM {module_id} stopped", file=sys.stderr, flush=True)
    return 0
