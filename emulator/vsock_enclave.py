"""Deprecated path, kept for this release: use :mod:`emulator.vsock.enclave`.

``from emulator import vsock_enclave`` keeps working for enclave code written for 0.1 (every
public name is re-exported); new code should write ``from emulator.vsock import enclave``.
"""

from __future__ import annotations

from emulator.vsock.enclave import *  # noqa: F403 - the whole public API, re-exported
from emulator.vsock.enclave import __all__ as __all__
