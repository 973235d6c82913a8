"""Decode an attestation document payload and check its syntax (nitro-facts §2.1-2.2).

The payload map may be definite (``a9``, documents up to 2024) or indefinite (``bf ... ff``,
documents from mid-2025); absent optional fields may be CBOR ``null`` (real NSMs emit it)
or missing. Mandatory fields may not be null. Unknown keys are refused: the CDDL map is
closed, and the document is our trust decision's input.
"""

from __future__ import annotations


from fake_nsm.cose import decode_cbor
from fake_nsm.document import PAYLOAD_KEYS, AttestationDocument
from fake_nsm.errors import MalformedDocumentError, UnsupportedAlgorithmError

_KNOWN_KEYS = frozenset(PAYLOAD_KEYS)
MANDATORY_KEYS: tuple[str, ...] = PAYLOAD_KEYS[:6]
OPTIONAL_KEYS: tuple[str, ...] = PAYLOAD_KEYS[6:]

# §2.1 CDDL limits; `strict` applies the AWS prose's 512 for user_data and nonce.
MAX_PCRS = 32
PCR_LENGTHS = (32, 48, 64)
MAX_CERTIFICATE_BYTES = 1024
MAX_PUBLIC_KEY_BYTES = 1024
MAX_USER_DATA_BYTES = 1024
STRICT_MAX_USER_DATA_BYTES = 512
MAX_TIMESTAMP = 2**64 - 1  # uint .size 8


def parse_attestation_payload(payload: bytes, *, strict: bool = False) -> AttestationDocument:
    """Decode the COSE payload into an :class:`AttestationDocument`, checking §2.1.

    Args:
        payload: the CBOR bytes of the attestation document map.
        strict: limit ``user_data`` and ``nonce`` to 512 bytes (AWS's prose) instead of
            the CDDL's 1024.

    Raises:
        MalformedDocumentError: bad CBOR, a missing/null/unknown field, a wrong type or size.
        UnsupportedAlgorithmError: ``digest`` is not ``"SHA384"``.
    """
    fields = decode_cbor(payload, "the attestation document payload")
    if not isinstance(fields, dict):
        raise MalformedDocumentError(
            f"the payload must be a CBOR map, got {type(fields).__name__}"
        )
    if not _KNOWN_KEYS.issuperset(fields):
        unknown = [key for key in fields if key not in _KNOWN_KEYS]
        raise MalformedDocumentError(
            f"unknown payload field(s) {', '.join(sorted(map(repr, unknown)))}; "
            f"an attestation document has only {', '.join(PAYLOAD_KEYS)}"
        )
    for key in MANDATORY_KEYS:
        if fields.get(key) is None:
            raise MalformedDocumentError(f"mandatory field {key!r} is missing or null")
    user_limit = STRICT_MAX_USER_DATA_BYTES if strict else MAX_USER_DATA_BYTES
    return AttestationDocument(
        module_id=_module_id(fields["module_id"]),
        digest=_digest(fields["digest"]),
        timestamp=_timestamp(fields["timestamp"]),
        pcrs=_pcrs(fields["pcrs"]),
        certificate=_bytes("certificate", fields["certificate"], 1, MAX_CERTIFICATE_BYTES),
        cabundle=_cabundle(fields["cabundle"]),
        public_key=_optional("public_key", fields.get("public_key"), 1, MAX_PUBLIC_KEY_BYTES),
        user_data=_optional("user_data", fields.get("user_data"), 0, user_limit),
        nonce=_optional("nonce", fields.get("nonce"), 0, user_limit),
    )


def _module_id(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise MalformedDocumentError(f"module_id must be non-empty text, got {_shown(value)}")
    return value


def _digest(value: object) -> str:
    if not isinstance(value, str):
        raise MalformedDocumentError(f"digest must be text, got {_shown(value)}")
    if value != "SHA384":
        raise UnsupportedAlgorithmError(f"digest {value!r} is not supported: Nitro uses 'SHA384'")
    return value


def _timestamp(value: object) -> int:
    if type(value) is not int or not 0 < value <= MAX_TIMESTAMP:
        raise MalformedDocumentError(
            f"timestamp must be an unsigned integer > 0 (ms since the epoch), got {_shown(value)}"
        )
    return value


def _pcrs(value: object) -> dict[int, bytes]:
    if not isinstance(value, dict):
        raise MalformedDocumentError(f"pcrs must be a map, got {_shown(value)}")
    if not 1 <= len(value) <= MAX_PCRS:
        raise MalformedDocumentError(f"pcrs must hold 1 to 32 entries, got {len(value)}")
    pcrs: dict[int, bytes] = {}
    for index, pcr in value.items():
        if type(index) is not int or not 0 <= index < MAX_PCRS:
            raise MalformedDocumentError(f"PCR index must be an integer 0..31, got {_shown(index)}")
        if not isinstance(pcr, bytes) or len(pcr) not in PCR_LENGTHS:
            raise MalformedDocumentError(
                f"PCR{index} must be a byte string of 32, 48 or 64 bytes, got {_shown(pcr)}"
            )
        pcrs[index] = pcr
    return pcrs


def _cabundle(value: object) -> tuple[bytes, ...]:
    if not isinstance(value, list) or not value:
        raise MalformedDocumentError(
            f"cabundle must be a non-empty array of certificates, got {_shown(value)}"
        )
    return tuple(
        _bytes(f"cabundle[{position}]", cert, 1, MAX_CERTIFICATE_BYTES)
        for position, cert in enumerate(value)
    )


def _optional(name: str, value: object, minimum: int, maximum: int) -> bytes | None:
    return None if value is None else _bytes(name, value, minimum, maximum)


def _bytes(name: str, value: object, minimum: int, maximum: int) -> bytes:
    if not isinstance(value, bytes):
        raise MalformedDocumentError(f"{name} must be a byte string, got {_shown(value)}")
    if not minimum <= len(value) <= maximum:
        raise MalformedDocumentError(
            f"{name} is {len(value)} bytes; it must be {minimum}..{maximum} bytes"
        )
    return value


def _shown(value: object) -> str:
    """A short description of a bad value for an error message."""
    if isinstance(value, (bytes, str, list, dict)):
        return f"{type(value).__name__} of length {len(value)}"
    text = repr(value)
    return f"{type(value).__name__} {text[:40]}{'...' if len(text) > 40 else ''}"
