"""Build the LD_PRELOAD shim (``emulator/shim/nitro_emu_shim.c``) and hand it to enclaves.

The library is compiled from source with the system C compiler the first time it is needed
and cached under ``$NITRO_EMU_HOME/cache/shim/<source hash>-<variants>/`` (docs/shim.md):

- ``libnitro-emu-shim.so``: built with ``cc`` (or ``$CC``) with ``-nostdlib``: no libc
  dependency and no symbol versions, only ``DT_NEEDED libdl.so.2`` (where ``dlsym`` lives
  before glibc 2.34; an empty stub after; musl's loader takes it for itself). So the one
  file loads in any glibc image, old (Amazon Linux 2, glibc 2.26) or new, and in musl images;
  a library linked normally against the host glibc would need the host's glibc symbol
  versions (``dlsym@GLIBC_2.34``) and stop older images from starting at all.
- ``libnitro-emu-shim-musl.so``: built with Debian's ``musl-gcc`` (musl's headers) when it
  is installed, also without any ``DT_NEEDED`` (Alpine-style images).

A build happens in a private temp dir and is renamed into place, so concurrent builders never
see half a library; the loser of a race just uses the winner's directory.

Every enclave gets the cache directory mounted read-only at ``/run/nitro-emu/lib`` and
``LD_PRELOAD`` pointing at the library (:func:`container_extras`, called by
``emulator.enclave.container``).
"""

from __future__ import annotations

import fcntl
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

SOURCE = Path(__file__).resolve().parent / "nitro_emu_shim.c"
LIBRARY_NAME = "libnitro-emu-shim.so"
MUSL_LIBRARY_NAME = "libnitro-emu-shim-musl.so"
ENCLAVE_LIB_DIR = "/run/nitro-emu/lib"
ENCLAVE_PRELOAD = f"{ENCLAVE_LIB_DIR}/{LIBRARY_NAME}"
ENV_DISABLE = "NITRO_EMU_SHIM"  # "0" turns the enclave mount and LD_PRELOAD off

#: -nostdlib: no libc dependency nor symbol versions; every reference binds to whatever libc
#: the program already runs on. No stack protector, no fortify: no libc-specific helpers.
_COMMON_FLAGS = (
    "-shared", "-fPIC", "-O2", "-Wall", "-U_FORTIFY_SOURCE", "-fvisibility=hidden",
    "-nostdlib", "-fno-stack-protector",
)
#: glibc < 2.34 keeps dlsym in libdl.so.2: depend on it by name (a stub in newer glibc).
_LIBC_FLAGS = ("-Wl,--no-as-needed", "-l:libdl.so.2")
#: For a host compiler without libdl.so.2 (a musl host): dlsym is in libc there.
_LIBC_FALLBACK_FLAGS: tuple[str, ...] = ()
_MUSL_FLAGS: tuple[str, ...] = ()


class ShimBuildError(EmulatorError):
    """The shim could not be compiled (no C compiler, or the compiler failed)."""


@dataclass(frozen=True)
class ShimBuild:
    """One cached build: its directory and the libraries in it."""

    directory: Path
    library: Path
    musl_library: Path | None

    @property
    def digest(self) -> str:
        return self.directory.name


def find_compiler() -> str | None:
    """The host C compiler: ``$CC``, else ``cc``, else ``gcc``."""
    for name in (os.environ.get("CC"), "cc", "gcc"):
        if name:
            found = shutil.which(name)
            if found:
                return found
    return None


def find_musl_compiler() -> str | None:
    """Debian's ``musl-gcc`` wrapper (package musl-tools), if installed."""
    return shutil.which("musl-gcc")


def source_digest(*, musl: bool) -> str:
    """The cache key: a hash of the source, the flags, and which variants the build holds."""
    digest = hashlib.sha256()
    digest.update(SOURCE.read_bytes())
    digest.update(repr((_COMMON_FLAGS, _LIBC_FLAGS, _LIBC_FALLBACK_FLAGS, _MUSL_FLAGS)).encode())
    return digest.hexdigest()[:16] + ("-glibc-musl" if musl else "-glibc")


def _compile(compiler: str, flags: tuple[str, ...], output: Path) -> None:
    command = [compiler, *_COMMON_FLAGS, "-o", str(output), str(SOURCE), *flags]
    try:
        result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise ShimBuildError(f"could not run the C compiler {compiler}: {error}") from error
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-20:])
        raise ShimBuildError(
            f"compiling the LD_PRELOAD shim with {compiler} failed (exit {result.returncode}):\n"
            f"{tail}"
        )
    output.chmod(0o755)


