"""CMS EnvelopedData (``emulator.kms.cms``): the genuine KMS sample, round trips, independent
decryption by OpenSSL, the byte shape of our output against the sample, refusals and fuzz.

The genuine ``CiphertextForRecipient`` comes from aws-nitro-enclaves-sdk-c
``tests/kmstool-enclaves/cms_test.c`` (``input_ber``; see shared/vectors/README.md).
"""

from __future__ import annotations

import datetime
import hashlib
import os
import random
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import cryptography
import pytest
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from emulator.kms import cms
from emulator.kms.cms import CmsDecryptionError, CmsError

VECTOR_NAME = "aws-sdk-c-kms-ciphertext-for-recipient.ber"
VECTORS = Path(__file__).resolve().parents[3].parent / "shared" / "vectors"
OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

# cms_test.c ``input_ber_w_ctx``: the same shape, but encryptedContent is a primitive
# [0] IMPLICIT OCTET STRING (16 bytes) instead of a constructed one.
SDK_PRIMITIVE_CONTENT = bytes.fromhex(
    "308006092a864886f70d010703a08030800201023182016b3082016702010280204e61df69e443b8e25c8ae833"
    "18cfc72d9b6a5176d2167790fdf819c086e6967a303c06092a864886f70d010107302fa00f300d060960864801"
    "65030402010500a11c301a06092a864886f70d010108300d06096086480165030402010500048201004a1ca122"
    "02e4ce0b1f8b35cea0d5d905336caaa5d517eed65f6fd87a0e7b292912652941527a9a8b88f9e7c6b509740"
    "74b81a6d43751876e7ca595f55df86a4742861945e0b915e4b840b9e043921ebdef92d1588c727bba9cf9360ac"
    "f9663bc8ba7dab43f2b61a3f49172a0761800ad03606b5a7f595946c50ab23c7d0014629e70c2f6d410b4967a"
    "32e0b6da712ef83b1f095ad4df7b0d3a5847f9afbd75d729473a070f7979cc0c43a1d5bac77a8ed7b17dbc954e"
    "5d88100332bc0e02c283bf01b4c6b160b1150eadfc8d91d628f5f614af4f384d581fb5f607ab91f60ac3cf7773"
    "25a8fafe903eff1dd7e4260244e50664aab6244bc3e91951070a5dc5f8308006092a864886f70d010701301d06"
    "0960864801650304012a0410e66c1172aee0f2f7be34e3afc6b0e4fe80101f943eb0105c1b0644df4f71304"
    "48a280000000000000000"
)
# Where the variable values lie in the genuine sample (``openssl asn1parse`` offsets + header):
# rid, encryptedKey, IV, ciphertext. Everything else is structure and must match byte for byte.
VALUE_RANGES = ((33, 65), (131, 387), (415, 431), (435, 483))
# Offsets of single bytes in the genuine sample, for targeted tampering.
ENVELOPED_VERSION_AT, RECIPIENT_VERSION_AT = 19, 30
OUTER_TYPE_LAST_AT, OAEP_OID_LAST_AT, DATA_OID_LAST_AT, AES_OID_LAST_AT = 12, 77, 399, 412


def _missing(reason: str) -> None:
    """Skip with a loud reason on a laptop; fail under CI=true (as conftest's ``_missing``)."""
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: this must be present in CI)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def vector(aws_vectors: Path) -> bytes:
    path = aws_vectors / VECTOR_NAME
    assert path.parent == VECTORS
    if not path.is_file():
        _missing(f"the genuine KMS CMS sample is absent: {path}")
    return path.read_bytes()


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def other_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def openssl() -> str:
    if not Path(OPENSSL).is_file():
        _missing(f"openssl is not installed ({OPENSSL}): the independent decryption needs it")
    return OPENSSL


def _write_key(path: Path, key: rsa.RSAPrivateKey) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return path


