"""The ``nitro-emu`` command line: nitro-cli's commands plus the emulator's own.

Each command group lives in ``emulator.cli.<name>`` and exposes
``register(subparsers)``, which adds its parsers with ``set_defaults(handler=...)``.
A handler takes the parsed arguments and returns the exit status.

Errors: a :class:`~emulator.errors.NitroCliError` prints nitro-cli's ``[ Exx ]`` line and
exits with the code; any other library error prints one line and exits 1. No tracebacks
reach the user unless ``NITRO_EMU_DEBUG=1``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from emulator.errors import NitroCliError

COMMAND_MODULES: tuple[str, ...] = (
    "ca",  # ca init | show | export-root
    "attest",  # attest
    "verify",  # verify
    "nsm",  # nsm serve
    "eif",  # build-enclave, describe-eif, pcr, prune-images
    "enclaves",  # run-enclave, describe-enclaves, terminate-enclave, console, explain
    "vsock",  # vsock-forward, vsock-proxy, vsock connect/listen helpers
    "kms",  # kms serve
    "faults",  # fault nsm | kms | show | clear
    "shim",  # exec (LD_PRELOAD for unmodified parent programs)
    "images",  # base-image
)

NITRO_CLI_ERRORS_URL = "https://docs.aws.amazon.com/enclaves/latest/user/cli-errors.html"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nitro-emu",
        description="A local emulator of AWS Nitro Enclaves.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name in COMMAND_MODULES:
        module = importlib.import_module(f"emulator.cli.{name}")
        module.register(subparsers)
    return parser


def _library_errors() -> tuple[type[BaseException], ...]:
    """The base error of each package, imported lazily so the CLI starts fast."""
    from ca.errors import CAError
    from emulator.errors import EmulatorError
    from fake_nsm.errors import NsmError, VerificationError

    return (EmulatorError, CAError, NsmError, VerificationError)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = os.environ.get("NITRO_EMU_DEBUG") == "1"
    try:
        status = args.handler(args)
    except NitroCliError as error:
        print(str(error), file=sys.stderr)
        print(
            f"For more details, please visit {NITRO_CLI_ERRORS_URL}#E{error.code:02d}",
            file=sys.stderr,
        )
        if debug:
            raise
        return error.code
    except KeyboardInterrupt:
        return 130
    except Exception as error:  # noqa: BLE001 - the CLI's one-line error contract
        if debug or not isinstance(error, _library_errors()):
            raise
        print(f"nitro-emu: error: {error}", file=sys.stderr)
        return 1
    return int(status or 0)


if __name__ == "__main__":
    sys.exit(main())
