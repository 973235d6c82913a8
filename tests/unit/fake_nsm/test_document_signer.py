"""The document signer: byte layout of AWS's documents (nitro-facts §2.2), signatures, leaves."""

from __future__ import annotations

import hashlib
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import cbor2
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature
from cryptography import x509

from ca import TestCA
from fake_nsm.document import PAYLOAD_KEYS
from fake_nsm.document_signer import (
    DocumentFieldError,
    DocumentSigner,
    raw_signature,
    sign_document,
    timestamp_ms,
)

MODULE_ID = "i-020b6af9246d90e92-enc0183d09086c24190"
START = datetime(2026, 3, 1, 12, 0, 0, 123000, tzinfo=timezone.utc)
PCRS = {index: (hashlib.sha384(bytes([index])).digest() if index in (0, 1, 2, 4) else bytes(48)) for index in range(16)}


class FakeClock:
    def __init__(self, now: datetime = START) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def test_ca(tmp_path: Path, clock: FakeClock) -> TestCA:
    return TestCA.load_or_create(tmp_path / "ca", clock=clock)


@pytest.fixture
def signer(test_ca: TestCA, clock: FakeClock) -> DocumentSigner:
    return DocumentSigner(test_ca, MODULE_ID, clock=clock)


def verify_cose(document: bytes) -> dict:
    """Check the COSE_Sign1 signature with the leaf in the payload; return the payload."""
    protected, _unprotected, payload, signature = cbor2.loads(document)
    fields = cbor2.loads(payload)
    leaf = x509.load_der_x509_certificate(fields["certificate"]).public_key()
    assert isinstance(leaf, ec.EllipticCurvePublicKey)
    sig_structure = cbor2.dumps(["Signature1", protected, b"", payload])
    r, s = int.from_bytes(signature[:48], "big"), int.from_bytes(signature[48:], "big")
    leaf.verify(encode_dss_signature(r, s), sig_structure, ec.ECDSA(hashes.SHA384()))
    return fields


def test_helper_verifies_genuine_aws_documents(aws_vectors: Path) -> None:
    for name in ("evervault-beta-valid-attestation-doc.cbor", "evervault-beta-debug-mode-attestation-doc.cbor"):
        data = (aws_vectors / name).read_bytes()
        verify_cose(data)
        tampered = bytearray(data)
        tampered[200] ^= 1
        with pytest.raises(InvalidSignature):
            verify_cose(bytes(tampered))


def test_cose_envelope_matches_aws(signer: DocumentSigner, aws_vectors: Path) -> None:
    ours = signer.sign(PCRS)
    theirs = (aws_vectors / "evervault-beta-valid-attestation-doc.cbor").read_bytes()
    # array(4), protected bstr {1:-35}, unprotected {}, payload bstr with a 2-byte length
    assert ours[:8] == theirs[:8] == bytes.fromhex("8444a1013822a059")
    assert ours[-98:-96] == theirs[-98:-96] == b"\x58\x60"
    length = int.from_bytes(ours[8:10], "big")
    assert len(ours) == 10 + length + 98


def _payload(document: bytes) -> bytes:
    return cbor2.loads(document)[2]


def test_payload_layout_matches_aws(signer: DocumentSigner, aws_vectors: Path) -> None:
    genuine = _payload((aws_vectors / "evervault-beta-valid-attestation-doc.cbor").read_bytes())
    ours = _payload(signer.sign(PCRS, nonce=b"n" * 256))
    assert list(cbor2.loads(ours)) == list(cbor2.loads(genuine)) == list(PAYLOAD_KEYS)
    # "digest": "SHA384", "timestamp": 1b + 8 bytes, "pcrs": map(16) {0: bstr(48) ...}
    for fragment in (
        bytes.fromhex("6664696765737466534841333834") + bytes.fromhex("6974696d657374616d701b"),
        bytes.fromhex("6470637273b0005830"),
        bytes.fromhex("6b63657274696669636174655902"),
        bytes.fromhex("68636162756e646c65845902"),
        bytes.fromhex("6a7075626c69635f6b6579f669757365725f64617461f6656e6f6e63655901"),
    ):
        assert fragment in genuine and fragment in ours, fragment.hex()
    theirs, mine = cbor2.loads(genuine), cbor2.loads(ours)
    assert list(mine["pcrs"]) == list(theirs["pcrs"]) == list(range(16))
    assert {len(v) for v in mine["pcrs"].values()} == {48}
    assert len(mine["cabundle"]) == len(theirs["cabundle"]) == 4


