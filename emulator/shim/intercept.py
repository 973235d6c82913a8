"""Build the syscall interceptor (``emulator/shim/nitro_emu_intercept.c``) and put it in front
of every enclave's entrypoint.

The LD_PRELOAD shim (:mod:`emulator.shim.build`) only sees programs that call libc. The
interceptor is a static launcher that installs a seccomp user-notification filter in its
child and serves the trapped calls from the parent, so static binaries, Go programs and raw
``syscall(2)`` get ``/dev/nsm`` and ``AF_VSOCK`` too (docs/shim.md "The syscall
interceptor"). Everything stays inside the enclave's container: no fd crosses to the host.

- It is compiled static (``musl-gcc -static`` when installed, else ``cc -static``) the first
  time it is needed and cached under ``$NITRO_EMU_HOME/cache/intercept/<source hash>/``
  (built in a private temp dir renamed into place, so concurrent builders are safe).
- :func:`container_extras` mounts that directory read-only at ``/run/nitro-emu/intercept``,
  binds a ``/dev/null`` node at ``/dev/nsm`` (so open, close, dup and fstat of the device are
  the kernel's, and only the NSM ioctl is trapped), and puts the launcher in front of the
  image's entrypoint. nitro-emu's init for nitro-cli EIFs has the interceptor compiled in
  (``emulator/enclave/nitro_cli_init.c``) and serves it itself when ``NITRO_EMU_INTERCEPT=1``,
  so it stays PID 1 and the command's parent, as on Nitro.
- ``NITRO_EMU_INTERCEPT=0`` in run-enclave's environment turns it off. On a kernel without
  the features (Linux 5.14), the launcher says so on the enclave's console and runs the
  command without the filter.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from emulator.errors import EmulatorError
from emulator.settings import Settings, get_settings

if TYPE_CHECKING:
    from emulator.enclave.container import ContainerContext, ContainerExtras

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).resolve().parent / "nitro_emu_intercept.c"
BINARY_NAME = "nitro-emu-intercept"
ENCLAVE_DIR = "/run/nitro-emu/intercept"
ENCLAVE_LAUNCHER = f"{ENCLAVE_DIR}/{BINARY_NAME}"
NSM_DEVICE = "/dev/nsm"
#: The engine host's /dev/null: a character device node that is not the container's own.
NSM_STANDIN = "/dev/null"
ENV_DISABLE = "NITRO_EMU_INTERCEPT"  # "0": no launcher, no /dev/nsm node
_FLAGS = ("-static", "-O2", "-Wall", "-pthread")


class InterceptBuildError(EmulatorError):
    """The interceptor could not be compiled (no C compiler that links static, or it failed)."""


@dataclass(frozen=True)
class KernelCheck:
    """What the launcher's ``--check`` found on this kernel."""

    available: bool
    detail: str


def _compilers() -> list[str]:
    found = [path for path in (shutil.which("musl-gcc"),) if path]
    for name in (os.environ.get("CC"), "cc", "gcc"):
        path = shutil.which(name) if name else None
        if path:
            found.append(path)
            break
    return found


def source_digest() -> str:
    digest = hashlib.sha256(SOURCE.read_bytes())
    digest.update(repr(_FLAGS).encode())
    return digest.hexdigest()[:16]


def ensure_interceptor(settings: Settings | None = None) -> Path:
    """The cached launcher (compiled on first use).

    Raises:
        InterceptBuildError: no compiler links a static binary here (the message has why).
    """
    settings = settings or get_settings()
    root = settings.cache_dir / "intercept"
    final = root / source_digest()
    if (final / BINARY_NAME).is_file():
        return final / BINARY_NAME
    compilers = _compilers()
    if not compilers:
        raise InterceptBuildError(
            "no C compiler found to build the syscall interceptor (tried musl-gcc, $CC, cc, gcc); "
            "install one (apt-get install musl-tools gcc), or set NITRO_EMU_INTERCEPT=0"
        )
    settings.ensure_home()
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".build-", dir=root))
    try:
        errors = []
        for compiler in compilers:
            command = [compiler, *_FLAGS, "-o", str(staging / BINARY_NAME), str(SOURCE)]
            try:
                result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=120)
            except (OSError, subprocess.TimeoutExpired) as error:
                errors.append(f"{compiler}: {error}")
                continue
            if result.returncode == 0:
                break
            errors.append(f"{' '.join(command)}: {result.stderr.strip()[-500:]}")
        else:
            raise InterceptBuildError("compiling the syscall interceptor failed: " + " | ".join(errors))
        staging.chmod(0o755)
        try:
            staging.rename(final)  # atomic; fails if another builder got there first
        except OSError:
            if not (final / BINARY_NAME).is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final / BINARY_NAME


def check_kernel(launcher: Path) -> KernelCheck:
    """Run ``launcher --check`` here: whether this kernel (and seccomp profile) has what it needs."""
    try:
        result = subprocess.run([str(launcher), "--check"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        return KernelCheck(False, str(error))
    return KernelCheck(result.returncode == 0, (result.stdout + result.stderr).strip())


def container_extras(context: ContainerContext) -> ContainerExtras:
    """The launcher mount, the ``/dev/nsm`` node, and the entrypoint prefix of an enclave.

    With ``NITRO_EMU_INTERCEPT=0``, or when the launcher cannot be built, the enclave runs
    without it (logged); the LD_PRELOAD shim still serves dynamically linked programs.
    """
    from emulator.enclave.container import ContainerExtras

    if os.environ.get(ENV_DISABLE) == "0":
        return ContainerExtras()
    try:
        launcher = ensure_interceptor(context.settings)
    except InterceptBuildError as error:
        logger.warning("enclave runs without the syscall interceptor: %s", error)
        return ContainerExtras()
    from emulator.eif.nitro_cli_layout import LAYOUT_NITRO_CLI
    from emulator.enclave.nitro_cli_init import EXTRA_LAYOUT

    if context.enclave.extra.get(EXTRA_LAYOUT) == LAYOUT_NITRO_CLI:
        # nitro-emu's init has the interceptor compiled in: it stays PID 1, the command's parent
        return ContainerExtras(mounts={NSM_STANDIN: (NSM_DEVICE, True)}, environment={ENV_DISABLE: "1"})
    (context.run_dir / "intercept").mkdir(parents=True, exist_ok=True)  # the mount point, ours
    return ContainerExtras(
        # read-only: a device node opens for writing on a read-only mount all the same
        mounts={str(launcher.parent): (ENCLAVE_DIR, True), NSM_STANDIN: (NSM_DEVICE, True)},
        entrypoint_prefix=(ENCLAVE_LAUNCHER, "--"),
    )
