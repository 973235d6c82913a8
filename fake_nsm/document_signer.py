"""Attestation documents signed exactly as AWS's NSM signs them (nitro-facts §2.2).

Output: an **untagged** COSE_Sign1 array(4)::

    84                        array(4)
       44 a1 01 38 22         protected: bstr {1: -35} (ES384)
       a0                     unprotected: {}
       59 HH LL <payload>     payload: the AttestationDoc map
       58 60 <r || s>         signature: raw, 48 bytes each

The payload map has AWS's key order (``fake_nsm.document.PAYLOAD_KEYS``), CBOR null for
absent optional fields, a definite ``pcrs`` map in index order and a definite ``cabundle``
array root first. The top-level map is indefinite-length (``bf ... ff``, AWS's form since
mid-2025) unless ``definite_map`` asks for the older ``a9`` form.

Speed: everything that does not change between documents of one leaf (module id, digest,
certificate, cabundle) is CBOR-encoded once; a document costs one SHA-384 and one ECDSA
signature plus a few byte joins.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta, timezone

import cbor2
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from ca import LeafCredentials, TestCA
from fake_nsm.document import PAYLOAD_KEYS
from fake_nsm.errors import NsmError

PROTECTED_HEADER = b"\xa1\x01\x38\x22"  # {1: -35}: alg ES384
_COSE_PREFIX = b"\x84\x44" + PROTECTED_HEADER + b"\xa0"
# Sig_structure = ["Signature1", protected, external_aad = h'', payload] (RFC 8152 §4.4)
_SIG_STRUCTURE_PREFIX = b"\x84\x6aSignature1\x44" + PROTECTED_HEADER + b"\x40"
_SIGNATURE_HEAD = b"\x58\x60"  # bstr(96)
_NULL = b"\xf6"
_ECDSA_SHA384 = ec.ECDSA(hashes.SHA384())
PCR_LENGTH = 48  # digest SHA384 (§1.3)
MAX_PCRS = 32
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_KEYS = {key: cbor2.dumps(key) for key in PAYLOAD_KEYS}

Clock = Callable[[], datetime]


class DocumentFieldError(NsmError, ValueError):
    """A value given to the signer cannot go into an attestation document (names it)."""


def _head(major: int, value: int) -> bytes:
    """A CBOR initial byte + argument, minimal length (as serde_cbor writes them)."""
    if value < 24:
        return bytes([major << 5 | value])
    if value < 0x100:
        return bytes([major << 5 | 24, value])
    if value < 0x10000:
        return bytes([major << 5 | 25]) + value.to_bytes(2, "big")
    if value < 0x100000000:
        return bytes([major << 5 | 26]) + value.to_bytes(4, "big")
    return bytes([major << 5 | 27]) + value.to_bytes(8, "big")


def _bstr(value: bytes) -> bytes:
    return _head(2, len(value)) + value


def _optional(name: str, value: bytes | bytearray | memoryview | None) -> bytes:
    if value is None:
        return _NULL
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise DocumentFieldError(f"{name} must be bytes or None, not {type(value).__name__}")
    return _bstr(bytes(value))


_PCR_ENTRY_HEADS = {index: _head(0, index) + b"\x58\x30" for index in range(MAX_PCRS)}


def encode_pcrs(pcrs: Mapping[int, bytes]) -> bytes:
    """``pcrs`` as AWS writes it: a definite map, index order, each value ``58 30`` + 48 bytes.

    PCRs rarely change between documents, so encodings of immutable values are memoized.
    """
    if not 1 <= len(pcrs) <= MAX_PCRS:
        raise DocumentFieldError(f"pcrs must hold 1..{MAX_PCRS} entries, got {len(pcrs)}")
    items = tuple(pcrs.items())
    # Memoize only exact int -> bytes items: a bytearray may change, and True == 1 or
    # 1.0 == 1 would otherwise hit the entry of a valid map.
    if all(type(index) is int and type(value) is bytes for index, value in items):
        return _encode_pcr_items_memoized(items)
    return _encode_pcr_items(items)


def _encode_pcr_items(items: tuple[tuple[int, bytes], ...]) -> bytes:
    try:
        ordered = sorted(items, key=lambda item: item[0])
    except TypeError:
        keys = [index for index, _ in items]
        raise DocumentFieldError(f"PCR indices must be integers, got {keys!r:.80}") from None
    parts = [_head(5, len(ordered))]
    for index, value in ordered:
        entry_head = _PCR_ENTRY_HEADS.get(index)
        if entry_head is None or type(index) is not int:
            raise DocumentFieldError(f"PCR index {index!r} is not an integer in 0..{MAX_PCRS - 1}")
        if type(value) is not bytes:
            if not isinstance(value, (bytes, bytearray, memoryview)):
                raise DocumentFieldError(f"PCR{index} must be bytes, not {type(value).__name__}")
            value = bytes(value)
        if len(value) != PCR_LENGTH:
            raise DocumentFieldError(
                f"PCR{index} must be {PCR_LENGTH} bytes (SHA-384), got {len(value)} bytes"
            )
        parts.append(entry_head)
        parts.append(value)
    return b"".join(parts)


_encode_pcr_items_memoized = functools.lru_cache(maxsize=16)(_encode_pcr_items)


def raw_signature(der: bytes) -> bytes:
    """An ECDSA P-384 signature from DER ``SEQUENCE {r, s}`` (RFC 3279) to raw ``r || s``.

    Hand-parsed because it is on the hot path (4x faster than ``decode_dss_signature``).
    """
    offset = 3 if der[1] == 0x81 else 2  # the SEQUENCE length takes 1 or 2 bytes
    r_length = der[offset + 1]
    r = der[offset + 2 : offset + 2 + r_length]
    offset += 2 + r_length
    s = der[offset + 2 : offset + 2 + der[offset + 1]]
    # INTEGERs are minimal and signed: strip a leading 00, left-pad short ones to 48 bytes.
    return r[-48:].rjust(48, b"\0") + s[-48:].rjust(48, b"\0")


class _Template:
    """The pre-encoded constant parts of the payload for one leaf and module id."""

    __slots__ = ("head_definite", "head_indefinite", "middle", "private_key")

    def __init__(self, credentials: LeafCredentials, module_id: str) -> None:
        k = _KEYS
        module_id_digest = (
            k["module_id"] + cbor2.dumps(module_id) + k["digest"] + cbor2.dumps("SHA384") + k["timestamp"]
        )
        self.head_definite = _head(5, len(PAYLOAD_KEYS)) + module_id_digest
        self.head_indefinite = b"\xbf" + module_id_digest
        # -> timestamp, then "pcrs" + map, then the certificates and the "public_key" key.
        cabundle = _head(4, len(credentials.cabundle)) + b"".join(
            _bstr(cert) for cert in credentials.cabundle
        )
        self.middle = (
            k["pcrs"],
            k["certificate"] + _bstr(credentials.certificate) + k["cabundle"] + cabundle + k["public_key"],
        )
        self.private_key = credentials.private_key

    def payload(
        self,
        timestamp_ms: int,
        pcrs: bytes,
        public_key: bytes,
        user_data: bytes,
        nonce: bytes,
        definite_map: bool,
    ) -> bytes:
        pcrs_key, after_pcrs = self.middle
        return b"".join(
            (
                self.head_definite if definite_map else self.head_indefinite,
                _head(0, timestamp_ms),
                pcrs_key,
                pcrs,
                after_pcrs,
                public_key,
                _KEYS["user_data"],
                user_data,
                _KEYS["nonce"],
                nonce,
                b"" if definite_map else b"\xff",
            )
        )


@functools.lru_cache(maxsize=64)
def _template(credentials: LeafCredentials, module_id: str) -> _Template:
    return _Template(credentials, module_id)


def _sign_payload(private_key: ec.EllipticCurvePrivateKey, payload: bytes) -> bytes:
    payload_bstr = _bstr(payload)
    der = private_key.sign(_SIG_STRUCTURE_PREFIX + payload_bstr, _ECDSA_SHA384)
    return b"".join((_COSE_PREFIX, payload_bstr, _SIGNATURE_HEAD, raw_signature(der)))


def sign_document(
    credentials: LeafCredentials,
    module_id: str,
    pcrs: Mapping[int, bytes],
    *,
    user_data: bytes | None = None,
    nonce: bytes | None = None,
    public_key: bytes | None = None,
    timestamp_ms: int,
    definite_map: bool = False,
) -> bytes:
    """One attestation document (COSE_Sign1 bytes) signed with ``credentials``.

    Args:
        credentials: the enclave's leaf (``TestCA.issue_leaf``).
        module_id: the enclave id, written as ``module_id``.
        pcrs: the locked PCRs, index -> 48 bytes.
        user_data, nonce, public_key: caller values; None is written as CBOR null.
        timestamp_ms: milliseconds since the epoch (UTC).
        definite_map: write the top-level map as ``a9`` instead of ``bf ... ff``.

    Raises:
        DocumentFieldError: a value does not fit the document's schema.
    """
    if not isinstance(module_id, str) or not module_id:
        raise DocumentFieldError("module_id must be a non-empty string")
    _check_timestamp(timestamp_ms)
    template = _template(credentials, module_id)
    payload = template.payload(
        timestamp_ms,
        encode_pcrs(pcrs),
        _optional("public_key", public_key),
        _optional("user_data", user_data),
        _optional("nonce", nonce),
        definite_map,
    )
    return _sign_payload(template.private_key, payload)


def _check_timestamp(value: int) -> int:
    if type(value) is not int or not 0 < value < 1 << 64:
        raise DocumentFieldError(f"timestamp_ms must be a positive uint64, got {value!r}")
    return value


def timestamp_ms(moment: datetime) -> int:
    """Milliseconds since the Unix epoch of an aware datetime (exact, no float rounding)."""
    return (moment - _EPOCH) // timedelta(milliseconds=1)


class DocumentSigner:
    """Signs the documents of one enclave; re-issues its leaf when it expires. Thread-safe.

    Args:
        ca: the test CA that issues the leaf.
        module_id: the enclave id (``i-<17 hex>-enc<16 hex>``).
        definite_map: write the payload map in the older definite form (``a9``).
        clock: returns the current time (aware); defaults to the system clock.
    """

    def __init__(
        self,
        ca: TestCA,
        module_id: str,
        *,
        definite_map: bool = False,
        clock: Clock | None = None,
    ) -> None:
        self._ca = ca
        self.module_id = module_id
        self.definite_map = definite_map
        self._clock: Clock = clock or (lambda: datetime.now(timezone.utc))
        self._lock = threading.Lock()
        self._credentials: LeafCredentials | None = None
        self._template: _Template | None = None
        # Issue the first leaf now: a bad module id fails here, not at the first request.
        self._current(self._now())

    def _now(self) -> datetime:
        moment = self._clock()
        if moment.tzinfo is None:
            raise DocumentFieldError("the signer's clock must return an aware datetime")
        return moment

    def _current(self, moment: datetime) -> tuple[LeafCredentials, _Template]:
        with self._lock:
            credentials, template = self._credentials, self._template
            if credentials is None or template is None or not credentials.usable_at(moment):
                credentials = self._ca.issue_leaf(self.module_id, now=moment)
                template = _Template(credentials, self.module_id)
                self._credentials, self._template = credentials, template
            return credentials, template

    @property
    def credentials(self) -> LeafCredentials:
        """The leaf in use now (issued or renewed as needed)."""
        return self._current(self._now())[0]

    def sign(
        self,
        pcrs: Mapping[int, bytes],
        *,
        user_data: bytes | None = None,
        nonce: bytes | None = None,
        public_key: bytes | None = None,
    ) -> bytes:
        """A document dated now with these PCRs and caller fields (COSE_Sign1 bytes)."""
        moment = self._now()
        _credentials, template = self._current(moment)
        payload = template.payload(
            _check_timestamp(timestamp_ms(moment)),
            encode_pcrs(pcrs),
            _optional("public_key", public_key),
            _optional("user_data", user_data),
            _optional("nonce", nonce),
            self.definite_map,
        )
        return _sign_payload(template.private_key, payload)
