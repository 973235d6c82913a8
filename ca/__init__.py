"""The test CA: an AWS-shaped certificate chain marked TEST (nitro-facts §2.3).

    >>> ca = TestCA.load_or_create(get_settings().ca_dir)
    >>> credentials = ca.issue_leaf("i-0123456789abcdef0-enc0123456789abcdef")

Errors (all subclasses of :class:`CAError`): see :mod:`ca.errors`.
"""

from __future__ import annotations

from ca.authority import LeafCredentials, TestCA
from ca.errors import (
    CAError,
    CANotFoundError,
    CAStorageError,
    InvalidEnclaveIdError,
    RootValidityError,
)

__all__ = [
    "CAError",
    "CANotFoundError",
    "CAStorageError",
    "InvalidEnclaveIdError",
    "LeafCredentials",
    "RootValidityError",
    "TestCA",
]