def _certificate(key: rsa.RSAPrivateKey, ski: bytes) -> x509.Certificate:
    """A self-signed TEST certificate whose SubjectKeyIdentifier extension is ``ski``."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "TEST CMS recipient")])
    now = datetime.datetime.now(datetime.timezone.utc)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectKeyIdentifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )


def _openssl_decrypt(openssl: str, tmp_path: Path, blob: bytes, key: rsa.RSAPrivateKey,
                     *extra: str) -> subprocess.CompletedProcess[bytes]:
    """``openssl cms -decrypt``: with no ``-recip``, OpenSSL tries the key on every recipient."""
    (tmp_path / "ct.ber").write_bytes(blob)
    key_pem = _write_key(tmp_path / "key.pem", key)
    command = [openssl, "cms", "-decrypt", "-inform", "DER", "-in", str(tmp_path / "ct.ber"),
               "-inkey", str(key_pem), "-binary", "-out", str(tmp_path / "pt.bin"), *extra]
    return subprocess.run(command, capture_output=True, timeout=60, check=False)


def _masked(blob: bytes) -> bytes:
    out = bytearray(blob)
    for start, end in VALUE_RANGES:
        out[start:end] = bytes(end - start)
    return bytes(out)


def _patched(blob: bytes, offset: int, value: int) -> bytes:
    out = bytearray(blob)
    out[offset] = value
    return bytes(out)


# --- the genuine sample -----------------------------------------------------------------------


def test_genuine_vector_parses(vector: bytes) -> None:
    env = cms.parse_enveloped_data(vector)
    assert (env.version, env.recipient_version) == (2, 2)
    assert len(env.subject_key_identifier) == 32
    assert env.subject_key_identifier.hex().startswith("7087b55df94ba325")
    assert env.key_encryption_algorithm == cms.ID_RSAES_OAEP == "1.2.840.113549.1.1.7"
    assert env.oaep_hash_algorithm == cms.ID_SHA256 == "2.16.840.1.101.3.4.2.1"
    assert env.oaep_mgf_algorithm == cms.ID_MGF1 == "1.2.840.113549.1.1.8"
    assert env.oaep_mgf_hash_algorithm == cms.ID_SHA256
    assert env.oaep_label == b""
    assert len(env.encrypted_key) == 256
    assert env.encrypted_key.hex().startswith("a0614593a030ee33")
    assert env.content_type == cms.ID_DATA == "1.2.840.113549.1.7.1"
    assert env.content_encryption_algorithm == cms.ID_AES256_CBC == "2.16.840.1.101.3.4.1.42"
    assert env.iv.hex() == "688c6d5f7f31b0fecedf09f2e7c99ac9"
    assert len(env.encrypted_content) == 48
    assert env.encrypted_content.hex().startswith("70e5caaf")
    assert env.encrypted_content.hex().endswith("19292e")


def test_sdk_vector_with_primitive_content_parses() -> None:
    env = cms.parse_enveloped_data(SDK_PRIMITIVE_CONTENT)
    assert env.iv.hex() == "e66c1172aee0f2f7be34e3afc6b0e4fe"
    assert env.encrypted_content.hex() == "1f943eb0105c1b0644df4f7130448a28"
    assert len(env.encrypted_key) == 256 and env.encrypted_key.hex().startswith("4a1ca122")


def test_genuine_vector_cannot_be_decrypted_with_a_foreign_key(vector: bytes, key: rsa.RSAPrivateKey) -> None:
    with pytest.raises(CmsDecryptionError, match="not the recipient's"):
        cms.decrypt_enveloped_data(vector, key)


# --- our output -------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 15, 16, 32, 4096])
def test_round_trip(key: rsa.RSAPrivateKey, size: int) -> None:
    plaintext = os.urandom(size)
    blob = cms.build_enveloped_data(plaintext, key.public_key())
    env = cms.parse_enveloped_data(blob)
    assert len(env.encrypted_content) == (size // 16 + 1) * 16  # PKCS#7 always pads
    assert env.subject_key_identifier == cms.subject_key_identifier(key.public_key())
    assert cms.decrypt_enveloped_data(blob, key) == plaintext


@pytest.mark.parametrize("chunk_size", [1, 16, 1000])
def test_chunked_content_round_trips(key: rsa.RSAPrivateKey, chunk_size: int) -> None:
    plaintext = os.urandom(3000)
    blob = cms.build_enveloped_data(plaintext, key.public_key(), chunk_size=chunk_size)
    assert len(cms.parse_enveloped_data(blob).encrypted_content) == 3008
    assert cms.decrypt_enveloped_data(blob, key) == plaintext


def test_each_build_uses_a_fresh_key_and_iv(key: rsa.RSAPrivateKey) -> None:
    first, second = (cms.parse_enveloped_data(cms.build_enveloped_data(b"x", key.public_key())) for _ in "ab")
    assert first.iv != second.iv and first.encrypted_key != second.encrypted_key


def test_subject_key_identifier_is_sha256_of_the_spki(key: rsa.RSAPrivateKey) -> None:
    spki = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert cms.subject_key_identifier(key.public_key()) == hashlib.sha256(spki).digest()


def test_shape_matches_the_genuine_vector_byte_for_byte(vector: bytes, key: rsa.RSAPrivateKey) -> None:
    """32-byte plaintext (a data key) under RSA-2048: every header, OID, version and
    end-of-contents sits where KMS puts it; only the four values differ."""
    blob = cms.build_enveloped_data(os.urandom(32), key.public_key())
    assert len(blob) == len(vector) == 493
    assert _masked(blob) == _masked(vector)
    ours, theirs = cms.parse_enveloped_data(blob), cms.parse_enveloped_data(vector)
    for field in ("version", "recipient_version", "key_encryption_algorithm", "oaep_hash_algorithm",
                  "oaep_mgf_algorithm", "oaep_mgf_hash_algorithm", "oaep_label", "content_type",
                  "content_encryption_algorithm"):
        assert getattr(ours, field) == getattr(theirs, field), field
    for field in ("subject_key_identifier", "encrypted_key", "iv", "encrypted_content"):
        assert len(getattr(ours, field)) == len(getattr(theirs, field)), field


def test_openssl_sees_the_same_structure(vector: bytes, key: rsa.RSAPrivateKey, openssl: str,
                                         tmp_path: Path) -> None:
    """``openssl asn1parse`` of ours and of the sample agree line by line, values aside."""

    def outline(blob: bytes) -> str:
        path = tmp_path / "blob.ber"
        path.write_bytes(blob)
        done = subprocess.run([openssl, "asn1parse", "-inform", "DER", "-i", "-in", str(path)],
                              capture_output=True, text=True, timeout=60, check=True)
        return re.sub(r"\[HEX DUMP\]:[0-9A-F]+", "", done.stdout)

    ours = outline(cms.build_enveloped_data(os.urandom(40), key.public_key()))
    assert ours == outline(vector)
    assert ours.count("l=inf") == 5 and ours.count("EOC") == 5


# --- independent decryption -------------------------------------------------------------------


@pytest.mark.parametrize(("size", "chunk_size"), [(0, None), (32, None), (4096, None), (4096, 1000)])
def test_openssl_decrypts_our_output(key: rsa.RSAPrivateKey, openssl: str, tmp_path: Path,
                                     size: int, chunk_size: int | None) -> None:
    plaintext = os.urandom(size)
    blob = cms.build_enveloped_data(plaintext, key.public_key(), chunk_size=chunk_size)
    done = _openssl_decrypt(openssl, tmp_path, blob, key)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    assert (tmp_path / "pt.bin").read_bytes() == plaintext


def test_openssl_finds_the_recipient_by_subject_key_identifier(key: rsa.RSAPrivateKey, openssl: str,
                                                                tmp_path: Path) -> None:
    """With ``-recip``, OpenSSL matches our rid against the certificate's SKI extension."""
    certificate = _certificate(key, cms.subject_key_identifier(key.public_key()))
    cert_pem = tmp_path / "recipient.pem"
    cert_pem.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    blob = cms.build_enveloped_data(b"attested data key", key.public_key())
    done = _openssl_decrypt(openssl, tmp_path, blob, key, "-recip", str(cert_pem))
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    assert (tmp_path / "pt.bin").read_bytes() == b"attested data key"


