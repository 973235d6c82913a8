"""nitro-emu: run AWS Nitro Enclaves locally on Docker.

    >>> from emulator import build_eif, running_enclave, vsock
    >>> build_eif(docker_client(), "my-app:latest", Path("app.eif"))
    >>> with running_enclave("app.eif", memory_mib=512, cpu_count=2) as enclave:
    ...     sock = vsock.connect(enclave.cid, 5000)

Names are imported lazily (PEP 562), so ``import emulator.vsock.enclave`` inside an enclave
image that has only Python never pulls in the Docker SDK.

Errors: every error derives from :class:`EmulatorError`; those nitro-cli reports with a
code derive from :class:`NitroCliError` (``.code`` is nitro-cli's Exx number and exit status).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    "EmulatorError": "emulator.errors",
    "EnclaveInfo": "emulator.enclave.runtime",
    "NitroCliError": "emulator.errors",
    "Settings": "emulator.settings",
    "build_eif": "emulator.eif.build",
    "describe_enclaves": "emulator.enclave.runtime",
    "docker_client": "emulator.engine.client",
    "enclave_logs": "emulator.enclave.runtime",
    "ensure_base_image": "emulator.engine.base_image",
    "get_settings": "emulator.settings",
    "read_eif": "emulator.eif.file",
    "run_enclave": "emulator.enclave.runtime",
    "running_enclave": "emulator.enclave.runtime",
    "terminate_enclave": "emulator.enclave.runtime",
}
_SUBMODULES = frozenset({"vsock", "vsock_enclave", "testing"})

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"emulator.{name}")
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'emulator' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