def test_indefinite_map_by_default_definite_on_request(test_ca: TestCA, clock: FakeClock) -> None:
    indefinite = _payload(DocumentSigner(test_ca, MODULE_ID, clock=clock).sign(PCRS))
    definite = _payload(DocumentSigner(test_ca, MODULE_ID, clock=clock, definite_map=True).sign(PCRS))
    assert indefinite[0] == 0xBF and indefinite[-1] == 0xFF
    assert definite[0] == 0xA9 and indefinite[1:-1] == definite[1:]
    assert cbor2.loads(indefinite) == cbor2.loads(definite)


def test_fields_and_nulls(signer: DocumentSigner, clock: FakeClock, test_ca: TestCA) -> None:
    fields = verify_cose(signer.sign(PCRS, user_data=b"hello, world!", public_key=b"my key"))
    assert fields["module_id"] == MODULE_ID and fields["digest"] == "SHA384"
    assert fields["timestamp"] == 1772366400123 == timestamp_ms(START)
    assert fields["pcrs"] == PCRS
    assert fields["user_data"] == b"hello, world!" and fields["public_key"] == b"my key"
    assert fields["nonce"] is None
    assert fields["cabundle"][0] == test_ca.root_der
    bare = _payload(signer.sign(PCRS))
    assert bare.endswith(bytes.fromhex("6a7075626c69635f6b6579f669757365725f64617461f6656e6f6e6365f6ff"))
    empty = cbor2.loads(_payload(signer.sign(PCRS, nonce=b"")))
    assert empty["nonce"] == b""


def test_1024_byte_fields_and_any_pcr_subset(signer: DocumentSigner) -> None:
    big = bytes(range(256)) * 4
    fields = verify_cose(signer.sign({0: bytes(48), 17: b"\x01" * 48}, user_data=big, nonce=big, public_key=big))
    assert fields["user_data"] == fields["nonce"] == fields["public_key"] == big
    assert list(fields["pcrs"]) == [0, 17]


@pytest.mark.parametrize(
    ("pcrs", "message"),
    [
        ({32: bytes(48)}, "index 32"),
        ({-1: bytes(48)}, "index -1"),
        ({True: bytes(48)}, "index True"),
        ({"0": bytes(48)}, "index '0'"),
        ({0: bytes(32)}, "PCR0 must be 48 bytes"),
        ({0: "00" * 48}, "PCR0 must be bytes"),
        ({}, "1..32 entries"),
        ({0: bytes(48), "x": bytes(48)}, "integers"),
    ],
)
def test_bad_pcrs_are_named(signer: DocumentSigner, pcrs: dict, message: str) -> None:
    with pytest.raises(DocumentFieldError, match=message):
        signer.sign(pcrs)


def test_bad_optional_field(signer: DocumentSigner) -> None:
    with pytest.raises(DocumentFieldError, match="nonce must be bytes or None, not str"):
        signer.sign(PCRS, nonce="abc")  # type: ignore[arg-type]


def test_signature_conversion_matches_cryptography() -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    for r, s in [(1, 2), (2**383 + 5, 2**382), (2**384 - 1, 255), (0x80 << 376, 0x7F << 376)]:
        raw = raw_signature(encode_dss_signature(r, s))
        assert raw == r.to_bytes(48, "big") + s.to_bytes(48, "big")
    for _ in range(50):
        der = key.sign(b"x", ec.ECDSA(hashes.SHA384()))
        r, s = decode_dss_signature(der)
        assert raw_signature(der) == r.to_bytes(48, "big") + s.to_bytes(48, "big")