def test_openssl_refuses_a_foreign_key(key: rsa.RSAPrivateKey, other_key: rsa.RSAPrivateKey,
                                       openssl: str, tmp_path: Path) -> None:
    blob = cms.build_enveloped_data(b"secret", key.public_key())
    done = _openssl_decrypt(openssl, tmp_path, blob, other_key)
    assert done.returncode != 0
    assert not (tmp_path / "pt.bin").is_file() or (tmp_path / "pt.bin").read_bytes() != b"secret"


def test_openssl_der_reencoding_is_accepted(key: rsa.RSAPrivateKey, openssl: str, tmp_path: Path) -> None:
    """OpenSSL re-encodes our BER as DER (definite lengths, primitive content); we read that too."""
    blob = cms.build_enveloped_data(b"d" * 100, key.public_key(), chunk_size=32)
    (tmp_path / "in.ber").write_bytes(blob)
    subprocess.run([openssl, "cms", "-cmsout", "-inform", "DER", "-in", str(tmp_path / "in.ber"),
                    "-outform", "DER", "-out", str(tmp_path / "out.der")], check=True, timeout=60,
                   capture_output=True)
    der = (tmp_path / "out.der").read_bytes()
    assert der[:2] == b"\x30\x82"  # definite length: DER
    assert cms.parse_enveloped_data(der) == cms.parse_enveloped_data(blob)
    assert cms.decrypt_enveloped_data(der, key) == b"d" * 100


