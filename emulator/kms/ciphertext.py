"""Symmetric ciphertext blobs: opaque, authenticated, bound to their key and context.

Layout (this emulator's own; AWS's format is not public)::

    version (1 byte, 0x01) | key id (16 bytes, the UUID) | nonce (12) | AES-256-GCM output

The AAD is a label, the 17 header bytes and a canonical encoding of the EncryptionContext,
so any change to the header, the context or the ciphertext fails authentication
(InvalidCiphertextException, as AWS answers; KMS Developer Guide "Encryption context":
decryption needs exactly the same context, key order does not matter).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from emulator.kms.errors import InvalidCiphertextException

__all__ = ["VERSION", "blob_key_id", "canonical_context", "open_blob", "seal"]

VERSION = 1
_HEADER = 17
_NONCE = 12
_TAG = 16
_LABEL = b"nitro-emu kms ciphertext v1\0"


def canonical_context(context: Mapping[str, str] | None) -> bytes:
    """An unambiguous encoding of the context: pairs sorted by key, each length-prefixed."""
    parts = []
    for key, value in sorted((context or {}).items(), key=lambda item: item[0].encode()):
        for text in (key, value):
            data = text.encode("utf-8")
            parts.append(len(data).to_bytes(4, "big") + data)
    return b"".join(parts)


def seal(key_id: str, secret: bytes, plaintext: bytes, context: Mapping[str, str] | None) -> bytes:
    """The blob of ``plaintext`` under the key's 256-bit ``secret``."""
    header = bytes([VERSION]) + uuid.UUID(key_id).bytes
    nonce = os.urandom(_NONCE)
    sealed = AESGCM(secret).encrypt(nonce, plaintext, _LABEL + header + canonical_context(context))
    return header + nonce + sealed


def blob_key_id(blob: bytes) -> str:
    """The key id a blob claims (unauthenticated until :func:`open_blob` succeeds).

    Raises:
        InvalidCiphertextException: too short, or an unknown version.
    """
    if len(blob) < _HEADER + _NONCE + _TAG or blob[0] != VERSION:
        # AWS sends this error without a message (aws-nitro-enclaves-sdk-c issue #68).
        raise InvalidCiphertextException()
    return str(uuid.UUID(bytes=bytes(blob[1:_HEADER])))


def open_blob(blob: bytes, secret: bytes, context: Mapping[str, str] | None) -> bytes:
    """The plaintext of a blob sealed under ``secret`` with this exact context.

    Raises:
        InvalidCiphertextException: tampered, truncated, another key's, or another context.
    """
    blob_key_id(blob)
    header, nonce, sealed = blob[:_HEADER], blob[_HEADER : _HEADER + _NONCE], blob[_HEADER + _NONCE :]
    try:
        return AESGCM(secret).decrypt(nonce, sealed, _LABEL + header + canonical_context(context))
    except InvalidTag:
        raise InvalidCiphertextException() from None
