"""The roots a verification is anchored at, reduced to SHA-256 fingerprints (nitro-facts §2.4 step 4).

A caller names each root as a certificate, PEM or DER bytes (a PEM may hold several), PEM
text, or the SHA-256 fingerprint of the DER as hex (``641A0321...`` or ``64:1A:03:...``).
A document is anchored when ``SHA-256(cabundle[0])`` is one of them: byte equality with a
pinned root, never trust in whatever ``cabundle[0]`` says (fail closed, STYLE.md §9).
"""

from __future__ import annotations

import hashlib
import string
import threading
from collections.abc import Sequence
from typing import Union

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from fake_nsm.errors import VerificationInputError

TrustedRoot = Union[x509.Certificate, bytes, str]

_HEX_DIGITS = frozenset(string.hexdigits)
_MEMO_LIMIT = 64
_memo: dict[bytes | str, frozenset[str]] = {}
_memo_lock = threading.Lock()


def fingerprint(der: bytes) -> str:
    """The SHA-256 fingerprint of a DER certificate, upper-case hex without colons."""
    return hashlib.sha256(der).hexdigest().upper()


def resolve_trusted_roots(
    trusted_roots: Sequence[TrustedRoot] | TrustedRoot,
) -> frozenset[str]:
    """The fingerprints of the caller's roots.

    Raises:
        VerificationInputError: no root was given, or one is not a certificate/fingerprint.
    """
    if isinstance(trusted_roots, (bytes, bytearray, str, x509.Certificate)):
        trusted_roots = [trusted_roots]
    try:
        roots = list(trusted_roots)
    except TypeError as error:
        raise VerificationInputError(
            f"trusted_roots must be a list of roots, got {type(trusted_roots).__name__}"
        ) from error
    if not roots:
        raise VerificationInputError(
            "no trusted root given: the verifier trusts nothing by default; pass the test CA "
            "root (nitro-emu ca export-root) or fake_nsm.aws_root.AWS_NITRO_ROOT_G1_PEM"
        )
    result: set[str] = set()
    for position, root in enumerate(roots):
        result |= _fingerprints_of(root, position)
    return frozenset(result)


def _fingerprints_of(root: object, position: int) -> frozenset[str]:
    if isinstance(root, x509.Certificate):
        return frozenset({root.fingerprint(hashes.SHA256()).hex().upper()})
    if isinstance(root, bytearray):
        root = bytes(root)
    if not isinstance(root, (bytes, str)):
        raise VerificationInputError(
            f"trusted root #{position} is a {type(root).__name__}; give a certificate, "
            "PEM/DER bytes or a SHA-256 fingerprint in hex"
        )
    with _memo_lock:
        known = _memo.get(root)
    if known is not None:
        return known
    found = _parse_root(root, position)
    with _memo_lock:
        if len(_memo) >= _MEMO_LIMIT:
            _memo.clear()
        _memo[root] = found
    return found


def _parse_root(root: bytes | str, position: int) -> frozenset[str]:
    if isinstance(root, str):
        if "-----BEGIN" in root:
            return _parse_root(root.encode("ascii", "replace"), position)
        digits = "".join(root.split()).replace(":", "")
        if len(digits) != 64 or not set(digits) <= _HEX_DIGITS:
            raise VerificationInputError(
                f"trusted root #{position} {root[:80]!r} is not a SHA-256 fingerprint "
                "(64 hex digits, colons allowed) nor a PEM certificate"
            )
        return frozenset({digits.upper()})
    try:
        if b"-----BEGIN" in root:
            certificates = x509.load_pem_x509_certificates(root)
        else:
            certificates = [x509.load_der_x509_certificate(root)]
    except ValueError as error:
        raise VerificationInputError(
            f"trusted root #{position} is not an X.509 certificate (PEM or DER): {error}"
        ) from error
    return frozenset(cert.fingerprint(hashes.SHA256()).hex().upper() for cert in certificates)