def test_cryptography_pkcs7_decrypt(key: rsa.RSAPrivateKey) -> None:
    """pyca/cryptography's own CMS decryption, if this version can read KMS's shape at all.

    Found in 50.0.2: DER only (no indefinite lengths), rid issuerAndSerialNumber only, and
    "Only RSA with PKCS #1 v1.5 padding is currently supported for key decryption".
    """
    certificate = _certificate(key, cms.subject_key_identifier(key.public_key()))
    blob = cms.build_enveloped_data(b"via pkcs7", key.public_key())
    try:
        plaintext = pkcs7.pkcs7_decrypt_der(blob, certificate, key, [])
    except (ValueError, UnsupportedAlgorithm) as error:
        pytest.skip(
            f"cryptography {cryptography.__version__}'s pkcs7_decrypt_der cannot decrypt KMS's "
            f"CMS (BER, rid subjectKeyIdentifier, RSAES-OAEP): {error}"
        )
    assert plaintext == b"via pkcs7"


# --- refusals -----------------------------------------------------------------------------------


def test_wrong_private_key(key: rsa.RSAPrivateKey, other_key: rsa.RSAPrivateKey) -> None:
    blob = cms.build_enveloped_data(b"secret", key.public_key())
    with pytest.raises(CmsDecryptionError, match="RSA-OAEP could not unwrap"):
        cms.decrypt_enveloped_data(blob, other_key)


def test_flipped_encrypted_key_byte(key: rsa.RSAPrivateKey) -> None:
    blob = cms.build_enveloped_data(os.urandom(32), key.public_key())
    with pytest.raises(CmsDecryptionError, match="unwrap"):
        cms.decrypt_enveloped_data(_patched(blob, 200, blob[200] ^ 0x01), key)


def test_flipped_ciphertext_byte_breaks_the_padding(key: rsa.RSAPrivateKey) -> None:
    """CBC has no integrity; flipping the last byte of the next-to-last block turns the last
    padding byte 0x10 into 0xef, which no PKCS#7 unpadder accepts (deterministic)."""
    blob = cms.build_enveloped_data(os.urandom(32), key.public_key())
    with pytest.raises(CmsDecryptionError, match="padding"):
        cms.decrypt_enveloped_data(_patched(blob, 435 + 31, blob[435 + 31] ^ 0xFF), key)


def test_flipped_first_ciphertext_byte_changes_the_plaintext(key: rsa.RSAPrivateKey) -> None:
    blob = cms.build_enveloped_data(b"k" * 32, key.public_key())
    assert cms.decrypt_enveloped_data(_patched(blob, 435, blob[435] ^ 0x01), key) != b"k" * 32


def test_every_truncation_is_refused(vector: bytes) -> None:
    for size in range(len(vector)):
        with pytest.raises(CmsError):
            cms.parse_enveloped_data(vector[:size])


@pytest.mark.parametrize(
    ("offset", "value", "message"),
    [
        (ENVELOPED_VERSION_AT, 0x00, "EnvelopedData.version is 0"),
        (ENVELOPED_VERSION_AT, 0x03, "EnvelopedData.version is 3"),
        (RECIPIENT_VERSION_AT, 0x00, "KeyTransRecipientInfo.version is 0"),
        (OUTER_TYPE_LAST_AT, 0x02, "ContentInfo.contentType is id-signedData"),
        (DATA_OID_LAST_AT, 0x02, "EncryptedContentInfo.contentType is id-signedData"),
        (AES_OID_LAST_AT, 0x02, "contentEncryptionAlgorithm is aes-128-cbc"),
        (0, 0x31, "ContentInfo: expected SEQUENCE, found SET"),
        (20, 0x30, "recipientInfos: expected SET"),
        (31, 0x81, r"rid \[0\] subjectKeyIdentifier: expected \[0\] primitive, found \[1\]"),
    ],
)
def test_what_the_sdk_refuses_is_refused(vector: bytes, offset: int, value: int, message: str) -> None:
    with pytest.raises(CmsError, match=message):
        cms.parse_enveloped_data(_patched(vector, offset, value))


def test_other_key_encryption_algorithm_parses_but_does_not_decrypt(vector: bytes,
                                                                    key: rsa.RSAPrivateKey) -> None:
    patched = _patched(vector, OAEP_OID_LAST_AT, 0x01)  # rsaEncryption (PKCS#1 v1.5)
    env = cms.parse_enveloped_data(patched)  # the SDK does not look at it either
    assert env.key_encryption_algorithm == "1.2.840.113549.1.1.1" and env.oaep_hash_algorithm is None
    with pytest.raises(CmsError, match="only RSAES-OAEP") as caught:
        cms.decrypt_enveloped_data(patched, key)
    assert not isinstance(caught.value, CmsDecryptionError)


