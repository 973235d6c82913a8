"""The LD_PRELOAD shim's public face (the C source is ``emulator/shim/nitro_emu_shim.c``).

``emulator.enclave_container`` calls :func:`container_extras` for every enclave (its
``EXTENSION_PROVIDERS`` hook names ``emulator.shim:container_extras``); the build and cache
live in :mod:`emulator.shim_build`. See docs/shim.md.
"""

from __future__ import annotations

from emulator.shim_build import (
    ENCLAVE_LIB_DIR,
    ENCLAVE_PRELOAD,
    ShimBuild,
    ShimBuildError,
    container_extras,
    ensure_shim,
    parent_environment,
)

__all__ = [
    "ENCLAVE_LIB_DIR",
    "ENCLAVE_PRELOAD",
    "ShimBuild",
    "ShimBuildError",
    "container_extras",
    "ensure_shim",
    "parent_environment",
]
