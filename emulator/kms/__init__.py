"""A local AWS KMS that checks Nitro attestation documents (issue 11; nitro-facts §5).

    from emulator.kms import KmsServer

    with KmsServer(trusted_roots=[ca.root_der], state_dir=home / "kms") as server:
        kms = boto3.client("kms", endpoint_url=server.endpoint_url, ...)

Rooms, as one moto service: ``shapes`` (request shapes and AWS's validation messages),
``models`` + ``backend`` (state and rules, no HTTP), ``policy`` (key policies), ``recipient``
(attestation), ``ciphertext`` (blobs), ``store`` (SQLite), ``responses`` (JSON 1.1),
``server`` (HTTP). Errors: :mod:`emulator.kms.errors` (one class per AWS error code).

Names are imported lazily (PEP 562), so ``import emulator.kms`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from emulator.kms.backend import KmsBackend
    from emulator.kms.errors import KmsError
    from emulator.kms.models import DEFAULT_ACCOUNT, DEFAULT_REGION, Caller
    from emulator.kms.policy import default_policy
    from emulator.kms.responses import KmsResponder
    from emulator.kms.server import KmsServer, KmsServerError, serve
    from emulator.kms.store import MemoryStore, SqliteStore

__all__ = [
    "Caller",
    "DEFAULT_ACCOUNT",
    "DEFAULT_REGION",
    "KmsBackend",
    "KmsError",
    "KmsResponder",
    "KmsServer",
    "KmsServerError",
    "MemoryStore",
    "SqliteStore",
    "default_policy",
    "serve",
]

_MODULES = {
    "DEFAULT_ACCOUNT": "emulator.kms.models",
    "DEFAULT_REGION": "emulator.kms.models",
    "Caller": "emulator.kms.models",
    "KmsBackend": "emulator.kms.backend",
    "KmsError": "emulator.kms.errors",
    "KmsResponder": "emulator.kms.responses",
    "KmsServer": "emulator.kms.server",
    "KmsServerError": "emulator.kms.server",
    "MemoryStore": "emulator.kms.store",
    "SqliteStore": "emulator.kms.store",
    "default_policy": "emulator.kms.policy",
    "serve": "emulator.kms.server",
}


def __getattr__(name: str) -> Any:
    module = _MODULES.get(name)
    if module is None:
        raise AttributeError(f"module 'emulator.kms' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
