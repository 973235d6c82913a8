"""Recipient (nitro-facts §5) over boto3: attested Decrypt, data keys, random, ECDH, refusals."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ca import TestCA
from emulator.kms.cms import decrypt_enveloped_data
from fake_nsm.document_signer import DocumentSigner

from tests.unit.kms.kms_helpers import DEBUG_PCRS, MODULE_ID, PCR0_HEX, PCRS, recipient

boto3 = pytest.importorskip("boto3")
from botocore.exceptions import ClientError  # noqa: E402

ATTESTED = ["kms:Decrypt", "kms:GenerateDataKey", "kms:GenerateDataKeyPair", "kms:DeriveSharedSecret"]


def enclave_policy(pcr0: str = PCR0_HEX, operator: str = "StringEqualsIgnoreCase",
                   key: str = "kms:RecipientAttestation:ImageSha384") -> str:
    """The usual enclave policy: the account administers the key; only the image uses it."""
    root = {"AWS": "arn:aws:iam::111122223333:root"}
    return json.dumps({"Version": "2012-10-17", "Statement": [
        {"Sid": "admin", "Effect": "Allow", "Principal": root, "NotAction": ATTESTED, "Resource": "*"},
        {"Sid": "enclave", "Effect": "Allow", "Principal": root, "Action": ATTESTED, "Resource": "*",
         "Condition": {operator: {key: pcr0}}},
    ]})


def code(raised: pytest.ExceptionInfo[ClientError]) -> str:
    return str(raised.value.response["Error"]["Code"])


def message(raised: pytest.ExceptionInfo[ClientError]) -> str:
    return str(raised.value.response["Error"]["Message"])


@pytest.fixture
def pinned_key(kms: Any) -> str:
    return str(kms.create_key(Policy=enclave_policy())["KeyMetadata"]["KeyId"])


def test_attested_decrypt_releases_only_to_the_enclave(
    kms: Any, pinned_key: str, make_document: Callable[..., bytes], enclave_key: rsa.RSAPrivateKey
) -> None:
    blob = kms.encrypt(KeyId=pinned_key, Plaintext=b"the secret", EncryptionContext={"app": "x"})["CiphertextBlob"]
    reply = kms.decrypt(CiphertextBlob=blob, EncryptionContext={"app": "x"}, Recipient=recipient(make_document()))
    assert "Plaintext" not in reply and "KeyMaterialId" not in reply
    assert reply["KeyId"].endswith(pinned_key)
    assert decrypt_enveloped_data(reply["CiphertextForRecipient"], enclave_key) == b"the secret"


def test_attested_data_key_pair_random_and_shared_secret(
    kms: Any, pinned_key: str, make_document: Callable[..., bytes], enclave_key: rsa.RSAPrivateKey
) -> None:
    document = recipient(make_document())
    data_key = kms.generate_data_key(KeyId=pinned_key, NumberOfBytes=32, Recipient=document)
    assert "Plaintext" not in data_key
    released = decrypt_enveloped_data(data_key["CiphertextForRecipient"], enclave_key)
    again = kms.decrypt(CiphertextBlob=data_key["CiphertextBlob"], Recipient=document)
    assert len(released) == 32 and decrypt_enveloped_data(again["CiphertextForRecipient"], enclave_key) == released

    pair = kms.generate_data_key_pair(KeyId=pinned_key, KeyPairSpec="ECC_NIST_P256", Recipient=document)
    assert "PrivateKeyPlaintext" not in pair
    private = serialization.load_der_private_key(decrypt_enveloped_data(pair["CiphertextForRecipient"], enclave_key), None)
    assert private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) == pair["PublicKey"]

    random = kms.generate_random(NumberOfBytes=48, Recipient=document)
    assert "Plaintext" not in random
    assert len(decrypt_enveloped_data(random["CiphertextForRecipient"], enclave_key)) == 48

    agreement = kms.create_key(KeySpec="ECC_NIST_P256", KeyUsage="KEY_AGREEMENT", Policy=enclave_policy())["KeyMetadata"]["KeyId"]
    kms_public = serialization.load_der_public_key(kms.get_public_key(KeyId=agreement)["PublicKey"])
    peer = ec.generate_private_key(ec.SECP256R1())
    spki = peer.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    shared = kms.derive_shared_secret(KeyId=agreement, KeyAgreementAlgorithm="ECDH", PublicKey=spki, Recipient=document)
    assert "SharedSecret" not in shared
    assert isinstance(kms_public, ec.EllipticCurvePublicKey)
    assert decrypt_enveloped_data(shared["CiphertextForRecipient"], enclave_key) == peer.exchange(ec.ECDH(), kms_public)


@pytest.mark.parametrize("operator", ["StringEquals", "StringEqualsIgnoreCase"])
def test_pcr_policy_allows_the_image_and_refuses_others(
    kms: Any, make_document: Callable[..., bytes], operator: str
) -> None:
    key_id = kms.create_key(Policy=enclave_policy(operator=operator, key="kms:RecipientAttestation:PCR0"))["KeyMetadata"]["KeyId"]
    blob = kms.encrypt(KeyId=key_id, Plaintext=b"s")["CiphertextBlob"]
    assert "CiphertextForRecipient" in kms.decrypt(CiphertextBlob=blob, Recipient=recipient(make_document()))
    other_image = {**PCRS, 0: bytes.fromhex("cd" * 48)}
    with pytest.raises(ClientError) as raised:
        kms.decrypt(CiphertextBlob=blob, Recipient=recipient(make_document(pcrs=other_image)))
    assert code(raised) == "AccessDeniedException"
    assert "because no resource-based policy allows the kms:Decrypt action" in message(raised)


def test_missing_recipient_and_debug_documents_are_denied(
    kms: Any, pinned_key: str, make_document: Callable[..., bytes]
) -> None:
    blob = kms.encrypt(KeyId=pinned_key, Plaintext=b"s")["CiphertextBlob"]
    with pytest.raises(ClientError) as raised:
        kms.decrypt(CiphertextBlob=blob)
    assert code(raised) == "AccessDeniedException"
    with pytest.raises(ClientError) as raised:
        kms.generate_data_key(KeyId=pinned_key, KeySpec="AES_256")
    assert code(raised) == "AccessDeniedException"
    # A debug-mode document verifies, but its zero PCRs match no PCR policy.
    with pytest.raises(ClientError) as raised:
        kms.decrypt(CiphertextBlob=blob, Recipient=recipient(make_document(pcrs=DEBUG_PCRS)))
    assert code(raised) == "AccessDeniedException"


def test_debug_document_passes_a_policy_without_pcr_conditions(
    kms: Any, make_document: Callable[..., bytes], enclave_key: rsa.RSAPrivateKey
) -> None:
    key_id = kms.create_key()["KeyMetadata"]["KeyId"]
    blob = kms.encrypt(KeyId=key_id, Plaintext=b"dbg")["CiphertextBlob"]
    reply = kms.decrypt(CiphertextBlob=blob, Recipient=recipient(make_document(pcrs=DEBUG_PCRS)))
    assert decrypt_enveloped_data(reply["CiphertextForRecipient"], enclave_key) == b"dbg"


def _refused(kms: Any, blob: bytes, document: dict[str, Any]) -> pytest.ExceptionInfo[ClientError]:
    with pytest.raises(ClientError) as raised:
        kms.decrypt(CiphertextBlob=blob, Recipient=document)
    body = raised.value.response
    assert "Plaintext" not in body and "CiphertextForRecipient" not in body
    return raised


def test_bad_documents_are_refused_and_nothing_is_released(
    kms: Any, test_ca: TestCA, foreign_ca: TestCA, make_document: Callable[..., bytes], enclave_spki: bytes
) -> None:
    key_id = kms.create_key()["KeyMetadata"]["KeyId"]  # default policy: only the document can refuse
    blob = kms.encrypt(KeyId=key_id, Plaintext=b"s")["CiphertextBlob"]

    raised = _refused(kms, blob, recipient(make_document(ca=foreign_ca)))
    assert code(raised) == "ValidationException" and "not one of the trusted roots" in message(raised)

    past = datetime.now(timezone.utc) - timedelta(minutes=30)
    stale = DocumentSigner(test_ca, MODULE_ID, clock=lambda: past).sign(PCRS, public_key=enclave_spki)
    raised = _refused(kms, blob, recipient(stale))
    assert code(raised) == "ValidationException" and "old" in message(raised)

    tampered = bytearray(make_document())
    tampered[-5] ^= 0xFF
    assert code(_refused(kms, blob, recipient(bytes(tampered)))) == "ValidationException"

    raised = _refused(kms, blob, recipient(make_document(public_key=None)))
    assert code(raised) == "ValidationException" and "public_key" in message(raised)
    ec_spki = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    raised = _refused(kms, blob, recipient(make_document(public_key=ec_spki)))
    assert code(raised) == "ValidationException" and "RSA" in message(raised)
    raised = _refused(kms, blob, recipient(make_document(public_key=b"not a key")))
    assert code(raised) == "ValidationException"

    raised = _refused(kms, blob, recipient(make_document(), algorithm="RSAES_OAEP_SHA_1"))
    assert code(raised) == "ValidationException"
    assert "'recipient.keyEncryptionAlgorithm' failed to satisfy constraint: Member must satisfy enum value set: [RSAES_OAEP_SHA_256]" in message(raised)

    raised = _refused(kms, blob, recipient(b"\x00" * 262145))
    assert code(raised) == "ValidationException"
    assert "Value at 'recipient.attestationDocument' failed to satisfy constraint: Member must have length less than or equal to 262144" in message(raised)

    # The server still serves, and a good document still works.
    assert "CiphertextForRecipient" in kms.decrypt(CiphertextBlob=blob, Recipient=recipient(make_document()))
