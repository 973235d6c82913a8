"""What tests drive: enclaves in a test (handles, factory), their images, the pytest plugin.

| module | holds |
|---|---|
| ``handles`` | :class:`EnclaveFactory`, :class:`EnclaveHandle`, :func:`enclave` |
| ``spec`` | :class:`EnclaveSpec` (what a test asks for) and the errors |
| ``images`` | EIFs for tests, built once and cached by content |
| ``pytest_plugin`` | the ``nitro_emu`` pytest plugin (fixtures, marker, options) |

    from emulator.testing import enclave
    with enclave(dockerfile_dir="enclave") as handle:
        ...

Names are imported lazily (PEP 562): the pytest plugin is loaded by every pytest run of an
environment that has nitro-emu, and must not import the Docker SDK before a test asks.
"""

from __future__ import annotations

import importlib
from typing import Any

_API = (
    "EnclaveBuildError",
    "EnclaveDiedError",
    "EnclaveFactory",
    "EnclaveHandle",
    "EnclaveSpec",
    "EnclaveSpecError",
    "EnclaveTestError",
    "enclave",
    "minimum_memory_mib",
    "tail",
)

__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'emulator.testing' has no attribute {name!r}")
    value = getattr(importlib.import_module("emulator.testing.handles"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
