"""Path validation of a document's certificate chain, and the cache of verified chains.

nitro-facts §2.3-2.4 step 5: the chain is ``cabundle[0]`` (the root) ``-> cabundle[1] -> ...
-> cabundle[-1] -> certificate`` (the leaf). Each link is checked for issuer/subject names
and signature; CA certificates need basicConstraints CA:TRUE with a large enough pathLen and
keyUsage keyCertSign; the leaf needs CA:FALSE (or no basicConstraints) and keyUsage
digitalSignature and a P-384 key (it signs ES384). Unknown critical extensions are refused
(RFC 5280 §4.2). CRLs are not checked: AWS says "We do not use CRL".

Signature checks are the expensive part (one ECDSA P-384 verify per certificate), so a
chain that passed them is cached, keyed by its exact DER bytes. The validity windows are
time-dependent and are re-checked on every call (:func:`check_validity`).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtensionOID

from fake_nsm.errors import (
    CertificateChainError,
    CertificateExpiredError,
    UnsupportedAlgorithmError,
    VerificationError,
)

ChainKey = tuple[bytes, ...]
_E = TypeVar("_E", bound=x509.ExtensionType)

_UNDERSTOOD_CRITICAL = frozenset({ExtensionOID.BASIC_CONSTRAINTS, ExtensionOID.KEY_USAGE})


@dataclass(frozen=True)
class ValidityWindow:
    """When one certificate of the chain is valid (inclusive, RFC 5280 §4.1.2.5)."""

    position: str
    not_before: datetime
    not_after: datetime


@dataclass(frozen=True)
class ParsedChain:
    """A chain whose structure passed; ``signatures_verified`` once every link verified.

    Attributes:
        certificates: root first, leaf last.
        positions: their names in the document (``"cabundle[0]"`` ... ``"leaf"``).
        windows: validity windows, leaf first (the shortest window, usually).
        leaf_public_key: the key the COSE signature must verify with.
    """

    certificates: tuple[x509.Certificate, ...]
    positions: tuple[str, ...]
    windows: tuple[ValidityWindow, ...]
    leaf_public_key: ec.EllipticCurvePublicKey
    signatures_verified: bool = field(default=False, compare=False)


def chain_key(certificate: bytes, cabundle: Sequence[bytes]) -> ChainKey:
    """The cache key of a chain: its DER certificates, leaf first then the bundle."""
    return (certificate, *cabundle)


def parse_chain(certificate: bytes, cabundle: Sequence[bytes]) -> ParsedChain:
    """Parse the chain and check names, extensions and key types (no signatures yet).

    Raises:
        CertificateChainError: a certificate is not DER X.509 v3, or fails a constraint.
        UnsupportedAlgorithmError: the leaf key is not EC P-384.
    """
    ders = (*cabundle, certificate)
    positions = tuple(f"cabundle[{i}]" for i in range(len(cabundle))) + ("leaf",)
    certificates: list[x509.Certificate] = []
    windows: list[ValidityWindow] = []
    for position, der in zip(positions, ders):
        try:
            cert = x509.load_der_x509_certificate(der)
            public_key = cert.public_key()
            _check_extensions(cert, position, is_leaf=position == "leaf",
                              cas_below=len(ders) - 2 - len(certificates))
            windows.append(ValidityWindow(position, cert.not_valid_before_utc,
                                          cert.not_valid_after_utc))
        except VerificationError:
            raise
        # cryptography parses extensions lazily and raises ValueError, DuplicateExtension,
        # InvalidVersion...: whatever it raises, the certificate is unusable.
        except Exception as error:  # noqa: BLE001
            raise CertificateChainError(
                f"{position} is not a usable DER X.509 certificate: {error}"
            ) from error
        certificates.append(cert)
    leaf_key = public_key
    if not isinstance(leaf_key, ec.EllipticCurvePublicKey) or not isinstance(
        leaf_key.curve, ec.SECP384R1
    ):
        raise UnsupportedAlgorithmError(
            f"the leaf certificate's key is {_describe_key(leaf_key)}; ES384 needs EC P-384"
        )
    return ParsedChain(tuple(certificates), positions, tuple(reversed(windows)), leaf_key)


def verify_chain_signatures(chain: ParsedChain) -> ParsedChain:
    """Check every link's signature, leaf upwards, and the root's self-signature.

    Returns:
        The chain marked ``signatures_verified``.

    Raises:
        CertificateChainError: a certificate was not issued by the next one up.
    """
    certs = chain.certificates
    links = [(i, i - 1) for i in range(len(certs) - 1, 0, -1)] + [(0, 0)]
    for child, issuer in links:
        try:
            certs[child].verify_directly_issued_by(certs[issuer])
        except (InvalidSignature, UnsupportedAlgorithm, ValueError, TypeError) as error:
            what = "is not self-signed" if child == issuer else (
                f"was not issued by {chain.positions[issuer]}"
            )
            raise CertificateChainError(
                f"{chain.positions[child]} {what} (names or signature do not match: "
                f"{error or type(error).__name__})"
            ) from error
    return ParsedChain(chain.certificates, chain.positions, chain.windows,
                       chain.leaf_public_key, signatures_verified=True)


def check_validity(chain: ParsedChain, at: datetime) -> None:
    """Check every certificate's validity window at ``at`` (an aware UTC datetime).

    Raises:
        CertificateExpiredError: a certificate is expired or not yet valid at ``at``.
    """
    for window in chain.windows:
        if window.not_before <= at <= window.not_after:
            continue
        name = "leaf certificate" if window.position == "leaf" else window.position
        if at > window.not_after:
            what = f"{name} expired at {_iso(window.not_after)}"
        else:
            what = f"{name} is not valid before {_iso(window.not_before)}"
        raise CertificateExpiredError(
            f"{what} (verification time {_iso(at)})",
            position=window.position,
            not_before=window.not_before,
            not_after=window.not_after,
            at=at,
        )


class ChainCache:
    """A thread-safe LRU of chains whose signatures verified, keyed by their DER bytes."""

    def __init__(self, max_entries: int = 128) -> None:
        self._entries: OrderedDict[ChainKey, ParsedChain] = OrderedDict()
        self._max_entries = max_entries
        self._lock = threading.Lock()

    def get(self, key: ChainKey) -> ParsedChain | None:
        """The verified chain for ``key``, or None."""
        with self._lock:
            chain = self._entries.get(key)
            if chain is not None:
                self._entries.move_to_end(key)
            return chain

    def put(self, key: ChainKey, chain: ParsedChain) -> None:
        """Remember a chain whose signatures verified."""
        if not chain.signatures_verified:
            raise ValueError("only chains whose signatures verified may be cached")
        with self._lock:
            self._entries[key] = chain
            self._entries.move_to_end(key)
            while len(self._entries) > self._max_entries:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        """Forget every chain."""
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)


def _check_extensions(cert: x509.Certificate, position: str, *, is_leaf: bool,
                      cas_below: int) -> None:
    if cert.version is not x509.Version.v3:
        raise CertificateChainError(f"{position} is not an X.509 v3 certificate")
    extensions = cert.extensions
    for extension in extensions:
        if extension.critical and extension.oid not in _UNDERSTOOD_CRITICAL:
            raise CertificateChainError(
                f"{position} has an unrecognised critical extension {extension.oid.dotted_string}"
            )
    constraints = _extension(extensions, x509.BasicConstraints)
    usage = _extension(extensions, x509.KeyUsage)
    if is_leaf:
        if constraints is not None and constraints.ca:
            raise CertificateChainError("the leaf certificate is a CA (basicConstraints CA:TRUE)")
        if usage is None or not usage.digital_signature:
            raise CertificateChainError("the leaf certificate's keyUsage lacks digitalSignature")
        return
    if constraints is None or not constraints.ca:
        raise CertificateChainError(f"{position} is not a CA (basicConstraints CA:TRUE missing)")
    if constraints.path_length is not None and constraints.path_length < cas_below:
        raise CertificateChainError(
            f"{position} allows pathLen {constraints.path_length} but {cas_below} CA "
            "certificate(s) follow it"
        )
    if usage is None or not usage.key_cert_sign:
        raise CertificateChainError(f"{position} is a CA whose keyUsage lacks keyCertSign")


def _extension(extensions: x509.Extensions, kind: type[_E]) -> _E | None:
    try:
        return extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


def _describe_key(key: object) -> str:
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"EC {key.curve.name}"
    return type(key).__name__.lstrip("_")


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")