def test_two_recipients_are_refused(vector: bytes) -> None:
    recipient = vector[24:387]  # the one KeyTransRecipientInfo
    header = b"\x31\x82" + (2 * len(recipient)).to_bytes(2, "big")
    doubled = vector[:20] + header + 2 * recipient + vector[387:]
    with pytest.raises(CmsError, match="more than one RecipientInfo"):
        cms.parse_enveloped_data(doubled)


def test_originator_info_is_refused(vector: bytes) -> None:
    with_originator = vector[:20] + b"\xa0\x00" + vector[20:]  # EnvelopedData is indefinite
    with pytest.raises(CmsError, match="originatorInfo is present"):
        cms.parse_enveloped_data(with_originator)


def test_detached_content_is_refused(vector: bytes) -> None:
    detached = vector[:431] + vector[485:]  # without the [0] content and its end-of-contents
    with pytest.raises(CmsError, match="encryptedContent is absent"):
        cms.parse_enveloped_data(detached)


def test_short_iv_is_refused(vector: bytes) -> None:
    short = vector[:400] + b"\x30\x1c" + vector[402:413] + b"\x04\x0f" + vector[415:430] + vector[431:]
    with pytest.raises(CmsError, match="IV is 15 bytes"):
        cms.parse_enveloped_data(short)


def test_unprotected_attributes_are_skipped(vector: bytes) -> None:
    with_attrs = vector[:487] + b"\xa1\x00" + vector[487:]
    assert cms.parse_enveloped_data(with_attrs) == cms.parse_enveloped_data(vector)


def test_build_refuses_a_non_rsa_key_and_a_bad_chunk_size(key: rsa.RSAPrivateKey) -> None:
    with pytest.raises(TypeError, match="RSA"):
        not_rsa = ec.generate_private_key(ec.SECP256R1()).public_key()
        cms.build_enveloped_data(b"x", not_rsa)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="chunk_size"):
        cms.build_enveloped_data(b"x", key.public_key(), chunk_size=0)


def test_trailing_bytes_are_refused(vector: bytes) -> None:
    with pytest.raises(CmsError, match="2 trailing bytes"):
        cms.parse_enveloped_data(vector + b"\x00\x00")


@pytest.mark.parametrize(
    "blob",
    [b"", b"\x30", b"\x30\x80", b"\x30\x80" * 5000, b"\x24\x80" * 5000, b"\x30\x84\xff\xff\xff\xff",
     b"\x30\x89" + b"\x01" * 9, b"\x1f\x81\x00", b"\x30\x00", b"\x00\x00", b"\x04\x80\x00\x00"],
)
def test_hostile_headers_are_refused(blob: bytes) -> None:
    with pytest.raises(CmsError):
        cms.parse_enveloped_data(blob)


def test_cms_error_is_a_value_error() -> None:
    assert issubclass(CmsDecryptionError, CmsError) and issubclass(CmsError, ValueError)


# --- fuzz ---------------------------------------------------------------------------------------


def _only_cms_errors(call: Callable[[], object]) -> None:
    try:
        call()
    except CmsError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes_raise_only_cms_error(blob: bytes) -> None:
    _only_cms_errors(lambda: cms.parse_enveloped_data(blob))
    prefix = bytes.fromhex("308006092a864886f70d010703")  # ContentInfo{id-envelopedData, ...
    _only_cms_errors(lambda: cms.parse_enveloped_data(prefix + blob))


def test_mutations_of_the_vector_raise_only_cms_error(vector: bytes, key: rsa.RSAPrivateKey) -> None:
    rng = random.Random(5652)  # seeded: a failure reproduces
    for _ in range(3000):
        blob = bytearray(vector)
        for _ in range(rng.randint(1, 4)):
            choice = rng.random()
            position = rng.randrange(len(blob))
            if choice < 0.6:
                blob[position] = rng.randrange(256)
            elif choice < 0.8:
                del blob[position : position + rng.randint(1, 8)]
            else:
                blob[position:position] = rng.randbytes(rng.randint(1, 8))
        _only_cms_errors(lambda: cms.parse_enveloped_data(bytes(blob)))
    for _ in range(200):  # decryption as well (RSA makes these slower)
        blob = bytearray(vector)
        blob[rng.randrange(len(blob))] = rng.randrange(256)
        _only_cms_errors(lambda: cms.decrypt_enveloped_data(bytes(blob), key))
