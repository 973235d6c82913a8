"""The confidential service's wire protocol and sealing scheme (shared by enclave and client).

Runs inside the enclave, so it imports only the standard library, ``cbor2`` and
``cryptography`` (Debian's ``python3-cryptography`` in the enclave image).

Wire: every message is a 4-byte big-endian length and a CBOR map with a ``type`` key.

    client -> enclave   {"type": "attest", "nonce": <32 random bytes>}
    enclave -> client   {"type": "attestation", "document": <COSE_Sign1 bytes>}
                        (the document's ``public_key`` is the enclave's X25519 key, DER
                        SubjectPublicKeyInfo, and its ``nonce`` is the client's)
    client -> enclave   {"type": "sealed", "ephemeral_key": <32 bytes>, "iv": <12>,
                         "ciphertext": <AES-256-GCM of a CBOR request>}
    enclave -> client   {"type": "sealed-reply", "iv": <12>, "ciphertext": <...>}
    either way          {"type": "error", "message": <text>}

Sealing is ECIES built from standard parts, nothing home-made: X25519 key agreement between
the client's ephemeral key and the enclave's boot key, HKDF-SHA256 over the shared secret
bound to both public keys, AES-256-GCM with a fresh 96-bit IV per message and the direction
as associated data. Only the enclave that holds the attested private key can open a request,
and only the client that sent it can open the reply.
"""

from __future__ import annotations

import os
import socket
import struct
from dataclasses import dataclass
from typing import Any

import cbor2
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

DEFAULT_PORT = 5005
MAX_MESSAGE = 1 << 20
NONCE_SIZE = 32
_INFO = b"nitro-emu/confidential-service/v1"
REQUEST_AAD = b"request"
REPLY_AAD = b"reply"


class ProtocolError(Exception):
    """The peer sent something this protocol does not allow (or closed too early)."""


def send_message(sock: socket.socket, message: dict[str, Any]) -> None:
    """Send one length-prefixed CBOR message."""
    body = cbor2.dumps(message)
    sock.sendall(struct.pack(">I", len(body)) + body)


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            raise ProtocolError(f"connection closed after {len(chunks)} of {size} bytes")
        chunks += chunk
    return bytes(chunks)


def recv_message(sock: socket.socket) -> dict[str, Any]:
    """Receive one message; raise ProtocolError when it is not a CBOR map with a type."""
    (size,) = struct.unpack(">I", _recv_exact(sock, 4))
    if size > MAX_MESSAGE:
        raise ProtocolError(f"message of {size} bytes exceeds the {MAX_MESSAGE}-byte limit")
    try:
        message = cbor2.loads(_recv_exact(sock, size))
    except (cbor2.CBORDecodeError, ValueError) as error:
        raise ProtocolError(f"message is not valid CBOR: {error}") from error
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise ProtocolError("message is not a CBOR map with a text 'type'")
    if message["type"] == "error":
        raise ProtocolError(f"peer reported an error: {message.get('message')}")
    return message


def expect(message: dict[str, Any], kind: str, *fields: str) -> dict[str, Any]:
    """Check the message's type and that each field is present as bytes."""
    if message["type"] != kind:
        raise ProtocolError(f"expected a {kind!r} message, got {message['type']!r}")
    for field in fields:
        if not isinstance(message.get(field), bytes):
            raise ProtocolError(f"{kind!r} message lacks the byte string field {field!r}")
    return message


def public_key_der(key: X25519PublicKey) -> bytes:
    """The key as DER SubjectPublicKeyInfo (what goes into the document's ``public_key``)."""
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_public_key(der: bytes) -> X25519PublicKey:
    """Parse an attested ``public_key``; raise ProtocolError when it is not an X25519 key."""
    try:
        key = serialization.load_der_public_key(der)
    except ValueError as error:
        raise ProtocolError(f"public_key is not a DER SubjectPublicKeyInfo: {error}") from error
    if not isinstance(key, X25519PublicKey):
        raise ProtocolError(f"public_key is a {type(key).__name__}, not an X25519 key")
    return key


def _raw(key: X25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


@dataclass(frozen=True)
class SessionKey:
    """An AES-256-GCM key shared by one client request and its reply."""

    key: bytes

    @classmethod
    def derive(
        cls, private: X25519PrivateKey, peer: X25519PublicKey, *, client: X25519PublicKey, enclave: X25519PublicKey
    ) -> SessionKey:
        shared = private.exchange(peer)
        hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO + _raw(client) + _raw(enclave))
        return cls(hkdf.derive(shared))

    def seal(self, plaintext: bytes, aad: bytes) -> tuple[bytes, bytes]:
        """Encrypt; return (iv, ciphertext with tag)."""
        iv = os.urandom(12)
        return iv, AESGCM(self.key).encrypt(iv, plaintext, aad)

    def open(self, iv: bytes, ciphertext: bytes, aad: bytes) -> bytes:
        """Decrypt and authenticate; raise ProtocolError when the message was tampered with."""
        try:
            return AESGCM(self.key).decrypt(iv, ciphertext, aad)
        except Exception as error:  # cryptography's InvalidTag (and bad IV sizes)
            raise ProtocolError("sealed message failed authentication (wrong key or tampered)") from error


def seal_request(enclave_key: X25519PublicKey, request: dict[str, Any]) -> tuple[dict[str, Any], SessionKey]:
    """Encrypt a request to the enclave's attested key; return the message and session key."""
    ephemeral = X25519PrivateKey.generate()
    session = SessionKey.derive(ephemeral, enclave_key, client=ephemeral.public_key(), enclave=enclave_key)
    iv, ciphertext = session.seal(cbor2.dumps(request), REQUEST_AAD)
    message = {"type": "sealed", "ephemeral_key": _raw(ephemeral.public_key()), "iv": iv, "ciphertext": ciphertext}
    return message, session


def open_request(private: X25519PrivateKey, message: dict[str, Any]) -> tuple[Any, SessionKey]:
    """Decrypt a sealed request with the enclave's private key."""
    expect(message, "sealed", "ephemeral_key", "iv", "ciphertext")
    try:
        client = X25519PublicKey.from_public_bytes(message["ephemeral_key"])
    except ValueError as error:
        raise ProtocolError(f"ephemeral_key is not a raw X25519 key: {error}") from error
    session = SessionKey.derive(private, client, client=client, enclave=private.public_key())
    plaintext = session.open(message["iv"], message["ciphertext"], REQUEST_AAD)
    try:
        return cbor2.loads(plaintext), session
    except (cbor2.CBORDecodeError, ValueError) as error:
        raise ProtocolError(f"sealed request is not CBOR: {error}") from error
