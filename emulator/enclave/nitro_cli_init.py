"""nitro-emu's init for nitro-cli EIFs: built once, mounted into their enclaves.

``nitro_cli_init.c`` is PID 1 of an enclave whose EIF nitro-cli built (its image's
ENTRYPOINT, set by :mod:`emulator.eif.nitro_cli_layout`): it gives the command exactly the
argv, environment and working directory the SDK bootstrap's ``init`` gives it. It is
compiled static (``musl-gcc`` when installed, else ``cc -static``) so that it runs in any root
filesystem, and cached under ``$NITRO_EMU_HOME/cache/init/<source hash>/``; a build happens
in a private temp dir renamed into place, so concurrent builders never see half a binary.
:func:`init_extras` mounts that directory read-only at ``/run/nitro-emu/init``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from emulator.eif.nitro_cli_layout import ENCLAVE_INIT, LAYOUT_NITRO_CLI
from emulator.enclave.container import ContainerContext, ContainerExtras
from emulator.errors import NitroCliError
from emulator.settings import Settings

SOURCE = Path(__file__).resolve().parent / "nitro_cli_init.c"
#: The syscall interceptor, compiled into init (docs/shim.md): init serves it itself, so it
#: stays PID 1 and the command's parent. Named by path, not imported: emulator.shim.intercept
#: looks at this module's EXTRA_LAYOUT.
INTERCEPT_SOURCE = Path(__file__).resolve().parents[1] / "shim" / "nitro_emu_intercept.c"
_INTERCEPT_FLAGS = ("-pthread", "-DNITRO_EMU_WITH_INTERCEPT", f"-I{INTERCEPT_SOURCE.parent}")
BINARY_NAME = Path(ENCLAVE_INIT).name
ENCLAVE_INIT_DIR = str(Path(ENCLAVE_INIT).parent)
#: EnclaveInfo.extra key that says which layout the enclave's EIF has.
EXTRA_LAYOUT = "eif_layout"


class InitBuildError(NitroCliError):
    """nitro-emu's init could not be compiled, so a nitro-cli EIF cannot run (E36)."""

    def __init__(self, problem: str) -> None:
        super().__init__(36, f"Enclave boot failure: {problem}")
        self.problem = problem


def _compilers() -> list[list[str]]:
    found = []
    musl = shutil.which("musl-gcc")
    if musl:
        found.append([musl, "-static"])
    for name in (os.environ.get("CC"), "cc", "gcc"):
        if name and shutil.which(name):
            found.append([name, "-static"])
            break
    return found


def ensure_init(settings: Settings) -> Path:
    """The directory holding the compiled init (built on first use). Raises InitBuildError."""
    hasher = hashlib.sha256(SOURCE.read_bytes())
    hasher.update(INTERCEPT_SOURCE.read_bytes())
    hasher.update(repr(_INTERCEPT_FLAGS[:2]).encode())
    digest = hasher.hexdigest()[:16]
    target = settings.cache_dir / "init" / digest
    if (target / BINARY_NAME).is_file():
        return target
    compilers = _compilers()
    if not compilers:
        raise InitBuildError(
            "running a nitro-cli EIF needs a C compiler to build nitro-emu's init (tried musl-gcc, $CC, "
            "cc, gcc); install one (apt-get install gcc)"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".build-", dir=target.parent))
    try:
        errors = []
        for compiler in compilers:
            command = [*compiler, "-O2", "-Wall", *_INTERCEPT_FLAGS, "-o", str(staging / BINARY_NAME), str(SOURCE)]
            result = subprocess.run(command, capture_output=True, text=True, check=False)
            if result.returncode == 0:
                break
            errors.append(f"{' '.join(command)}: {result.stderr.strip()[-500:]}")
        else:
            raise InitBuildError("compiling nitro-emu's init failed: " + " | ".join(errors))
        os.chmod(staging, 0o755)
        try:
            staging.rename(target)
        except OSError:
            if not (target / BINARY_NAME).is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def init_extras(context: ContainerContext) -> ContainerExtras:
    """The read-only ``/run/nitro-emu/init`` mount for an enclave of a nitro-cli EIF."""
    if context.enclave.extra.get(EXTRA_LAYOUT) != LAYOUT_NITRO_CLI:
        return ContainerExtras()
    directory = ensure_init(context.settings)
    (context.run_dir / "init").mkdir(parents=True, exist_ok=True)  # the mount point, ours
    return ContainerExtras(mounts={str(directory): (ENCLAVE_INIT_DIR, True)})
