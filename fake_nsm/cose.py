"""COSE_Sign1 as Nitro uses it: decoding, the Sig_structure and ES384 verification.

Facts (nitro-facts §2.2, §2.4 steps 1, 2 and 6; RFC 9052 §4.2-4.4):
``[protected bstr, unprotected map, payload bstr, signature bstr]``, untagged on real Nitro
(CBOR tag 18 accepted); protected = ``{1: -35}`` (ES384); the signature is raw ``r || s``
(48 bytes each, big-endian) over ``["Signature1", protected, h'', payload]``.

cryptography is used directly rather than pycose, whose ``verify`` returns a bool and raises
bare ``KeyError``s (STYLE.md). No cbor2 or cryptography exception leaves this module.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from fake_nsm.errors import MalformedDocumentError, SignatureError, UnsupportedAlgorithmError

COSE_SIGN1_TAG = 18
HEADER_ALG = 1
HEADER_CRIT = 2
ALG_ES384 = -35
ES384_COORDINATE_BYTES = 48
ES384_SIGNATURE_BYTES = 2 * ES384_COORDINATE_BYTES

# Deep enough for any legitimate document (array > map > array > bstr); bounds hostile input.
_MAX_DEPTH = 16
_ECDSA_SHA384 = ec.ECDSA(hashes.SHA384())


def decode_cbor(data: bytes, what: str) -> Any:
    """Decode exactly one CBOR item that spans all of ``data``.

    Raises:
        MalformedDocumentError: not CBOR, duplicate map keys, too deep, or trailing bytes.
    """
    stream = io.BytesIO(data)
    try:
        # One read of the whole buffer (a small read_size costs a Python call per item);
        # cbor2 rewinds the stream to the end of the item, so tell() still finds trailers.
        value = cbor2.CBORDecoder(
            stream,
            read_size=max(len(data), 1),
            max_depth=_MAX_DEPTH,
            allow_duplicate_keys=False,
        ).decode()
    # cbor2's semantic decoders raise CBORDecodeError but also ValueError, TypeError,
    # OverflowError...; any failure to parse means the bytes are malformed.
    except Exception as error:  # noqa: BLE001
        raise MalformedDocumentError(f"{what} is not valid CBOR: {error}") from error
    if stream.tell() != len(data):
        raise MalformedDocumentError(
            f"{what} has {len(data) - stream.tell()} trailing byte(s) after its CBOR item"
        )
    return value


@dataclass(frozen=True)
class CoseSign1:
    """A decoded COSE_Sign1 message whose protected header is ``{1: -35}``.

    Attributes:
        protected: the protected header bstr, exactly as on the wire (it is signed).
        unprotected: the unprotected header map (not signed; ``{}`` on Nitro).
        payload: the payload bstr (the attestation document's CBOR).
        signature: raw ``r || s``, 96 bytes.
    """

    protected: bytes
    unprotected: Mapping[object, object]
    payload: bytes
    signature: bytes

    def to_be_signed(self) -> bytes:
        """The Sig_structure ``["Signature1", protected, h'', payload]`` (RFC 9052 §4.4)."""
        return sig_structure(self.protected, self.payload)

    def verify(self, public_key: ec.EllipticCurvePublicKey) -> None:
        """Check the ES384 signature with ``public_key``.

        Raises:
            SignatureError: the signature does not verify.
        """
        verify_es384(public_key, self.signature, self.to_be_signed())


def sig_structure(protected: bytes, payload: bytes) -> bytes:
    """The bytes ES384 signs: ``cbor(["Signature1", protected, h'', payload])``."""
    return cbor2.dumps(["Signature1", protected, b"", payload])


def verify_es384(public_key: ec.EllipticCurvePublicKey, signature: bytes, message: bytes) -> None:
    """Verify a raw ``r || s`` ECDSA P-384 / SHA-384 signature; high-S is accepted.

    Raises:
        SignatureError: the signature does not verify (or is not 96 bytes).
    """
    if len(signature) != ES384_SIGNATURE_BYTES:
        raise SignatureError(f"ES384 signature is {len(signature)} bytes, expected 96 (r || s)")
    r = int.from_bytes(signature[:ES384_COORDINATE_BYTES], "big")
    s = int.from_bytes(signature[ES384_COORDINATE_BYTES:], "big")
    try:
        public_key.verify(encode_dss_signature(r, s), message, _ECDSA_SHA384)
    except (InvalidSignature, ValueError) as error:
        raise SignatureError(
            "COSE_Sign1 signature does not verify with the leaf certificate's key: "
            "the document was altered or not signed by that certificate"
        ) from error


def decode_cose_sign1(data: bytes) -> CoseSign1:
    """Decode and check the COSE_Sign1 envelope (nitro-facts §2.4 steps 1-2).

    Args:
        data: the document bytes, untagged or with CBOR tag 18.

    Raises:
        MalformedDocumentError: not a COSE_Sign1 array of the right shape.
        UnsupportedAlgorithmError: the protected header is not ``{1: -35}`` (ES384).
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise MalformedDocumentError(
            f"an attestation document is bytes, got {type(data).__name__}"
        )
    data = bytes(data)
    message = decode_cbor(data, "the attestation document")
    if isinstance(message, cbor2.CBORTag):
        if message.tag != COSE_SIGN1_TAG:
            raise MalformedDocumentError(
                f"CBOR tag {message.tag} is not COSE_Sign1 (tag 18, or untagged as on Nitro)"
            )
        message = message.value
    # cbor2 hands a tagged array over as a tuple.
    if not isinstance(message, (list, tuple)) or len(message) != 4:
        raise MalformedDocumentError(
            "not a COSE_Sign1 message: expected an array of 4 items "
            "[protected, unprotected, payload, signature]"
        )
    protected, unprotected, payload, signature = message
    for name, value, kind in (
        ("protected header", protected, bytes),
        ("unprotected header", unprotected, Mapping),
        ("payload", payload, bytes),
        ("signature", signature, bytes),
    ):
        if not isinstance(value, kind):
            raise MalformedDocumentError(
                f"COSE_Sign1 {name} must be a {'byte string' if kind is bytes else 'map'}, "
                f"got {type(value).__name__}"
            )
    if len(signature) != ES384_SIGNATURE_BYTES:
        raise MalformedDocumentError(
            f"COSE_Sign1 signature is {len(signature)} bytes; ES384 needs 96 (raw r || s)"
        )
    _check_protected_header(protected, unprotected)
    return CoseSign1(protected, unprotected, payload, signature)


_ES384_ONLY = b"\xa1\x01\x38\x22"  # {1: -35}, the protected header of every Nitro document


def _check_protected_header(protected: bytes, unprotected: Mapping[object, object]) -> None:
    if protected == _ES384_ONLY and not unprotected:
        return
    headers = decode_cbor(protected, "the COSE protected header") if protected else {}
    if not isinstance(headers, Mapping):
        raise MalformedDocumentError(
            f"the COSE protected header must encode a map, got {type(headers).__name__}"
        )
    if HEADER_ALG not in headers:
        raise UnsupportedAlgorithmError(
            "the COSE protected header names no algorithm; Nitro documents carry {1: -35} (ES384)"
        )
    algorithm = headers[HEADER_ALG]
    if type(algorithm) is not int or algorithm != ALG_ES384:
        raise UnsupportedAlgorithmError(
            f"COSE algorithm {algorithm!r} is not supported: only ES384 (-35) is, as on Nitro"
        )
    if HEADER_CRIT in headers:
        raise UnsupportedAlgorithmError("COSE critical header parameters (label 2) are not supported")
    # RFC 9052 §3: a label must not appear in both buckets.
    try:
        shared = set(headers) & set(unprotected)
    except TypeError as error:  # an unhashable label
        raise MalformedDocumentError(f"COSE header labels must be hashable: {error}") from error
    if shared:
        raise MalformedDocumentError(
            f"COSE header label(s) {sorted(map(repr, shared))} appear in both the protected "
            "and the unprotected header"
        )