def test_leaf_reused_then_reissued_at_expiry(signer: DocumentSigner, clock: FakeClock) -> None:
    first = cbor2.loads(_payload(signer.sign(PCRS)))["certificate"]
    clock.now = START + timedelta(hours=2)
    assert cbor2.loads(_payload(signer.sign(PCRS)))["certificate"] == first
    clock.now = START + timedelta(hours=3)
    later = verify_cose(signer.sign(PCRS))
    assert later["certificate"] != first
    leaf = x509.load_der_x509_certificate(later["certificate"])
    assert leaf.not_valid_before_utc <= clock.now < leaf.not_valid_after_utc
    assert later["timestamp"] == timestamp_ms(clock.now)


def test_sign_document_low_level(test_ca: TestCA) -> None:
    credentials = test_ca.issue_leaf(MODULE_ID)
    data = sign_document(credentials, MODULE_ID, PCRS, nonce=b"abc", timestamp_ms=1234, definite_map=True)
    fields = verify_cose(data)
    assert fields["timestamp"] == 1234 and fields["nonce"] == b"abc"
    assert _payload(data)[0] == 0xA9 and bytes.fromhex("6974696d657374616d701904d2") in _payload(data)
    with pytest.raises(DocumentFieldError, match="timestamp_ms"):
        sign_document(credentials, MODULE_ID, PCRS, timestamp_ms=0)


def test_bad_module_id_fails_at_construction(test_ca: TestCA) -> None:
    from ca import InvalidEnclaveIdError

    with pytest.raises(InvalidEnclaveIdError):
        DocumentSigner(test_ca, "enclave-1")


def test_thread_safe(signer: DocumentSigner) -> None:
    documents: list[bytes] = []

    def work() -> None:
        for index in range(10):
            documents.append(signer.sign(PCRS, nonce=bytes([index])))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(documents) == 40
    for document in documents:
        verify_cose(document)


@pytest.mark.parametrize("definite_map", [False, True])
def test_round_trip_through_the_verifier(test_ca: TestCA, clock: FakeClock, definite_map: bool) -> None:
    from fake_nsm.errors import PcrMismatchError, UntrustedRootError
    from fake_nsm.verifier import verify_attestation_document

    signer = DocumentSigner(test_ca, MODULE_ID, clock=clock, definite_map=definite_map)
    data = signer.sign(PCRS, nonce=b"fresh", user_data=b"ud")
    document = verify_attestation_document(
        data, trusted_roots=[test_ca.root_pem], at=clock.now, expected_pcrs={0: PCRS[0]}, nonce=b"fresh"
    )
    assert document.module_id == MODULE_ID and document.user_data == b"ud"
    assert document.timestamp == timestamp_ms(clock.now)
    verify_attestation_document(data, trusted_roots=[test_ca.root_sha256], at=clock.now)
    with pytest.raises(PcrMismatchError):
        verify_attestation_document(
            data, trusted_roots=[test_ca.root_der], at=clock.now, expected_pcrs={0: bytes(48)}
        )
    aws_root_fingerprint = "641a0321a3e244efe45646319" + "5d606317ed7cdcc3c1756e09893f3c68f79bb5b"
    with pytest.raises(UntrustedRootError):
        verify_attestation_document(data, trusted_roots=[aws_root_fingerprint], at=clock.now)


def test_pcr_memo_never_hides_a_bad_or_changed_value(signer: DocumentSigner) -> None:
    signer.sign({1: bytes(48)})
    with pytest.raises(DocumentFieldError, match="index True"):
        signer.sign({True: bytes(48)})
    mutable = bytearray(48)
    signer.sign({0: mutable})
    mutable[0] = 7
    assert cbor2.loads(_payload(signer.sign({0: mutable})))["pcrs"][0][0] == 7


def test_timestamp_must_be_a_positive_int(test_ca: TestCA) -> None:
    credentials = test_ca.issue_leaf(MODULE_ID)
    for bad in (True, -5, 1.5, 1 << 64):
        with pytest.raises(DocumentFieldError, match="timestamp_ms must be a positive uint64"):
            sign_document(credentials, MODULE_ID, PCRS, timestamp_ms=bad)  # type: ignore[arg-type]
