"""CLI commands: ``nitro-emu kms serve`` (see docs/kms.md).

A local AWS KMS on HTTP that unmodified boto3 / AWS CLI / SDKs reach with ``endpoint_url``
and dummy credentials. It trusts the state directory's test CA (and nothing else) for the
attestation documents of ``Recipient`` requests, and keeps keys in ``$NITRO_EMU_HOME/kms``
unless ``--memory``.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from emulator.enclave.resources import open_home_ca
from emulator.errors import EmulatorError
from emulator.settings import get_settings


class KmsServeError(EmulatorError):
    """``kms serve`` was given an argument it cannot use."""


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``kms serve`` to the top-level parser."""
    parser = subparsers.add_parser("kms", help="a local AWS KMS that checks attestation documents")
    commands = parser.add_subparsers(dest="kms_command", metavar="COMMAND")
    commands.required = True
    serve = commands.add_parser(
        "serve",
        help="serve the local KMS on HTTP until interrupted",
        description=(
            "Serve AWS KMS's JSON 1.1 protocol on http://HOST:PORT until SIGINT/SIGTERM. "
            "Recipient documents must chain to this state directory's test CA."
        ),
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="TCP port (default 8000; 0 picks a free one)")
    serve.add_argument("--region", default="us-east-1", help="the region in key ARNs (default us-east-1)")
    serve.add_argument("--account", default="111122223333", help="the account id in ARNs (default 111122223333)")
    serve.add_argument("--memory", action="store_true", help="keep nothing: no state directory")
    serve.add_argument(
        "--root", action="append", default=[], type=Path, metavar="FILE",
        help="trust this root certificate (PEM or DER) for Recipient documents instead of the "
        "state directory's test CA; repeatable",
    )
    serve.set_defaults(handler=_serve)


def _serve(args: argparse.Namespace) -> int:
    from emulator.kms.faults import kms_faults_path
    from emulator.kms.server import KmsServer
    from fake_nsm.faults import FaultPlan

    settings = get_settings()
    if args.root:
        from fake_nsm.trusted_roots import resolve_trusted_roots

        from fake_nsm.errors import VerificationInputError

        roots: list[bytes] = []
        for path in args.root:  # a file that is no certificate fails here, not per request
            try:
                roots.append(path.read_bytes())
                resolve_trusted_roots(roots[-1])
            except OSError as error:
                raise KmsServeError(f"cannot read the --root certificate: {error}") from error
            except VerificationInputError as error:
                raise KmsServeError(f"--root {path}: {str(error).replace('trusted root #0 ', '')}") from error
        trust = ", ".join(str(path) for path in args.root)
    else:
        ca = open_home_ca(settings)
        roots, trust = [ca.root_der], f"test CA {ca.root_sha256}"
    state_dir = None if args.memory else settings.ensure_home() / "kms"
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    server = KmsServer(args.host, args.port, state_dir=state_dir, trusted_roots=roots,
                       region=args.region, account=args.account,
                       faults=FaultPlan(kms_faults_path(settings)))
    stopped = threading.Event()

    def stop(signum: int, frame: FrameType | None) -> None:
        stopped.set()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with server:
            print(f"nitro-emu KMS at {server.endpoint_url} (region {args.region}, account "
                  f"{args.account}, state {state_dir or 'memory'}; Recipient root: {trust})",
                  flush=True)
            stopped.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
