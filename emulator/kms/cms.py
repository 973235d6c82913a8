"""CMS EnvelopedData as AWS KMS returns it in ``CiphertextForRecipient``.

nitro-facts §5 and the genuine sample in ``shared/vectors/`` (from aws-nitro-enclaves-sdk-c
``tests/kmstool-enclaves/cms_test.c``). RFC 5652 §3, §6 give the syntax; RFC 4055 §4.1 the
OAEP parameters. The value is BER::

    ContentInfo SEQUENCE (indefinite) {
      contentType id-envelopedData,
      content [0] (indefinite) EnvelopedData SEQUENCE (indefinite) {
        version 2,
        recipientInfos SET { KeyTransRecipientInfo SEQUENCE {
          version 2, rid [0] subjectKeyIdentifier (32 bytes),
          keyEncryptionAlgorithm id-RSAES-OAEP {[0] sha256 NULL, [1] mgf1 {sha256 NULL}},
          encryptedKey OCTET STRING }},
        encryptedContentInfo SEQUENCE (indefinite) {
          contentType id-data, aes-256-cbc OCTET STRING(16) IV,
          [0] (indefinite) { OCTET STRING ciphertext } } } }

We build exactly that shape. Fidelity matters here: by our reading of the SDK's parser
(aws-nitro-enclaves-sdk-c ``source/cms.c``), it enters ContentInfo, its [0], EnvelopedData,
EncryptedContentInfo and a constructed [0] content by reading only their header, which works
only when their length is indefinite; a DER (definite-length) answer would make it fail. The
content is AES-256-CBC with PKCS#7 padding under a random 32-byte key, which is wrapped with
RSA-OAEP (SHA-256, MGF1-SHA-256, empty label) for the recipient. Our parser is more liberal
than the SDK in the encoding (BER or DER) and as strict in what it accepts inside.

Deviation: AWS does not document how it derives the 32-byte subjectKeyIdentifier. We use
SHA-256 over the recipient's SubjectPublicKeyInfo DER. The SDK ignores the rid.

The BER/DER reader and writer are hand-written and small. ``cryptography`` has no general
ASN.1 API, its ``pkcs7`` module cannot read this (in 50.0: DER only, rid issuerAndSerialNumber
only, RSA PKCS#1 v1.5 key transport only), and the structure is fixed.
Adding an ASN.1 dependency for one structure would cost more than this module.

Errors::

    EmulatorError, ValueError
     +-- CmsError              malformed input, or something the AWS SDK would refuse
          +-- CmsDecryptionError   well-formed, but the key or the ciphertext does not fit
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import NamedTuple

from cryptography.hazmat.primitives import hashes, padding, serialization
from cryptography.hazmat.primitives.asymmetric import padding as asym_padding
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from emulator.errors import EmulatorError

__all__ = [
    "CEK_SIZE",
    "ENVELOPED_DATA_VERSION",
    "ID_AES256_CBC",
    "ID_DATA",
    "ID_ENVELOPED_DATA",
    "ID_MGF1",
    "ID_P_SPECIFIED",
    "ID_RSAES_OAEP",
    "ID_SHA1",
    "ID_SHA256",
    "IV_SIZE",
    "RECIPIENT_VERSION",
    "CmsDecryptionError",
    "CmsError",
    "EnvelopedData",
    "build_enveloped_data",
    "decrypt_enveloped_data",
    "parse_enveloped_data",
    "subject_key_identifier",
]

# Object identifiers (RFC 5652 §14, RFC 4055 §2.1/§4.1, NIST CSOR for AES).
ID_ENVELOPED_DATA = "1.2.840.113549.1.7.3"
ID_DATA = "1.2.840.113549.1.7.1"
ID_RSAES_OAEP = "1.2.840.113549.1.1.7"
ID_MGF1 = "1.2.840.113549.1.1.8"
ID_P_SPECIFIED = "1.2.840.113549.1.1.9"
ID_SHA1 = "1.3.14.3.2.26"
ID_SHA256 = "2.16.840.1.101.3.4.2.1"
ID_AES256_CBC = "2.16.840.1.101.3.4.1.42"
_OID_NAMES = {
    ID_ENVELOPED_DATA: "id-envelopedData",
    ID_DATA: "id-data",
    ID_RSAES_OAEP: "id-RSAES-OAEP",
    ID_MGF1: "id-mgf1",
    ID_SHA1: "sha1",
    ID_SHA256: "sha256",
    ID_AES256_CBC: "aes-256-cbc",
    "1.2.840.113549.1.1.1": "rsaEncryption",
    "2.16.840.1.101.3.4.1.2": "aes-128-cbc",
    "1.2.840.113549.1.7.2": "id-signedData",
}

#: The versions the SDK insists on (``source/cms.c``: ENVELOPED_DATA_VERSION, ..._RECIPIENT_VERSION).
ENVELOPED_DATA_VERSION = 2
RECIPIENT_VERSION = 2
CEK_SIZE = 32  # AES-256
IV_SIZE = 16  # the AES block

# Identifier octets (X.690 §8.1.2): universal tags, then context-specific [n].
_INTEGER, _OCTETS, _NULL, _OID = 0x02, 0x04, 0x05, 0x06
_SEQUENCE, _SET, _CONSTRUCTED = 0x30, 0x31, 0x20
_CTX0, _CTX1, _CTX2 = 0x80, 0x81, 0x82
_MAX_DEPTH = 24  # our structure nests 11 deep; bounds recursion on hostile input
_MAX_LENGTH_OCTETS = 4  # a 4 GiB element is more than any KMS answer


class CmsError(EmulatorError, ValueError):
    """The input is not a CMS EnvelopedData that KMS would send and the AWS SDK would accept."""


class CmsDecryptionError(CmsError):
    """The structure is fine, but the private key does not unwrap it or the content is corrupt."""


@dataclass(frozen=True)
class EnvelopedData:
    """The fields of a parsed EnvelopedData; OIDs are dotted strings.

    The ``oaep_*`` fields are None unless the key-encryption algorithm is id-RSAES-OAEP.
    Absent OAEP parameters take RFC 4055's defaults (SHA-1, MGF1-SHA-1, empty label).
    """

    version: int
    recipient_version: int
    subject_key_identifier: bytes
    key_encryption_algorithm: str
    oaep_hash_algorithm: str | None
    oaep_mgf_algorithm: str | None
    oaep_mgf_hash_algorithm: str | None
    oaep_label: bytes | None
    encrypted_key: bytes
    content_type: str
    content_encryption_algorithm: str
    iv: bytes
    encrypted_content: bytes


def subject_key_identifier(public_key: rsa.RSAPublicKey) -> bytes:
    """Our rid for a recipient: SHA-256 of its SubjectPublicKeyInfo DER (AWS's rule is unknown)."""
    spki = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(spki).digest()


def build_enveloped_data(
    plaintext: bytes, recipient_public_key: rsa.RSAPublicKey, *, chunk_size: int | None = None
) -> bytes:
    """Encrypts ``plaintext`` for the key's holder, shaped like KMS's CiphertextForRecipient.

    Args:
        plaintext: the bytes to protect (KMS puts a data key, random bytes or a private key here).
        recipient_public_key: the RSA key from the attestation document's ``public_key``.
        chunk_size: split the ciphertext into OCTET STRINGs of this size (BER allows it); by
            default one OCTET STRING, as in the genuine sample.

    Returns:
        The BER encoding, with indefinite lengths where KMS uses them.
    """
    if not isinstance(recipient_public_key, rsa.RSAPublicKey):
        raise TypeError("recipient_public_key must be an RSA public key (KMS accepts RSA only)")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError("chunk_size must be positive")
    cek, iv = os.urandom(CEK_SIZE), os.urandom(IV_SIZE)
    padder = padding.PKCS7(128).padder()
    padded = padder.update(plaintext) + padder.finalize()
    encryptor = Cipher(algorithms.AES(cek), modes.CBC(iv)).encryptor()
    ciphertext = encryptor.update(padded) + encryptor.finalize()
    encrypted_key = recipient_public_key.encrypt(cek, _oaep_sha256())

    sha256 = _tlv(_SEQUENCE, _oid_value(ID_SHA256), _tlv(_NULL))
    # RFC 4055 §4.1 RSAES-OAEP-params; pSourceFunc [2] is left at its default (empty label).
    oaep_params = _tlv(
        _SEQUENCE,
        _tlv(_CONSTRUCTED | _CTX0, sha256),
        _tlv(_CONSTRUCTED | _CTX1, _tlv(_SEQUENCE, _oid_value(ID_MGF1), sha256)),
    )
    recipient = _tlv(  # RFC 5652 §6.2.1 KeyTransRecipientInfo
        _SEQUENCE,
        _integer(RECIPIENT_VERSION),
        _tlv(_CTX0, subject_key_identifier(recipient_public_key)),
        _tlv(_SEQUENCE, _oid_value(ID_RSAES_OAEP), oaep_params),
        _tlv(_OCTETS, encrypted_key),
    )
    step = chunk_size or len(ciphertext)
    chunks = [_tlv(_OCTETS, ciphertext[i : i + step]) for i in range(0, len(ciphertext), step)]
    return _indefinite(  # RFC 5652 §3 ContentInfo
        _SEQUENCE,
        _oid_value(ID_ENVELOPED_DATA),
        _indefinite(
            _CONSTRUCTED | _CTX0,
            _indefinite(
                _SEQUENCE,
                _integer(ENVELOPED_DATA_VERSION),
                _tlv(_SET, recipient),
                _indefinite(  # RFC 5652 §6.1 EncryptedContentInfo
                    _SEQUENCE,
                    _oid_value(ID_DATA),
                    _tlv(_SEQUENCE, _oid_value(ID_AES256_CBC), _tlv(_OCTETS, iv)),
                    _indefinite(_CONSTRUCTED | _CTX0, *chunks),
                ),
            ),
        ),
    )


def parse_enveloped_data(data: bytes) -> EnvelopedData:
    """Reads a ContentInfo holding an EnvelopedData, in BER or DER.

    Refuses, like aws-nitro-enclaves-sdk-c ``source/cms.c``, any version other than 2, a
    recipient version other than 2, a content type other than id-data and a cipher other than
    aes-256-cbc. Also refuses what the SDK cannot handle: originatorInfo, more than one
    recipient, an rid that is not a subjectKeyIdentifier, an IV that is not 16 bytes, and
    absent (detached) content. Trailing bytes after the ContentInfo are refused too.

    Raises:
        CmsError: naming the first field that is wrong.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise CmsError(f"expected bytes, got {type(data).__name__}")
    data = bytes(data)
    content_info, end = _read_one(data, 0, len(data), 0, "ContentInfo")
    if end != len(data):
        raise CmsError(f"{len(data) - end} trailing bytes after the ContentInfo")
    if content_info.tag != _SEQUENCE:
        raise CmsError(f"ContentInfo: expected SEQUENCE, found {_tag_name(content_info.tag)}")
    # RFC 5652 §3: ContentInfo ::= SEQUENCE { contentType, content [0] EXPLICIT ANY }
    ci = _Fields(content_info, "ContentInfo")
    _expect_oid(ci.take("ContentInfo.contentType", _OID), ID_ENVELOPED_DATA, "ContentInfo.contentType")
    explicit = _Fields(ci.take("ContentInfo.content", _CONSTRUCTED | _CTX0), "ContentInfo.content")
    ci.finish()
    ed = _Fields(explicit.take("EnvelopedData", _SEQUENCE), "EnvelopedData")
    explicit.finish()

    # RFC 5652 §6.1 EnvelopedData; the SDK demands version 2 (ENVELOPED_DATA_VERSION).
    version = _integer_value(ed.take("EnvelopedData.version", _INTEGER), "EnvelopedData.version")
    if version != ENVELOPED_DATA_VERSION:
        raise CmsError(
            f"EnvelopedData.version is {version}; KMS sends {ENVELOPED_DATA_VERSION} and the AWS "
            "SDK accepts nothing else (aws-nitro-enclaves-sdk-c source/cms.c)"
        )
    if ed.peek() == _CONSTRUCTED | _CTX0:
        # The SDK expects the recipientInfos SET right after the version.
        raise CmsError("EnvelopedData.originatorInfo is present; KMS omits it, the AWS SDK refuses it")
    infos = _Fields(ed.take("EnvelopedData.recipientInfos", _SET), "EnvelopedData.recipientInfos")
    recipient = _key_trans_recipient(infos.take("KeyTransRecipientInfo", _SEQUENCE))
    if infos.peek() is not None:
        raise CmsError("EnvelopedData.recipientInfos holds more than one RecipientInfo; KMS sends one")
    content = _encrypted_content_info(ed.take("EnvelopedData.encryptedContentInfo", _SEQUENCE))
    if ed.peek() == _CONSTRUCTED | _CTX1:
        ed.take("EnvelopedData.unprotectedAttrs", _CONSTRUCTED | _CTX1)  # allowed, not used
    ed.finish()
    return EnvelopedData(version=version, **recipient._asdict(), **content._asdict())


class _Recipient(NamedTuple):
    recipient_version: int
    subject_key_identifier: bytes
    key_encryption_algorithm: str
    oaep_hash_algorithm: str | None
    oaep_mgf_algorithm: str | None
    oaep_mgf_hash_algorithm: str | None
    oaep_label: bytes | None
    encrypted_key: bytes


class _Content(NamedTuple):
    content_type: str
    content_encryption_algorithm: str
    iv: bytes
    encrypted_content: bytes


def _key_trans_recipient(tlv: _Tlv) -> _Recipient:
    """RFC 5652 §6.2.1 KeyTransRecipientInfo: the SDK demands version 2 (rid = [0] SKI)."""
    ktri = _Fields(tlv, "KeyTransRecipientInfo")
    what = "KeyTransRecipientInfo.version"
    recipient_version = _integer_value(ktri.take(what, _INTEGER), what)
    if recipient_version != RECIPIENT_VERSION:
        raise CmsError(
            f"{what} is {recipient_version}; the AWS SDK accepts only {RECIPIENT_VERSION}, "
            "i.e. an rid that is a subjectKeyIdentifier (RFC 5652 §6.2.1)"
        )
    what = "KeyTransRecipientInfo.rid [0] subjectKeyIdentifier"
    ski = _octets(ktri.take(what, _CTX0, _CONSTRUCTED | _CTX0), what)
    what = "KeyTransRecipientInfo.keyEncryptionAlgorithm"
    algorithm = _Fields(ktri.take(what, _SEQUENCE), what)
    oid = _oid_of(algorithm.take(f"{what}.algorithm", _OID), what)
    hash_oid = mgf_oid = mgf_hash = None
    label = None
    if oid == ID_RSAES_OAEP:
        hash_oid, mgf_oid, mgf_hash, label = _oaep_params(algorithm)
    what = "KeyTransRecipientInfo.encryptedKey"
    encrypted_key = _octets(ktri.take(what, _OCTETS, _CONSTRUCTED | _OCTETS), what)
    ktri.finish()
    return _Recipient(recipient_version, ski, oid, hash_oid, mgf_oid, mgf_hash, label, encrypted_key)


def _encrypted_content_info(tlv: _Tlv) -> _Content:
    """RFC 5652 §6.1 EncryptedContentInfo: the SDK demands id-data and aes-256-cbc."""
    eci = _Fields(tlv, "EncryptedContentInfo")
    what = "EncryptedContentInfo.contentType"
    content_type = _expect_oid(eci.take(what, _OID), ID_DATA, what)
    what = "EncryptedContentInfo.contentEncryptionAlgorithm"
    algorithm = _Fields(eci.take(what, _SEQUENCE), what)
    cipher = _expect_oid(algorithm.take(f"{what}.algorithm", _OID), ID_AES256_CBC, what)
    iv = _octets(algorithm.take("aes-256-cbc IV", _OCTETS, _CONSTRUCTED | _OCTETS), "aes-256-cbc IV")
    algorithm.finish()
    if len(iv) != IV_SIZE:  # the SDK hands the IV to EVP_DecryptInit_ex, which reads 16 bytes
        raise CmsError(f"the aes-256-cbc IV is {len(iv)} bytes; it must be {IV_SIZE}")
    if eci.peek() is None:
        raise CmsError("EncryptedContentInfo.encryptedContent is absent (detached): not supported")
    # [0] IMPLICIT OCTET STRING: primitive, or constructed from segments (the SDK reads both).
    what = "EncryptedContentInfo.encryptedContent [0]"
    encrypted_content = _octets(eci.take(what, _CTX0, _CONSTRUCTED | _CTX0), what)
    eci.finish()
    return _Content(content_type, cipher, iv, encrypted_content)


def decrypt_enveloped_data(data: bytes, private_key: rsa.RSAPrivateKey) -> bytes:
    """Recovers the plaintext, as the SDK's ``aws_kms_decrypt_blob`` path does (``source/kms.c``).

    Raises:
        CmsError: the input is malformed or uses other algorithms than RSA-OAEP-SHA-256.
        CmsDecryptionError: the key does not unwrap the CEK, or the content is corrupt.
    """
    if not isinstance(private_key, rsa.RSAPrivateKey):
        raise TypeError("private_key must be an RSA private key")
    env = parse_enveloped_data(data)
    # KMS's only KeyEncryptionAlgorithm is RSAES_OAEP_SHA_256 (nitro-facts §5).
    wanted = (ID_RSAES_OAEP, ID_SHA256, ID_MGF1, ID_SHA256)
    found = (env.key_encryption_algorithm, env.oaep_hash_algorithm, env.oaep_mgf_algorithm,
             env.oaep_mgf_hash_algorithm)
    if found != wanted:
        names = ", ".join(_name(oid) if oid else "-" for oid in found)
        raise CmsError(
            f"keyEncryptionAlgorithm is ({names}); only RSAES-OAEP with SHA-256 and MGF1-SHA-256 "
            "(KMS's RSAES_OAEP_SHA_256) is supported"
        )
    try:
        cek = private_key.decrypt(env.encrypted_key, _oaep_sha256(env.oaep_label))
    except ValueError as error:
        raise CmsDecryptionError(
            "RSA-OAEP could not unwrap encryptedKey: the private key is not the recipient's, "
            "or encryptedKey is corrupt"
        ) from error
    if len(cek) != CEK_SIZE:
        raise CmsDecryptionError(f"the unwrapped key is {len(cek)} bytes; aes-256-cbc needs {CEK_SIZE}")
    content = env.encrypted_content
    if not content or len(content) % IV_SIZE:
        raise CmsDecryptionError(
            f"encryptedContent is {len(content)} bytes, not a positive multiple of the AES block (16)"
        )
    decryptor = Cipher(algorithms.AES(cek), modes.CBC(env.iv)).decryptor()
    padded = decryptor.update(content) + decryptor.finalize()
    unpadder = padding.PKCS7(128).unpadder()
    try:
        return unpadder.update(padded) + unpadder.finalize()
    except ValueError as error:
        raise CmsDecryptionError("the decrypted content has bad PKCS#7 padding: altered?") from error


def _oaep_sha256(label: bytes | None = None) -> asym_padding.OAEP:
    """RSAES-OAEP with SHA-256 and MGF1-SHA-256; KMS uses the empty label."""
    mgf = asym_padding.MGF1(hashes.SHA256())
    return asym_padding.OAEP(mgf=mgf, algorithm=hashes.SHA256(), label=label or None)


def _oaep_params(fields: _Fields) -> tuple[str, str, str, bytes]:
    """RFC 4055 §4.1 RSAES-OAEP-params -> (hash, mgf, mgf hash, label), defaults filled in."""
    hash_oid, mgf_oid, mgf_hash, label = ID_SHA1, ID_MGF1, ID_SHA1, b""
    if fields.peek() is not None:  # params may be absent: all defaults
        params = _Fields(fields.take("RSAES-OAEP-params", _SEQUENCE), "RSAES-OAEP-params")
        if params.peek() == _CONSTRUCTED | _CTX0:
            hash_oid = _hash_algorithm(params.take("hashFunc", _CONSTRUCTED | _CTX0), "hashFunc")
        if params.peek() == _CONSTRUCTED | _CTX1:
            mgf = _explicit_algorithm(params.take("maskGenFunc", _CONSTRUCTED | _CTX1), "maskGenFunc")
            mgf_oid = _oid_of(mgf.take("maskGenFunc.algorithm", _OID), "maskGenFunc.algorithm")
            mgf_hash = _algorithm_oid(mgf.take("maskGenFunc.parameters", _SEQUENCE), "MGF1 hash")
            mgf.finish()
        if params.peek() == _CONSTRUCTED | _CTX2:
            source = _explicit_algorithm(params.take("pSourceFunc", _CONSTRUCTED | _CTX2), "pSourceFunc")
            _expect_oid(source.take("pSourceFunc.algorithm", _OID), ID_P_SPECIFIED, "pSourceFunc")
            label = _octets(source.take("pSourceFunc label", _OCTETS), "pSourceFunc label")
            source.finish()
        params.finish()
    fields.finish()
    return hash_oid, mgf_oid, mgf_hash, label


def _explicit_algorithm(tlv: _Tlv, what: str) -> _Fields:
    """The fields of the AlgorithmIdentifier inside an EXPLICIT [n] tag."""
    outer = _Fields(tlv, what)
    inner = _Fields(outer.take(what, _SEQUENCE), what)
    outer.finish()
    return inner


def _hash_algorithm(tlv: _Tlv, what: str) -> str:
    outer = _Fields(tlv, what)
    oid = _algorithm_oid(outer.take(what, _SEQUENCE), what)
    outer.finish()
    return oid


def _algorithm_oid(tlv: _Tlv, what: str) -> str:
    """A hash AlgorithmIdentifier: OID, then NULL or nothing (RFC 4055 §2.1 accepts both)."""
    fields = _Fields(tlv, what)
    oid = _oid_of(fields.take(f"{what}.algorithm", _OID), what)
    if fields.peek() is not None and fields.take(f"{what}.parameters", _NULL).content:
        raise CmsError(f"{what}: NULL parameters must be empty")
    fields.finish()
    return oid


# --- BER reader (X.690 §8.1): single-octet tags, definite or indefinite lengths ---------------


@dataclass(frozen=True)
class _Tlv:
    """One element of ``buffer`` (the whole input): content is ``buffer[start:end]``.

    For an indefinite length the content is the children's encodings, without the 00 00.
    """

    tag: int
    offset: int  # of the identifier octet, for error messages
    start: int
    end: int
    buffer: bytes = field(repr=False)

    @property
    def content(self) -> bytes:
        return self.buffer[self.start : self.end]


class _Fields:
    """The children of a constructed element, taken in order with a name for each error."""

    def __init__(self, tlv: _Tlv, what: str) -> None:
        if not tlv.tag & _CONSTRUCTED:
            raise CmsError(f"{what} at offset {tlv.offset} must be constructed")
        self._items = _read_all(tlv, 0, what)
        self._what = what
        self._end = tlv.end

    def peek(self) -> int | None:
        return self._items[0].tag if self._items else None

    def take(self, what: str, *tags: int) -> _Tlv:
        if not self._items:
            raise CmsError(f"{what} is missing at offset {self._end} (truncated {self._what}?)")
        item = self._items.pop(0)
        if item.tag not in tags:
            found = _tag_name(item.tag)
            raise CmsError(f"{what}: expected {_tag_name(tags[0])}, found {found} at offset {item.offset}")
        return item

    def finish(self) -> None:
        if self._items:
            extra = self._items[0]
            raise CmsError(
                f"unexpected {_tag_name(extra.tag)} at offset {extra.offset} after the fields of {self._what}"
            )


def _read_all(parent: _Tlv, depth: int, what: str) -> list[_Tlv]:
    """The elements that make up ``parent``'s content."""
    items: list[_Tlv] = []
    pos = parent.start
    while pos < parent.end:
        item, pos = _read_one(parent.buffer, pos, parent.end, depth, what)
        items.append(item)
    return items


def _read_one(data: bytes, pos: int, end: int, depth: int, what: str) -> tuple[_Tlv, int]:
    """Reads the element at ``pos`` that must end by ``end``; returns it and the offset after it."""
    offset = pos
    if depth > _MAX_DEPTH:
        raise CmsError(f"{what}: elements nest more than {_MAX_DEPTH} deep (offset {offset})")
    if pos + 2 > end:
        raise CmsError(f"{what}: truncated element header at offset {offset}")
    tag, first = data[pos], data[pos + 1]
    pos += 2
    if tag == 0x00:
        raise CmsError(f"{what}: unexpected end-of-contents octets at offset {offset}")
    if tag & 0x1F == 0x1F:
        raise CmsError(f"{what}: high tag number form at offset {offset} does not occur in this structure")
    if first == 0x80:  # indefinite (X.690 §8.1.3.6): children until 00 00
        if not tag & _CONSTRUCTED:
            raise CmsError(f"{what}: a primitive element at offset {offset} has an indefinite length")
        start = pos
        while not (pos + 2 <= end and data[pos : pos + 2] == b"\x00\x00"):
            _, pos = _read_one(data, pos, end, depth + 1, what)
        return _Tlv(tag, offset, start, pos, data), pos + 2
    length = first
    if first & 0x80:
        count = first & 0x7F
        if count > _MAX_LENGTH_OCTETS:
            raise CmsError(f"{what}: a length of {count} octets at offset {offset} is not supported")
        if pos + count > end:
            raise CmsError(f"{what}: truncated length at offset {offset}")
        length = int.from_bytes(data[pos : pos + count], "big")
        pos += count
    if pos + length > end:
        left = end - pos
        raise CmsError(f"{what}: the element at offset {offset} claims {length} bytes, {left} remain")
    return _Tlv(tag, offset, pos, pos + length, data), pos + length


def _octets(tlv: _Tlv, what: str, depth: int = 0) -> bytes:
    """An OCTET STRING's value; BER may split it into constructed segments (X.690 §8.7.3)."""
    if not tlv.tag & _CONSTRUCTED:
        return tlv.content
    if depth > _MAX_DEPTH:
        raise CmsError(f"{what}: OCTET STRING segments nest more than {_MAX_DEPTH} deep")
    parts: list[bytes] = []
    for part in _read_all(tlv, depth, what):
        if part.tag not in (_OCTETS, _CONSTRUCTED | _OCTETS):
            found = _tag_name(part.tag)
            raise CmsError(f"{what}: the segment at offset {part.offset} is {found}, not an OCTET STRING")
        parts.append(_octets(part, what, depth + 1))
    return b"".join(parts)


def _integer_value(tlv: _Tlv, what: str) -> int:
    if not tlv.content:
        raise CmsError(f"{what}: an INTEGER has no content octets")
    return int.from_bytes(tlv.content, "big", signed=True)


def _oid_of(tlv: _Tlv, what: str) -> str:
    """Decodes an OBJECT IDENTIFIER (X.690 §8.19) to dotted form."""
    body = tlv.content
    if not body or body[-1] & 0x80:
        raise CmsError(f"{what}: malformed OBJECT IDENTIFIER")
    arcs: list[int] = []
    value, fresh = 0, True
    for octet in body:
        if fresh and octet == 0x80:
            raise CmsError(f"{what}: OBJECT IDENTIFIER has a padded arc")
        value = value << 7 | octet & 0x7F
        fresh = not octet & 0x80
        if fresh:
            arcs.append(value)
            value = 0
    first = min(arcs[0] // 40, 2)
    return ".".join(str(arc) for arc in [first, arcs[0] - 40 * first, *arcs[1:]])


def _expect_oid(tlv: _Tlv, wanted: str, what: str) -> str:
    oid = _oid_of(tlv, what)
    if oid != wanted:
        raise CmsError(f"{what} is {_name(oid)}; KMS sends and the AWS SDK requires {_name(wanted)}")
    return oid


def _name(oid: str) -> str:
    return f"{_OID_NAMES[oid]} ({oid})" if oid in _OID_NAMES else oid


_TAG_NAMES = {
    _INTEGER: "INTEGER",
    _OCTETS: "OCTET STRING",
    _NULL: "NULL",
    _OID: "OBJECT IDENTIFIER",
    _SEQUENCE: "SEQUENCE",
    _SET: "SET",
    _CONSTRUCTED | _OCTETS: "constructed OCTET STRING",
}


def _tag_name(tag: int) -> str:
    if tag in _TAG_NAMES:
        return _TAG_NAMES[tag]
    if tag & 0xC0 == 0x80:
        return f"[{tag & 0x1F}] {'constructed' if tag & _CONSTRUCTED else 'primitive'}"
    return f"tag 0x{tag:02x}"


# --- DER/BER writer ---------------------------------------------------------------------------


def _tlv(tag: int, *parts: bytes) -> bytes:
    """A definite-length element with minimal (DER) length octets."""
    body = b"".join(parts)
    size = len(body)
    if size < 0x80:
        return bytes([tag, size]) + body
    octets = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(octets)]) + octets + body


def _indefinite(tag: int, *parts: bytes) -> bytes:
    """A constructed element with indefinite length, closed by end-of-contents (X.690 §8.1.5)."""
    return bytes([tag, 0x80]) + b"".join(parts) + b"\x00\x00"


def _integer(value: int) -> bytes:
    return _tlv(_INTEGER, value.to_bytes(value.bit_length() // 8 + 1, "big", signed=True))


def _oid_value(dotted: str) -> bytes:
    first, second, *rest = (int(arc) for arc in dotted.split("."))
    body = bytearray()
    for arc in [40 * first + second, *rest]:
        chunk = [arc & 0x7F]
        while arc > 0x7F:
            arc >>= 7
            chunk.append(0x80 | arc & 0x7F)
        body += bytes(reversed(chunk))
    return _tlv(_OID, bytes(body))
