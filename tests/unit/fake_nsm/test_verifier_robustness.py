"""Hostile and malformed input: every failure is a VerificationError subclass, nothing else.

nitro-facts §2.1 (syntax and sizes), §2.3-2.4 (chain constraints), §2.2 (COSE envelope).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.unit.fake_nsm.verifier_helpers import (
    NOW,
    PCRS,
    bend,
    build_chain,
    encode_map,
    make_document,
    make_test_ca,
    payload_fields,
    sign_cose,
    signer,
)

from fake_nsm.cert_chain import ChainCache
from fake_nsm.errors import (
    CertificateChainError,
    MalformedDocumentError,
    UnsupportedAlgorithmError,
    VerificationError,
)
from fake_nsm.verifier import read_unverified_document, verify_attestation_document


@pytest.fixture(scope="module")
def chain():  # type: ignore[no-untyped-def]
    return build_chain()


def verify(data: Any, chain, **options: Any):  # type: ignore[no-untyped-def]
    options.setdefault("at", NOW)
    return verify_attestation_document(data, trusted_roots=[chain.root_pem], **options)


# --- every byte, every length ----------------------------------------------------------


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    return make_test_ca(tmp_path_factory.mktemp("ca") / "ca")


@pytest.mark.parametrize("definite", [True, False], ids=["definite-map", "indefinite-map"])
def test_flipping_any_single_byte_fails_verification(ca, definite: bool) -> None:  # type: ignore[no-untyped-def]
    # A document of the project's signer, with every optional field present.
    data = signer(ca, definite=definite).sign(
        PCRS, nonce=b"n" * 32, user_data=b"u" * 16, public_key=b"k" * 8
    )
    cache = ChainCache()
    verify_attestation_document(data, trusted_roots=[ca.root_pem], at=NOW, chain_cache=cache)
    survivors = []
    for position in range(len(data)):  # every byte: header, payload, signature
        flipped = bytearray(data)
        flipped[position] ^= 0x01
        try:
            verify_attestation_document(
                bytes(flipped), trusted_roots=[ca.root_pem], at=NOW, chain_cache=cache
            )
        except VerificationError:
            continue
        survivors.append(position)
    assert survivors == [], f"byte flips at {survivors} still verified"
    # No tampered chain was ever cached as verified (the cache is also what keeps this fast).
    assert len(cache) == 1


@pytest.mark.parametrize("definite", [True, False], ids=["definite-map", "indefinite-map"])
def test_truncation_at_every_length_fails_verification(ca, definite: bool) -> None:  # type: ignore[no-untyped-def]
    data = signer(ca, definite=definite).sign(PCRS, nonce=b"n")
    for length in range(len(data)):
        with pytest.raises(VerificationError):
            verify_attestation_document(data[:length], trusted_roots=[ca.root_pem], at=NOW)


def test_appended_bytes_fail_verification(chain) -> None:  # type: ignore[no-untyped-def]
    data = make_document(chain)
    for tail in (b"\x00", b"\xf6", data):
        with pytest.raises(MalformedDocumentError, match="trailing"):
            verify(data + tail, chain)


# --- the COSE envelope -----------------------------------------------------------------


@pytest.mark.parametrize(
    "protected, expected",
    [
        (cbor2.dumps({1: -7}), UnsupportedAlgorithmError),  # ES256
        (cbor2.dumps({1: "ES384"}), UnsupportedAlgorithmError),
        (b"", UnsupportedAlgorithmError),
        (cbor2.dumps({}), UnsupportedAlgorithmError),
        (cbor2.dumps({1: -35, 2: [1]}), UnsupportedAlgorithmError),
        (cbor2.dumps([1, -35]), MalformedDocumentError),
        (b"\xa1\x01", MalformedDocumentError),
    ],
)
def test_protected_header_must_be_es384(chain, protected: bytes, expected: type) -> None:  # type: ignore[no-untyped-def]
    payload = encode_map(payload_fields(chain), definite=True)
    with pytest.raises(expected):
        verify(sign_cose(payload, chain.leaf_key, protected=protected), chain)


def test_a_label_in_both_header_buckets_is_refused(chain) -> None:  # type: ignore[no-untyped-def]
    payload = encode_map(payload_fields(chain), definite=True)
    with pytest.raises(MalformedDocumentError, match="both"):
        verify(sign_cose(payload, chain.leaf_key, unprotected={1: -35}), chain)


@pytest.mark.parametrize(
    "message",
    [
        [],
        [b"\xa1\x01\x38\x22", {}, b"payload"],
        [b"\xa1\x01\x38\x22", [], b"\xa0", bytes(96)],
        [b"\xa1\x01\x38\x22", {}, None, bytes(96)],  # detached payload
        [b"\xa1\x01\x38\x22", {}, b"\xa0", bytes(64)],  # ES256-sized signature
        [b"\xa1\x01\x38\x22", {}, "text", bytes(96)],
        cbor2.CBORTag(98, [b"\xa1\x01\x38\x22", {}, b"\xa0", bytes(96)]),  # COSE_Sign, not Sign1
        {"not": "an array"},
    ],
)
def test_a_bad_envelope_is_malformed(chain, message: Any) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(MalformedDocumentError):
        verify(cbor2.dumps(message), chain)


@pytest.mark.parametrize("data", [None, "text", 42, [b"x"]])
def test_non_bytes_input_is_malformed(chain, data: Any) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(MalformedDocumentError, match="is bytes"):
        verify(data, chain)


# --- payload syntax (§2.1) -------------------------------------------------------------

BAD_FIELDS: list[tuple[str, Any, str]] = [
    ("module_id", "", "module_id"),
    ("module_id", b"i-0123", "module_id"),
    ("digest", b"SHA384", "digest"),
    ("timestamp", 0, "timestamp"),
    ("timestamp", -5, "timestamp"),
    ("timestamp", True, "timestamp"),
    ("timestamp", 1.5e12, "timestamp"),
    ("timestamp", "1700000000000", "timestamp"),
    ("pcrs", {}, "1 to 32"),
    ("pcrs", {i: bytes(48) for i in range(33)}, "1 to 32"),
    ("pcrs", [bytes(48)], "pcrs must be a map"),
    ("pcrs", {32: bytes(48)}, "index"),
    ("pcrs", {-1: bytes(48)}, "index"),
    ("pcrs", {"0": bytes(48)}, "index"),
    ("pcrs", {0: bytes(47)}, "PCR0"),
    ("pcrs", {0: bytes(0)}, "PCR0"),
    ("pcrs", {0: "00" * 48}, "PCR0"),
    ("certificate", b"", "certificate"),
    ("certificate", bytes(1025), "certificate"),
    ("certificate", "MIIB", "certificate"),
    ("cabundle", [], "cabundle"),
    ("cabundle", b"der", "cabundle"),
    ("cabundle", [b""], "cabundle.0."),
    ("cabundle", [bytes(1025)], "cabundle.0."),
    ("cabundle", [None], "cabundle.0."),
    ("public_key", b"", "public_key"),
    ("public_key", bytes(1025), "public_key"),
    ("user_data", bytes(1025), "user_data"),
    ("user_data", "text", "user_data"),
    ("nonce", bytes(1025), "nonce"),
    ("nonce", 7, "nonce"),
]


@pytest.mark.parametrize("field, value, message", BAD_FIELDS)
def test_a_bad_field_is_malformed(chain, field: str, value: Any, message: str) -> None:  # type: ignore[no-untyped-def]
    fields = payload_fields(chain)
    fields[field] = value
    data = sign_cose(encode_map(fields, definite=True), chain.leaf_key)
    with pytest.raises(MalformedDocumentError, match=message):
        read_unverified_document(data)
    with pytest.raises(MalformedDocumentError, match=message):
        verify(data, chain)


@pytest.mark.parametrize("field", ["module_id", "digest", "timestamp", "pcrs", "certificate", "cabundle"])
@pytest.mark.parametrize("how", ["missing", "null"])
def test_a_mandatory_field_may_be_neither_missing_nor_null(chain, field: str, how: str) -> None:  # type: ignore[no-untyped-def]
    fields = payload_fields(chain)
    if how == "missing":
        del fields[field]
    else:
        fields[field] = None
    data = sign_cose(encode_map(fields, definite=False), chain.leaf_key)
    with pytest.raises(MalformedDocumentError, match=f"{field}.*missing or null"):
        verify(data, chain)


def test_digest_other_than_sha384_is_unsupported(chain) -> None:  # type: ignore[no-untyped-def]
    fields = payload_fields(chain)
    fields["digest"] = "SHA256"
    with pytest.raises(UnsupportedAlgorithmError, match="SHA256"):
        verify(sign_cose(encode_map(fields, definite=True), chain.leaf_key), chain)


def test_unknown_and_duplicate_payload_keys_are_malformed(chain) -> None:  # type: ignore[no-untyped-def]
    fields = payload_fields(chain)
    fields["extra"] = b"x"
    with pytest.raises(MalformedDocumentError, match="unknown payload field"):
        verify(sign_cose(encode_map(fields, definite=True), chain.leaf_key), chain)
    body = encode_map(payload_fields(chain), definite=False)
    duplicated = body[:-1] + cbor2.dumps("nonce") + cbor2.dumps(b"second") + b"\xff"
    with pytest.raises(MalformedDocumentError, match="not valid CBOR"):
        verify(sign_cose(duplicated, chain.leaf_key), chain)


def test_payload_that_is_not_a_map_is_malformed(chain) -> None:  # type: ignore[no-untyped-def]
    for payload in (cbor2.dumps([1, 2]), b"", b"\xbf", cbor2.dumps(payload_fields(chain)) + b"\x00"):
        with pytest.raises(MalformedDocumentError):
            verify(sign_cose(payload, chain.leaf_key), chain)


# --- chain constraints (§2.3, §2.4 step 5) ---------------------------------------------


@pytest.mark.parametrize(
    "specs, message",
    [
        (bend(4, ca=True), "leaf certificate is a CA"),
        (bend(4, digital_signature=False), "lacks digitalSignature"),
        (bend(3, key_cert_sign=False), "cabundle.3. is a CA whose keyUsage lacks keyCertSign"),
        (bend(2, ca=False, path_length=None), "cabundle.2. is not a CA"),
        (bend(2, ca=None), "cabundle.2. is not a CA"),
        (bend(1, path_length=1), "cabundle.1. allows pathLen 1 but 2"),
        (bend(3, path_length=None, ca=True), None),  # no pathLen is no limit: accepted
        (
            bend(2, extra=((x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.99999.1"), b"\x05\x00"), True),)),
            "unrecognised critical extension",
        ),
    ],
)
def test_chain_constraints(specs, message: str | None) -> None:  # type: ignore[no-untyped-def]
    bent = build_chain(specs)
    data = make_document(bent)
    if message is None:
        assert verify(data, bent, chain_cache=ChainCache()).module_id
        return
    with pytest.raises(CertificateChainError, match=message):
        verify(data, bent, chain_cache=ChainCache())


def test_a_rogue_intermediate_under_the_pinned_root_is_refused() -> None:
    # cabundle[0] is the pinned root, but the regional CA was signed by someone else.
    rogue = build_chain(signer_override={1: 40})
    with pytest.raises(CertificateChainError, match="cabundle.1. was not issued by cabundle.0."):
        verify(make_document(rogue), rogue, chain_cache=ChainCache())


def test_a_leaf_that_is_not_p384_is_unsupported() -> None:
    p256 = ec.generate_private_key(ec.SECP256R1()).public_key()
    bent = build_chain(bend(4, key=lambda: p256))
    with pytest.raises(UnsupportedAlgorithmError, match="secp256r1"):
        verify(make_document(bent), bent, chain_cache=ChainCache())


def test_a_shuffled_cabundle_is_refused(chain) -> None:  # type: ignore[no-untyped-def]
    fields = payload_fields(chain)
    fields["cabundle"] = [chain.cabundle[0], chain.cabundle[2], chain.cabundle[1], chain.cabundle[3]]
    data = sign_cose(encode_map(fields, definite=True), chain.leaf_key)
    with pytest.raises(CertificateChainError):
        verify(data, chain, chain_cache=ChainCache())


def test_garbage_certificates_are_chain_errors(chain) -> None:  # type: ignore[no-untyped-def]
    for field, value in (("certificate", b"\x30\x03\x02\x01\x01"), ("cabundle", [chain.root_der, b"junk"])):
        fields = payload_fields(chain)
        fields[field] = value
        with pytest.raises(CertificateChainError, match="not a usable DER X.509"):
            verify(sign_cose(encode_map(fields, definite=True), chain.leaf_key), chain)


# --- generated garbage -----------------------------------------------------------------

cbor_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False)
    | st.binary(max_size=80) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5)
    | st.dictionaries(st.integers(-3, 40) | st.text(max_size=12), inner, max_size=6)
    | st.builds(cbor2.CBORTag, st.sampled_from([0, 1, 2, 18, 24, 258, 1000]), inner),
    max_leaves=25,
)
HYPOTHESIS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@HYPOTHESIS
@given(data=st.binary(max_size=300))
def test_random_bytes_raise_only_verification_errors(chain, data: bytes) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(VerificationError):
        verify(data, chain)


@HYPOTHESIS
@given(value=cbor_values)
def test_random_cbor_raises_only_verification_errors(chain, value: Any) -> None:  # type: ignore[no-untyped-def]
    for data in (cbor2.dumps(value), cbor2.dumps([b"\xa1\x01\x38\x22", {}, cbor2.dumps(value), bytes(96)])):
        with pytest.raises(VerificationError):
            verify(data, chain)


@HYPOTHESIS
@given(
    field=st.sampled_from([
        "module_id", "digest", "timestamp", "pcrs", "certificate", "cabundle",
        "public_key", "user_data", "nonce", "unexpected",
    ]),
    value=cbor_values,
    definite=st.booleans(),
)
def test_random_field_values_raise_only_verification_errors(chain, field: str, value: Any, definite: bool) -> None:  # type: ignore[no-untyped-def]
    fields = payload_fields(chain, nonce=b"n")
    fields[field] = value
    try:
        payload = encode_map(fields, definite=definite)
    except (cbor2.CBOREncodeError, TypeError, ValueError):
        return  # hypothesis built something cbor2 cannot encode; nothing to verify
    data = sign_cose(payload, chain.leaf_key)
    try:
        document = verify(data, chain, nonce=b"n", max_age=timedelta(days=1))
    except VerificationError:
        return
    # Only harmless substitutions can pass, and then the value is what was signed.
    assert document.nonce == b"n"
    assert dict(document.pcrs) == (value if field == "pcrs" else PCRS)
