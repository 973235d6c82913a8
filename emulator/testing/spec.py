"""What a test asks for (:class:`EnclaveSpec`, checked) and the errors of ``emulator.testing.handles``.

EnclaveTestError
 +-- EnclaveSpecError     a bad marker/argument value (names the field and what is allowed)
 +-- EnclaveBuildError    the Dockerfile or the EIF build failed (shows the build's last lines)
 +-- EnclaveDiedError     the enclave stopped while in use (shows its last output)
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from emulator.enclave.clock import MAX_OFFSET_S
from emulator.errors import EmulatorError
from emulator.settings import ENV_HOME

LOG_TAIL_LINES = 25
_INSTANCE_ID = re.compile(r"^i-[0-9a-f]{17}$")


class EnclaveTestError(EmulatorError):
    """Base of the errors of :mod:`emulator.testing.handles` and the pytest plugin."""


class EnclaveSpecError(EnclaveTestError, ValueError):
    """An enclave was asked for with a bad value; the message names the field."""


class EnclaveBuildError(EnclaveTestError):
    """The enclave image could not be built (Docker build or EIF build)."""


class EnclaveDiedError(EnclaveTestError):
    """The enclave stopped while a test used it.

    Attributes:
        enclave_id: the enclave that stopped.
        last_output: the tail of what it printed (and why it ended, when known).
    """

    def __init__(self, enclave_id: str, name: str, last_output: str, context: str = "") -> None:
        self.enclave_id = enclave_id
        self.last_output = last_output
        where = f" {context}" if context else ""
        super().__init__(
            f"enclave {name} ({enclave_id}) is no longer running{where}; "
            f"its last output:\n{indent(last_output)}"
        )


def indent(text: str) -> str:
    """Indent a block of enclave output for an error message."""
    lines = text.rstrip("\n").splitlines() or ["(no output)"]
    return "\n".join(f"    | {line}" for line in lines)


def tail(text: str, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of ``text``."""
    return "\n".join(text.rstrip("\n").splitlines()[-lines:])


_HOME_LOCK = threading.Lock()
_HOMES: list[tuple[object, str]] = []  # the blocks inside home_env now, innermost last
_OUTSIDE: list[str | None] = []  # NITRO_EMU_HOME as it was before the first of them


@contextlib.contextmanager
def home_env(home: Path) -> Iterator[None]:
    """Point ``NITRO_EMU_HOME`` at ``home`` for the block (the runtime reads it per call).

    Safe for blocks that overlap in several threads (one factory's parallel starts): a block
    that ends puts back the home of the latest block still open, and the value from before
    only when none is left. (Before, the first start to finish unset the variable under the
    others, whose next runtime call then used the default state dir.) Blocks with different
    homes at the same time still share one process environment: the latest one wins.
    """
    token = object()
    with _HOME_LOCK:
        if not _HOMES:
            _OUTSIDE[:] = [os.environ.get(ENV_HOME)]
        _HOMES.append((token, str(home)))
        os.environ[ENV_HOME] = str(home)
    try:
        yield
    finally:
        with _HOME_LOCK:
            _HOMES[:] = [entry for entry in _HOMES if entry[0] is not token]
            restored = _HOMES[-1][1] if _HOMES else _OUTSIDE[0]
            if restored is None:
                os.environ.pop(ENV_HOME, None)
            else:
                os.environ[ENV_HOME] = restored


