"""VSOCK: (CID, port) streams between the parent and enclaves.

| module | holds | runs where |
|---|---|---|
| ``host`` | the parent's API (``connect``, ``listen``, asyncio) | host |
| ``enclave`` | the enclave's API, AF_VSOCK on real Nitro (stdlib only) | enclave |
| ``forward`` | ``vsock-forward``: TCP <-> VSOCK relays | host |
| ``proxy`` | ``vsock-proxy``: nitro-cli's allowlisted VSOCK -> TCP proxy | host |
| ``peer`` | small VSOCK programs for tests and benchmarks (stdlib only) | enclave |
| ``peer_image`` | the enclave image that runs them | host |

``from emulator import vsock`` gives the host API (``vsock.connect(cid, port)``; every public
name of :mod:`emulator.vsock.host`). Names are
imported lazily (PEP 562), so ``import emulator.vsock.enclave`` inside an enclave needs only
the standard library.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOST_API = (
    "PARENT_CID",
    "VMADDR_CID_ANY",
    "VMADDR_PORT_ANY",
    "InvalidAddressError",
    "UnknownCidError",
    "VsockListener",
    "VsockServer",
    "check_address",
    "connect",
    "listen",
    "open_connection",
    "peer_address",
    "start_server",
)

__all__ = sorted(_HOST_API)


#: Submodules: ``from emulator.vsock import enclave`` must import the module, never the host API.
_SUBMODULES = frozenset({"enclave", "forward", "host", "peer", "peer_image", "proxy"})


def __getattr__(name: str) -> Any:
    if name.startswith("_") or name in _SUBMODULES:
        raise AttributeError(f"module 'emulator.vsock' has no attribute {name!r}")
    try:
        value = getattr(importlib.import_module("emulator.vsock.host"), name)
    except AttributeError:
        raise AttributeError(f"module 'emulator.vsock' has no attribute {name!r}") from None
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
