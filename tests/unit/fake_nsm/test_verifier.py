"""verify_attestation_document on genuine AWS documents and on documents we sign.

Facts: nitro-facts §2.1-2.5; the vectors' timestamps and windows: shared/vectors/README.md.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta, timezone
from pathlib import Path

import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from tests.unit.fake_nsm.verifier_helpers import (
    DEBUG_PCRS,
    MODULE_ID,
    NOW,
    PCRS,
    build_chain,
    encode_map,
    make_document,
    make_test_ca,
    payload_fields,
    sign_cose,
    signer,
)

from fake_nsm.aws_root import AWS_NITRO_ROOT_G1_FINGERPRINT, AWS_NITRO_ROOT_G1_PEM
from fake_nsm.cert_chain import ChainCache
from fake_nsm.errors import (
    CertificateChainError,
    CertificateExpiredError,
    DebugModeError,
    FutureDocumentError,
    NonceMismatchError,
    PcrMismatchError,
    SignatureError,
    StaleDocumentError,
    UntrustedRootError,
    VerificationError,
    VerificationInputError,
)
from fake_nsm.verifier import read_unverified_document, verify_attestation_document

VALID = "evervault-beta-valid-attestation-doc.cbor"
DEBUG = "evervault-beta-debug-mode-attestation-doc.cbor"
VALID_AT = datetime(2022, 10, 13, 8, 58, 2, 136000, tzinfo=timezone.utc)
DEBUG_AT = datetime(2022, 10, 12, 13, 50, 6, 81000, tzinfo=timezone.utc)
VALID_PCRS = {
    0: "f4d48b81a460c9916d1e685119074bf24660afd3e34fae9fca0a0d28d9d5599936332687e6f66fc890ac8cf150142d8b",
    1: "bcdf05fefccaa8e55bf2c8d6dee9e79bbff31e34bf28a99aa19e6b29c37ee80b214a414b7607236edf26fcb78654e63f",
    2: "d8f114da658de5481f8d9ec73907feb553560787522f705c92d7d96beed8e15e2aa611984e098c576832c292e8dc469a",
    8: "8790eb3cce6c83d07e84b126dc61ca923333d6f66615c4a79157de48c5ab2418bdc60746ea7b7afbff03a1c6210201cb",
}


@pytest.fixture(scope="module")
def valid_doc(aws_vectors: Path) -> bytes:
    return (aws_vectors / VALID).read_bytes()


@pytest.fixture(scope="module")
def debug_doc(aws_vectors: Path) -> bytes:
    return (aws_vectors / DEBUG).read_bytes()


@pytest.fixture(scope="module")
def chain():  # type: ignore[no-untyped-def]
    return build_chain()


def verify_real(data: bytes, **options: object):  # type: ignore[no-untyped-def]
    options.setdefault("trusted_roots", [AWS_NITRO_ROOT_G1_PEM])
    options.setdefault("at", VALID_AT)
    return verify_attestation_document(data, **options)  # type: ignore[arg-type]


# --- genuine AWS documents -------------------------------------------------------------


def test_genuine_document_verifies_with_the_aws_root_at_its_timestamp(valid_doc: bytes) -> None:
    document = verify_real(valid_doc)
    assert document.module_id == "i-020b6af9246d90e92-enc0183d09086c24190"
    assert document.timestamp == 1665651482136
    assert document.digest == "SHA384"
    assert sorted(document.pcrs) == list(range(16))
    assert document.pcrs[0].hex() == VALID_PCRS[0]
    assert document.public_key is None and document.user_data is None
    assert document.nonce is not None and len(document.nonce) == 256
    assert len(document.cabundle) == 4 and not document.is_debug_mode


@pytest.mark.parametrize(
    "root",
    [
        pytest.param(AWS_NITRO_ROOT_G1_PEM, id="pem-bytes"),
        pytest.param(AWS_NITRO_ROOT_G1_PEM.decode(), id="pem-text"),
        pytest.param(x509.load_pem_x509_certificate(AWS_NITRO_ROOT_G1_PEM), id="certificate"),
        pytest.param(
            x509.load_pem_x509_certificate(AWS_NITRO_ROOT_G1_PEM).public_bytes(
                Encoding.DER
            ),
            id="der-bytes",
        ),
        pytest.param(AWS_NITRO_ROOT_G1_FINGERPRINT, id="fingerprint"),
        pytest.param(AWS_NITRO_ROOT_G1_FINGERPRINT.lower(), id="fingerprint-lower"),
        pytest.param(
            ":".join(AWS_NITRO_ROOT_G1_FINGERPRINT[i : i + 2] for i in range(0, 64, 2)),
            id="fingerprint-colons",
        ),
    ],
)
def test_the_root_can_be_named_in_every_supported_form(valid_doc: bytes, root: object) -> None:
    assert verify_real(valid_doc, trusted_roots=[root]).timestamp == 1665651482136


def test_shipped_aws_root_is_the_vectors_root(aws_vectors: Path) -> None:
    shipped = x509.load_pem_x509_certificate(AWS_NITRO_ROOT_G1_PEM)
    vector = x509.load_pem_x509_certificate((aws_vectors / "aws-nitro-enclaves-root-G1.pem").read_bytes())
    assert shipped == vector


def test_genuine_document_is_expired_three_hours_and_a_second_later(valid_doc: bytes) -> None:
    # The leaf is valid T-3s .. T+3h with T = 1665651482 (nitro-facts §2.3).
    leaf_end = datetime.fromtimestamp(1665651482, timezone.utc) + timedelta(hours=3)
    assert verify_real(valid_doc, at=leaf_end).module_id
    with pytest.raises(CertificateExpiredError, match="leaf certificate expired") as caught:
        verify_real(valid_doc, at=leaf_end + timedelta(seconds=1))
    assert caught.value.position == "leaf"
    assert caught.value.not_after == leaf_end


def test_genuine_document_before_its_leaf_was_issued_is_refused(valid_doc: bytes) -> None:
    with pytest.raises(CertificateExpiredError, match="not valid before"):
        verify_real(valid_doc, at=VALID_AT - timedelta(minutes=1), clock_skew=timedelta(hours=1))


def test_genuine_document_is_untrusted_under_a_test_root(valid_doc: bytes, chain) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(UntrustedRootError) as caught:
        verify_real(valid_doc, trusted_roots=[chain.root_pem])
    assert caught.value.fingerprint == AWS_NITRO_ROOT_G1_FINGERPRINT


def test_nothing_is_trusted_by_default(valid_doc: bytes) -> None:
    with pytest.raises(VerificationInputError, match="no trusted root"):
        verify_real(valid_doc, trusted_roots=[])


@pytest.mark.parametrize("root", [b"not a certificate", "abcd", 42, b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"])
def test_an_unusable_root_is_a_typed_error(valid_doc: bytes, root: object) -> None:
    with pytest.raises(VerificationInputError, match="trusted root #0"):
        verify_real(valid_doc, trusted_roots=[root])


def test_debug_mode_document_is_refused_unless_allowed(debug_doc: bytes) -> None:
    with pytest.raises(DebugModeError, match="PCR0, PCR1 and PCR2 are all zero"):
        verify_real(debug_doc, at=DEBUG_AT)
    document = verify_real(debug_doc, at=DEBUG_AT, allow_debug=True)
    assert document.is_debug_mode
    assert document.user_data == b"hello, world!"
    assert document.public_key == b"my super secret key"
    assert document.pcrs[3].hex().startswith("4a9329d6")  # PCR3/4 stay populated (§2.5)


def test_pcr_policy_on_a_genuine_document(valid_doc: bytes) -> None:
    policy: dict[int, bytes | str] = {i: v for i, v in VALID_PCRS.items()}
    policy[4] = bytes.fromhex("1f442c86d494a88185642086d904ed89f62fb66ee9997d7b1a4f040faab3bba4244c768a584e5778195b3afc715637c6")
    assert verify_real(valid_doc, expected_pcrs=policy).pcrs[8].hex() == VALID_PCRS[8]
    wrong = dict(policy)
    wrong[2] = "00" * 48
    with pytest.raises(PcrMismatchError) as caught:
        verify_real(valid_doc, expected_pcrs=wrong)
    assert (caught.value.index, caught.value.expected, caught.value.actual.hex()) == (
        2, bytes(48), VALID_PCRS[2]
    )
    with pytest.raises(PcrMismatchError) as absent:
        verify_real(valid_doc, expected_pcrs={16: bytes(48)})
    assert absent.value.actual is None


@pytest.mark.parametrize("policy", [{32: "00"}, {"0": "00"}, {0: "zz"}, {0: 12}, ["0"]])
def test_a_bad_pcr_policy_is_a_typed_error(valid_doc: bytes, policy: object) -> None:
    with pytest.raises(VerificationInputError):
        verify_real(valid_doc, expected_pcrs=policy)


def test_nonce_policy_on_a_genuine_document(valid_doc: bytes) -> None:
    nonce = read_unverified_document(valid_doc).nonce
    assert nonce is not None
    assert verify_real(valid_doc, nonce=nonce).nonce == nonce
    with pytest.raises(NonceMismatchError):
        verify_real(valid_doc, nonce=nonce[:-1] + bytes([nonce[-1] ^ 1]))


def test_freshness_on_a_genuine_document(valid_doc: bytes) -> None:
    assert verify_real(valid_doc, at=VALID_AT + timedelta(seconds=5), max_age=timedelta(seconds=5))
    with pytest.raises(StaleDocumentError) as caught:
        verify_real(valid_doc, at=VALID_AT + timedelta(seconds=6), max_age=timedelta(seconds=5))
    assert caught.value.timestamp == 1665651482136
    # Dated 2.5 s after `at` (the leaf is already valid): refused beyond a 1 s skew.
    with pytest.raises(FutureDocumentError):
        verify_real(valid_doc, at=VALID_AT - timedelta(seconds=2.5), clock_skew=timedelta(seconds=1))
    assert verify_real(valid_doc, at=VALID_AT - timedelta(seconds=2.5))


def test_tag_18_around_a_genuine_document_is_accepted(valid_doc: bytes) -> None:
    # The tag is outside the signed bytes: the signature still verifies (§2.4 step 1).
    tagged = b"\xd2" + valid_doc
    assert verify_real(tagged).module_id == verify_real(valid_doc).module_id


def test_indefinite_map_re_encoding_of_a_genuine_payload(valid_doc: bytes) -> None:
    protected, unprotected, payload, signature = cbor2.loads(valid_doc)
    assert payload[0] == 0xA9  # definite, as in 2022 documents
    fields = cbor2.loads(payload)
    reencoded = encode_map(fields, definite=False)
    assert reencoded[0] == 0xBF and reencoded[-1] == 0xFF
    forged = cbor2.dumps([protected, unprotected, reencoded, signature])
    # Structurally fine: 2025+ documents use exactly this form (nitro-facts §2.2)...
    assert read_unverified_document(forged) == read_unverified_document(valid_doc)
    # ...but the signature covers the bytes, not the meaning.
    with pytest.raises(SignatureError):
        verify_real(forged)


# --- our documents ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    return make_test_ca(tmp_path_factory.mktemp("ca") / "ca")


def verify_ours(data: bytes, ca, **options: object):  # type: ignore[no-untyped-def]
    options.setdefault("trusted_roots", [ca.root_pem])
    options.setdefault("at", NOW)
    return verify_attestation_document(data, **options)  # type: ignore[arg-type]


@pytest.mark.parametrize("definite", [True, False], ids=["definite-map", "indefinite-map"])
@pytest.mark.parametrize("tagged", [False, True], ids=["untagged", "tag18"])
def test_signer_documents_round_trip(ca, definite: bool, tagged: bool) -> None:  # type: ignore[no-untyped-def]
    data = signer(ca, definite=definite).sign(
        PCRS, nonce=b"\x01" * 32, user_data=b"", public_key=b"pk"
    )
    if tagged:
        data = b"\xd2" + data
    document = verify_ours(data, ca, nonce=b"\x01" * 32, expected_pcrs=PCRS)
    assert document.module_id == MODULE_ID
    assert document.timestamp == int(NOW.timestamp() * 1000)
    assert dict(document.pcrs) == PCRS
    assert (document.nonce, document.user_data, document.public_key) == (b"\x01" * 32, b"", b"pk")
    assert document.cabundle[0] == ca.root_der and len(document.cabundle) == 4


@pytest.mark.parametrize("definite", [True, False], ids=["definite-map", "indefinite-map"])
def test_signer_map_form_is_what_was_asked(ca, definite: bool) -> None:  # type: ignore[no-untyped-def]
    payload = cbor2.loads(signer(ca, definite=definite).sign(PCRS))[2]
    assert payload[0] == (0xA9 if definite else 0xBF)


def test_local_chain_documents_round_trip(chain) -> None:  # type: ignore[no-untyped-def]
    data = make_document(chain, definite=False, tagged=True, nonce=b"n")
    assert verify_attestation_document(data, trusted_roots=[chain.root_der], at=NOW).nonce == b"n"


def test_optional_fields_may_be_absent_or_null(chain) -> None:  # type: ignore[no-untyped-def]
    fields = payload_fields(chain)
    for key in ("public_key", "user_data", "nonce"):
        del fields[key]
    data = sign_cose(encode_map(fields, definite=True), chain.leaf_key)
    document = verify_attestation_document(data, trusted_roots=[chain.root_der], at=NOW)
    assert document.nonce is None and document.user_data is None and document.public_key is None


def test_each_policy_failure_has_its_own_class(ca) -> None:  # type: ignore[no-untyped-def]
    data = signer(ca, definite=False).sign(PCRS, nonce=b"nonce")
    other = build_chain(key_offset=10)
    cases: list[tuple[type[VerificationError], dict[str, object]]] = [
        (UntrustedRootError, {"trusted_roots": [other.root_pem]}),
        (UntrustedRootError, {"trusted_roots": [AWS_NITRO_ROOT_G1_PEM]}),
        (CertificateExpiredError, {"at": NOW + timedelta(hours=3, seconds=1)}),
        (NonceMismatchError, {"nonce": b"other"}),
        (PcrMismatchError, {"expected_pcrs": {0: hashlib.sha384(b"other").digest()}}),
        (StaleDocumentError, {"at": NOW + timedelta(minutes=10), "max_age": timedelta(minutes=5)}),
        (FutureDocumentError, {"at": NOW - timedelta(seconds=2), "clock_skew": timedelta(seconds=1)}),
    ]
    for expected, options in cases:
        with pytest.raises(expected):
            verify_ours(data, ca, **options)
    debug = signer(ca, definite=False).sign(DEBUG_PCRS)
    with pytest.raises(DebugModeError):
        verify_ours(debug, ca)
    assert verify_ours(debug, ca, allow_debug=True).is_debug_mode


def test_strict_option_caps_user_data_and_nonce_at_512(ca) -> None:  # type: ignore[no-untyped-def]
    data = signer(ca, definite=True).sign(PCRS, user_data=bytes(1024), nonce=bytes(513))
    assert verify_ours(data, ca).user_data == bytes(1024)
    with pytest.raises(VerificationError, match="512"):
        verify_ours(data, ca, strict=True)


def test_naive_time_is_taken_as_utc(ca) -> None:  # type: ignore[no-untyped-def]
    data = signer(ca, definite=True).sign(PCRS)
    naive_expired = (NOW + timedelta(hours=3, seconds=1)).replace(tzinfo=None)
    with pytest.raises(CertificateExpiredError):
        verify_ours(data, ca, at=naive_expired)


def test_a_document_signed_by_another_key_fails_the_signature(chain) -> None:  # type: ignore[no-untyped-def]
    other = build_chain(key_offset=20)
    payload = encode_map(payload_fields(chain), definite=True)
    with pytest.raises(SignatureError):
        verify_attestation_document(
            sign_cose(payload, other.leaf_key), trusted_roots=[chain.root_pem], at=NOW
        )


# --- the chain cache -------------------------------------------------------------------


def test_a_verified_chain_is_cached_and_validity_still_checked_each_call(chain) -> None:  # type: ignore[no-untyped-def]
    cache = ChainCache()
    data = make_document(chain)
    verify_attestation_document(data, trusted_roots=[chain.root_pem], at=NOW, chain_cache=cache)
    assert len(cache) == 1
    second = make_document(chain, nonce=b"second")
    assert verify_attestation_document(
        second, trusted_roots=[chain.root_pem], at=NOW, chain_cache=cache
    ).nonce == b"second"
    assert len(cache) == 1
    with pytest.raises(CertificateExpiredError):
        verify_attestation_document(
            second, trusted_roots=[chain.root_pem], at=NOW + timedelta(hours=4), chain_cache=cache
        )
    # The anchor is checked per call too: a cached chain does not trust its own root.
    with pytest.raises(UntrustedRootError):
        verify_attestation_document(
            second, trusted_roots=[AWS_NITRO_ROOT_G1_PEM], at=NOW, chain_cache=cache
        )


def test_a_failed_chain_is_not_cached(chain) -> None:  # type: ignore[no-untyped-def]
    cache = ChainCache()
    bad = build_chain(signer_override={2: 30})  # the zonal CA signed by a stranger
    data = make_document(bad)
    for _ in range(2):
        with pytest.raises(CertificateChainError, match="cabundle.2. was not issued by cabundle.1."):
            verify_attestation_document(data, trusted_roots=[bad.root_pem], at=NOW, chain_cache=cache)
    assert len(cache) == 0


def test_concurrent_verifications_share_one_cache(ca) -> None:  # type: ignore[no-untyped-def]
    from concurrent.futures import ThreadPoolExecutor

    cache = ChainCache()
    documents = [signer(ca, definite=i % 2 == 0).sign(PCRS, nonce=bytes([i])) for i in range(8)]

    def check(index: int) -> bytes | None:
        return verify_ours(documents[index], ca, chain_cache=cache, nonce=bytes([index])).nonce

    with ThreadPoolExecutor(max_workers=4) as pool:
        assert list(pool.map(check, range(8))) == [bytes([i]) for i in range(8)]
    assert len(cache) == 1


@pytest.mark.parametrize(
    "name, timestamp_ms",
    [(VALID, 1665651482136), (DEBUG, 1665582606081)],
    ids=["production", "debug-mode"],
)
def test_both_genuine_documents_at_their_timestamp_and_three_hours_later(  # type: ignore[no-untyped-def]
    aws_vectors: Path, chain, name: str, timestamp_ms: int
) -> None:
    data = (aws_vectors / name).read_bytes()
    at = datetime.fromtimestamp(timestamp_ms / 1000, timezone.utc)
    assert verify_real(data, at=at, allow_debug=True).timestamp == timestamp_ms
    with pytest.raises(CertificateExpiredError, match="leaf certificate expired"):
        verify_real(data, at=at + timedelta(hours=3, seconds=1), allow_debug=True)
    with pytest.raises(UntrustedRootError):
        verify_real(data, at=at, allow_debug=True, trusted_roots=[chain.root_der])