@dataclass(frozen=True)
class EnclaveSpec:
    """What enclave to run: the marker's (or :func:`enclave`'s) keyword arguments, checked.

    Attributes:
        image: a local Docker image to build the EIF from.
        dockerfile_dir: a directory with a Dockerfile to build the image from.
        memory_mib: the enclave's memory (run-enclave ``--memory``); None picks nitro-cli's
            minimum for the EIF (4x its size, at least 256 MiB).
        cpu_count: its vCPUs (run-enclave ``--cpu-count``).
        debug_mode: run with ``--debug-mode`` (attestation PCRs read as zero).
        instance_id: the emulated parent instance id (``i-`` + 17 hex digits; PCR4).
        build_args: Docker build arguments for ``dockerfile_dir``.
        clock_offset: seconds the enclave's clock is ahead of the host's (negative: behind;
            run-enclave ``--clock-offset``, docs/testing-unhappy-paths.md).
    """

    image: str | None = None
    dockerfile_dir: Path | None = None
    memory_mib: int | None = None
    cpu_count: int = 1
    debug_mode: bool = False
    instance_id: str | None = None
    build_args: Mapping[str, str] | None = None
    clock_offset: float = 0.0

    @classmethod
    def from_arguments(cls, args: tuple[Any, ...], kwargs: Mapping[str, Any], *, where: str) -> EnclaveSpec:
        """Check marker arguments; raise EnclaveSpecError naming the first bad one."""
        allowed = [field.name for field in fields(cls)]
        if args:
            raise EnclaveSpecError(
                f"{where}: takes keyword arguments only ({', '.join(allowed)}), got positional {args!r}"
            )
        unknown = sorted(set(kwargs) - set(allowed))
        if unknown:
            raise EnclaveSpecError(f"{where}: unknown argument(s) {unknown}; allowed: {', '.join(allowed)}")
        return cls(**kwargs).checked(where)

    def checked(self, where: str = "nitro_enclave") -> EnclaveSpec:
        """Return self when every value is valid; raise EnclaveSpecError otherwise."""
        if (self.image is None) == (self.dockerfile_dir is None):
            raise EnclaveSpecError(f"{where}: give exactly one of image=... or dockerfile_dir=...")
        if self.image is not None and (not isinstance(self.image, str) or not self.image):
            raise EnclaveSpecError(f"{where}: image={self.image!r} must be a non-empty image name")
        if self.dockerfile_dir is not None:
            directory = Path(self.dockerfile_dir)
            if not (directory / "Dockerfile").is_file():
                raise EnclaveSpecError(
                    f"{where}: dockerfile_dir={str(self.dockerfile_dir)!r} has no Dockerfile "
                    f"(looked for {directory.absolute() / 'Dockerfile'})"
                )
            object.__setattr__(self, "dockerfile_dir", directory.absolute())
        for name, minimum in (("memory_mib", 64), ("cpu_count", 1)):
            value = getattr(self, name)
            if value is None and name == "memory_mib":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise EnclaveSpecError(f"{where}: {name}={value!r} must be an integer >= {minimum}")
        if not isinstance(self.debug_mode, bool):
            raise EnclaveSpecError(f"{where}: debug_mode={self.debug_mode!r} must be True or False")
        if self.instance_id is not None and (
            not isinstance(self.instance_id, str) or not _INSTANCE_ID.match(self.instance_id)
        ):
            raise EnclaveSpecError(
                f"{where}: instance_id={self.instance_id!r} must be 'i-' followed by 17 lower-case hex digits"
            )
        if self.build_args is not None and not all(
            isinstance(k, str) and isinstance(v, str) for k, v in dict(self.build_args).items()
        ):
            raise EnclaveSpecError(f"{where}: build_args must map text to text")
        offset = self.clock_offset
        if isinstance(offset, bool) or not isinstance(offset, (int, float)) or not abs(offset) <= MAX_OFFSET_S:
            raise EnclaveSpecError(
                f"{where}: clock_offset={offset!r} must be a number of seconds within +-{MAX_OFFSET_S:.0f} (100 years)"
            )
        return self


def minimum_memory_mib(eif_path: Path) -> int:
    """nitro-cli's minimum ``--memory`` for an EIF: 4x its size in MiB, at least 256."""
    size_mib = -(-eif_path.stat().st_size // (1024 * 1024))
    return max(256, 4 * size_mib)
