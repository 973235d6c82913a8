"""CLI command ``exec``: run an unmodified parent program with the LD_PRELOAD shim.

    nitro-emu exec -- python3 my_parent.py     # its AF_VSOCK sockets reach the enclaves
    eval "$(nitro-emu exec --print-env)"       # the same, for the rest of this shell
    nitro-emu exec --intercept -- ./go-parent  # a static or Go parent: the syscall interceptor

The program runs as the parent instance (CID 3) of the enclaves in ``$NITRO_EMU_HOME``
(docs/shim.md).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys

from emulator.errors import EmulatorError
from emulator.shim.build import ensure_shim, parent_environment


class CommandNotFoundError(EmulatorError):
    """``nitro-emu exec`` was given a program that cannot be run."""


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add this group's commands to the top-level parser."""
    parser = subparsers.add_parser(
        "exec",
        help="run a host command as the parent (CID 3) with the AF_VSOCK / /dev/nsm shim",
        description=(
            "Run COMMAND with the nitro-emu LD_PRELOAD shim, so that its AF_VSOCK sockets talk "
            "to the emulated enclaves as the parent instance (CID 3). With --print-env, print "
            "the environment line instead (for eval in a shell)."
        ),
    )
    parser.add_argument(
        "--print-env",
        action="store_true",
        help="print `export LD_PRELOAD=... NITRO_EMU_HOME=...` and exit",
    )
    parser.add_argument(
        "--intercept",
        action="store_true",
        help="also run COMMAND under the syscall interceptor (static binaries, Go, raw syscalls)",
    )
    parser.add_argument("command", nargs=argparse.REMAINDER, metavar="-- COMMAND ...")
    parser.set_defaults(handler=_exec)


def environment_line(env: dict[str, str]) -> str:
    """The shell line that gives a shell the shim's parent environment."""
    exports = " ".join(
        f"{name}={shlex.quote(env[name])}" for name in ("LD_PRELOAD", "NITRO_EMU_HOME")
    )
    return f"unset NITRO_EMU_CID NITRO_EMU_VSOCK_ROOT; export {exports}"


def _exec(args: argparse.Namespace) -> int:
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    env = parent_environment(ensure_shim())
    if args.print_env:
        print(environment_line(env))
        return 0
    if not command:
        print("nitro-emu exec: error: give a command after --, e.g. "
              "`nitro-emu exec -- python3 parent.py`", file=sys.stderr)
        return 2
    if args.intercept:
        from emulator.shim.intercept import ensure_interceptor

        command = [str(ensure_interceptor()), "--", *command]
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvpe(command[0], command, env)
    except OSError as error:
        raise CommandNotFoundError(
            f"cannot run {command[0]!r}: {error.strerror}; check the name and your PATH"
        ) from error
    return 127  # not reached: execvpe replaces this process