def ensure_shim(settings: Settings | None = None, *, musl: bool | None = None) -> ShimBuild:
    """Return the cached build of the shim, compiling it first if needed.

    Args:
        settings: whose cache to use (default: :func:`get_settings`).
        musl: build the musl variant too; default: when ``musl-gcc`` is installed.

    Raises:
        ShimBuildError: no C compiler, or it failed (the message carries its output).
    """
    settings = settings or get_settings()
    musl_compiler = find_musl_compiler()
    if musl is None:
        musl = musl_compiler is not None
    elif musl and musl_compiler is None:
        raise ShimBuildError(
            "the musl variant of the shim needs musl-gcc; install it (apt-get install musl-tools)"
        )
    root = settings.cache_dir / "shim"
    final = root / source_digest(musl=musl)
    build = ShimBuild(
        directory=final,
        library=final / LIBRARY_NAME,
        musl_library=final / MUSL_LIBRARY_NAME if musl else None,
    )
    if final.is_dir():
        return build
    compiler = find_compiler()
    if compiler is None:
        raise ShimBuildError(
            "no C compiler found to build the LD_PRELOAD shim (tried $CC, cc, gcc); install one "
            "(apt-get install gcc), or set NITRO_EMU_SHIM=0 and use fake_nsm.client and "
            "emulator.vsock.enclave in enclave code instead"
        )
    settings.ensure_home()
    root.mkdir(parents=True, exist_ok=True)
    with open(root.with_name("shim.lock"), "w") as lock:  # state dirs sharing a cache build it once
        fcntl.flock(lock, fcntl.LOCK_EX)
        if final.is_dir():
            return build
        _build(compiler, musl_compiler if musl else None, root, final)
    return build


def _build(compiler: str, musl_compiler: str | None, root: Path, final: Path) -> None:
    staging = Path(tempfile.mkdtemp(prefix=".build-", dir=root))
    try:
        try:
            _compile(compiler, _LIBC_FLAGS, staging / LIBRARY_NAME)
        except ShimBuildError as error:
            if "libdl.so.2" not in str(error):
                raise
            _compile(compiler, _LIBC_FALLBACK_FLAGS, staging / LIBRARY_NAME)
        if musl_compiler is not None:
            _compile(musl_compiler, _MUSL_FLAGS, staging / MUSL_LIBRARY_NAME)
        staging.chmod(0o755)
        try:
            staging.rename(final)  # atomic; fails if another builder got there first
        except OSError:
            if not final.is_dir():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def parent_environment(
    build: ShimBuild, environ: dict[str, str] | None = None, *, settings: Settings | None = None
) -> dict[str, str]:
    """The environment that runs a host program as the parent (CID 3) with the shim.

    ``LD_PRELOAD`` gets the library first; ``NITRO_EMU_HOME`` is made absolute; the
    enclave-only variables are removed, so the shim takes the parent's role.
    """
    settings = settings or get_settings()
    env = dict(os.environ if environ is None else environ)
    preload = [str(build.library)]
    preload += [item for item in env.get("LD_PRELOAD", "").replace(":", " ").split() if item]
    env["LD_PRELOAD"] = " ".join(dict.fromkeys(preload))
    env["NITRO_EMU_HOME"] = str(settings.home)
    for name in ("NITRO_EMU_CID", "NITRO_EMU_VSOCK_ROOT"):
        env.pop(name, None)
    return env


def container_extras(context: ContainerContext) -> ContainerExtras:
    """The enclave's read-only ``/run/nitro-emu/lib`` mount and its ``LD_PRELOAD``.

    The runtime passes it to ``emulator.enclave.container.collect_extras``. With ``NITRO_EMU_SHIM=0``, or
    when no compiler can build the library, the enclave runs without it (logged): code that
    uses ``fake_nsm.client`` and ``emulator.vsock.enclave`` does not need it.
    """
    from emulator.enclave.container import ContainerExtras

    if os.environ.get(ENV_DISABLE) == "0":
        return ContainerExtras()
    try:
        build = ensure_shim(context.settings)
    except ShimBuildError as error:
        logger.warning("enclave runs without the LD_PRELOAD shim: %s", error)
        return ContainerExtras()
    # the mount point inside run/<cid>, made by us so that it is ours, not root's
    (context.run_dir / "lib").mkdir(parents=True, exist_ok=True)
    return ContainerExtras(
        mounts={str(build.directory): (ENCLAVE_LIB_DIR, True)},
        environment={"LD_PRELOAD": ENCLAVE_PRELOAD},
    )
