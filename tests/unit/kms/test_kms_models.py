"""The KMS backend without HTTP: keys, aliases, states, ciphertext, data keys, persistence."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from emulator.kms.backend import KmsBackend
from emulator.kms.errors import (
    AccessDeniedException,
    AlreadyExistsException,
    DisabledException,
    IncorrectKeyException,
    InvalidAliasNameException,
    InvalidArnException,
    InvalidCiphertextException,
    InvalidKeyUsageException,
    KMSInvalidStateException,
    MalformedPolicyDocumentException,
    NotFoundException,
    UnsupportedOperationException,
    ValidationException,
)
from emulator.kms.models import Caller
from emulator.kms.store import SqliteStore

ALICE = Caller.from_access_key("AKIDALICE")
OUTSIDER = Caller.from_access_key("AKIDEVE", "444455556666")


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def backend(clock: Clock) -> KmsBackend:
    return KmsBackend(clock=clock)


def new_key(backend: KmsBackend, **params: object) -> str:
    return str(backend.dispatch("CreateKey", ALICE, params)["KeyMetadata"]["KeyId"])


def test_create_key_metadata_is_aws_shaped(backend: KmsBackend) -> None:
    meta = backend.dispatch("CreateKey", ALICE, {"Description": "d"})["KeyMetadata"]
    assert meta["Arn"] == f"arn:aws:kms:us-east-1:111122223333:key/{meta['KeyId']}"
    assert (meta["KeySpec"], meta["KeyUsage"], meta["KeyState"]) == ("SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT", "Enabled")
    assert meta["EncryptionAlgorithms"] == ["SYMMETRIC_DEFAULT"] and meta["AWSAccountId"] == "111122223333"
    policy = json.loads(backend.dispatch("GetKeyPolicy", ALICE, {"KeyId": meta["KeyId"]})["Policy"])
    assert policy["Statement"][0]["Sid"] == "Enable IAM User Permissions"
    assert policy["Statement"][0]["Principal"] == {"AWS": "arn:aws:iam::111122223333:root"}


@pytest.mark.parametrize(
    ("spec", "usage", "error"),
    [
        ("SYMMETRIC_DEFAULT", "SIGN_VERIFY", ValidationException),
        ("ECC_NIST_P256", None, ValidationException),  # default ENCRYPT_DECRYPT is not allowed
        ("ECC_SECG_P256K1", "KEY_AGREEMENT", ValidationException),
        ("HMAC_256", "GENERATE_VERIFY_MAC", UnsupportedOperationException),
    ],
)
def test_create_key_refuses_incompatible_spec_and_usage(
    backend: KmsBackend, spec: str, usage: str | None, error: type[Exception]
) -> None:
    params = {"KeySpec": spec} | ({"KeyUsage": usage} if usage else {})
    with pytest.raises(error):
        backend.dispatch("CreateKey", ALICE, params)


def test_identifiers_resolve_as_aws(backend: KmsBackend) -> None:
    key_id = new_key(backend)
    backend.dispatch("CreateAlias", ALICE, {"AliasName": "alias/app", "TargetKeyId": key_id})
    arn = f"arn:aws:kms:us-east-1:111122223333:key/{key_id}"
    for identifier in (key_id, arn, "alias/app", "arn:aws:kms:us-east-1:111122223333:alias/app"):
        assert backend.dispatch("DescribeKey", ALICE, {"KeyId": identifier})["KeyMetadata"]["KeyId"] == key_id
    # Key-administration operations refuse aliases.
    with pytest.raises(NotFoundException, match="Invalid keyId"):
        backend.dispatch("DisableKey", ALICE, {"KeyId": "alias/app"})
    with pytest.raises(NotFoundException, match="does not exist"):
        backend.dispatch("DescribeKey", ALICE, {"KeyId": arn.replace("us-east-1", "eu-west-1")})
    with pytest.raises(NotFoundException, match="is not found"):
        backend.dispatch("DescribeKey", ALICE, {"KeyId": "alias/nope"})
    with pytest.raises(NotFoundException, match="Invalid keyId"):
        backend.dispatch("DescribeKey", ALICE, {"KeyId": "not-a-key"})
    with pytest.raises(InvalidArnException):
        backend.dispatch("DescribeKey", ALICE, {"KeyId": "arn:aws:kms:us-east-1:111122223333:thing"})


def test_alias_rules(backend: KmsBackend) -> None:
    key_id, other = new_key(backend), new_key(backend)
    backend.dispatch("CreateAlias", ALICE, {"AliasName": "alias/a", "TargetKeyId": key_id})
    with pytest.raises(AlreadyExistsException, match="alias/a already exists"):
        backend.dispatch("CreateAlias", ALICE, {"AliasName": "alias/a", "TargetKeyId": other})
    with pytest.raises(InvalidAliasNameException):
        backend.dispatch("CreateAlias", ALICE, {"AliasName": "alias/aws/s3", "TargetKeyId": key_id})
    with pytest.raises(ValidationException):
        backend.dispatch("CreateAlias", ALICE, {"AliasName": "noprefix", "TargetKeyId": key_id})
    with pytest.raises(ValidationException, match="Aliases must refer to keys"):
        backend.dispatch("CreateAlias", ALICE, {"AliasName": "alias/b", "TargetKeyId": "alias/a"})
    backend.dispatch("UpdateAlias", ALICE, {"AliasName": "alias/a", "TargetKeyId": other})
    listed = backend.dispatch("ListAliases", ALICE, {"KeyId": other})["Aliases"]
    assert [a["AliasName"] for a in listed] == ["alias/a"]
    backend.dispatch("DeleteAlias", ALICE, {"AliasName": "alias/a"})
    assert backend.dispatch("ListAliases", ALICE, {})["Aliases"] == []


def test_list_keys_paginates(backend: KmsBackend) -> None:
    created = [new_key(backend) for _ in range(3)]
    first = backend.dispatch("ListKeys", ALICE, {"Limit": 2})
    assert first["Truncated"] is True and len(first["Keys"]) == 2
    second = backend.dispatch("ListKeys", ALICE, {"Limit": 2, "Marker": first["NextMarker"]})
    assert second["Truncated"] is False
    assert [k["KeyId"] for k in first["Keys"] + second["Keys"]] == created


def test_encrypt_decrypt_round_trip_and_context_binding(backend: KmsBackend) -> None:
    key_id = new_key(backend)
    context = {"purpose": "test", "tenant": "a"}
    blob = backend.dispatch("Encrypt", ALICE, {"KeyId": key_id, "Plaintext": b"secret", "EncryptionContext": context})["CiphertextBlob"]
    assert b"secret" not in blob
    # No KeyId needed: the blob names its key. Context key order does not matter.
    reply = backend.dispatch("Decrypt", ALICE, {"CiphertextBlob": blob, "EncryptionContext": dict(reversed(context.items()))})
    assert reply["Plaintext"] == b"secret" and reply["KeyId"].endswith(key_id)
    for wrong in ({}, {"purpose": "test"}, {"purpose": "test", "tenant": "b"}):
        with pytest.raises(InvalidCiphertextException):
            backend.dispatch("Decrypt", ALICE, {"CiphertextBlob": blob, "EncryptionContext": wrong})


@pytest.mark.parametrize("position", [0, 1, 17, 30, -1])
def test_tampered_or_truncated_ciphertext_is_refused(backend: KmsBackend, position: int) -> None:
    blob = bytearray(backend.dispatch("Encrypt", ALICE, {"KeyId": new_key(backend), "Plaintext": b"x"})["CiphertextBlob"])
    blob[position] ^= 0x01
    with pytest.raises(InvalidCiphertextException):
        backend.dispatch("Decrypt", ALICE, {"CiphertextBlob": bytes(blob)})
    with pytest.raises(InvalidCiphertextException):
        backend.dispatch("Decrypt", ALICE, {"CiphertextBlob": bytes(blob[:20])})


def test_decrypt_with_another_key_id_is_incorrect_key(backend: KmsBackend) -> None:
    key_id, other = new_key(backend), new_key(backend)
    blob = backend.dispatch("Encrypt", ALICE, {"KeyId": key_id, "Plaintext": b"x"})["CiphertextBlob"]
    with pytest.raises(IncorrectKeyException):
        backend.dispatch("Decrypt", ALICE, {"CiphertextBlob": blob, "KeyId": other})
    assert backend.dispatch("Decrypt", ALICE, {"CiphertextBlob": blob, "KeyId": key_id})["Plaintext"] == b"x"


def test_disabled_and_pending_deletion_keys(backend: KmsBackend, clock: Clock) -> None:
    key_id = new_key(backend)
    blob = backend.dispatch("Encrypt", ALICE, {"KeyId": key_id, "Plaintext": b"x"})["CiphertextBlob"]
    backend.dispatch("DisableKey", ALICE, {"KeyId": key_id})
    with pytest.raises(DisabledException, match="is disabled"):
        backend.dispatch("Decrypt", ALICE, {"CiphertextBlob": blob})
    backend.dispatch("EnableKey", ALICE, {"KeyId": key_id})
    scheduled = backend.dispatch("ScheduleKeyDeletion", ALICE, {"KeyId": key_id, "PendingWindowInDays": 7})
    assert scheduled["KeyState"] == "PendingDeletion" and scheduled["DeletionDate"] == clock.now + 7 * 86400
    for operation, params in (("Decrypt", {"CiphertextBlob": blob}), ("EnableKey", {"KeyId": key_id}),
                              ("GenerateDataKey", {"KeyId": key_id, "KeySpec": "AES_256"})):
        with pytest.raises(KMSInvalidStateException, match="pending deletion"):
            backend.dispatch(operation, ALICE, params)
    backend.dispatch("CancelKeyDeletion", ALICE, {"KeyId": key_id})
    assert backend.dispatch("DescribeKey", ALICE, {"KeyId": key_id})["KeyMetadata"]["KeyState"] == "Disabled"
    with pytest.raises(ValidationException, match="pendingWindowInDays"):
        backend.dispatch("ScheduleKeyDeletion", ALICE, {"KeyId": key_id, "PendingWindowInDays": 6})
    backend.dispatch("ScheduleKeyDeletion", ALICE, {"KeyId": key_id})
    clock.now += 31 * 86400  # the window passes: the key is gone
    with pytest.raises(NotFoundException):
        backend.dispatch("DescribeKey", ALICE, {"KeyId": key_id})


def test_data_keys(backend: KmsBackend) -> None:
    key_id = new_key(backend)
    reply = backend.dispatch("GenerateDataKey", ALICE, {"KeyId": key_id, "KeySpec": "AES_128", "EncryptionContext": {"a": "b"}})
    assert len(reply["Plaintext"]) == 16
    opened = backend.dispatch("Decrypt", ALICE, {"CiphertextBlob": reply["CiphertextBlob"], "EncryptionContext": {"a": "b"}})
    assert opened["Plaintext"] == reply["Plaintext"]
    without = backend.dispatch("GenerateDataKeyWithoutPlaintext", ALICE, {"KeyId": key_id, "NumberOfBytes": 7})
    assert "Plaintext" not in without
    assert len(backend.dispatch("Decrypt", ALICE, {"CiphertextBlob": without["CiphertextBlob"]})["Plaintext"]) == 7
    for params in ({"KeyId": key_id}, {"KeyId": key_id, "KeySpec": "AES_256", "NumberOfBytes": 32}):
        with pytest.raises(ValidationException, match="number of bytes or key spec"):
            backend.dispatch("GenerateDataKey", ALICE, params)


def test_asymmetric_keys_and_usage_errors(backend: KmsBackend) -> None:
    rsa_id = new_key(backend, KeySpec="RSA_2048")
    blob = backend.dispatch("Encrypt", ALICE, {"KeyId": rsa_id, "Plaintext": b"hi", "EncryptionAlgorithm": "RSAES_OAEP_SHA_256"})["CiphertextBlob"]
    assert len(blob) == 256
    reply = backend.dispatch("Decrypt", ALICE, {"CiphertextBlob": blob, "KeyId": rsa_id, "EncryptionAlgorithm": "RSAES_OAEP_SHA_256"})
    assert reply["Plaintext"] == b"hi"
    with pytest.raises(InvalidKeyUsageException):
        backend.dispatch("Encrypt", ALICE, {"KeyId": rsa_id, "Plaintext": b"hi"})  # SYMMETRIC_DEFAULT
    with pytest.raises(InvalidKeyUsageException):
        backend.dispatch("GenerateDataKey", ALICE, {"KeyId": rsa_id, "KeySpec": "AES_256"})
    with pytest.raises(UnsupportedOperationException):
        backend.dispatch("GetPublicKey", ALICE, {"KeyId": new_key(backend)})
    sign_id = new_key(backend, KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")
    signed = backend.dispatch("Sign", ALICE, {"KeyId": sign_id, "Message": b"m", "SigningAlgorithm": "ECDSA_SHA_256"})
    verified = backend.dispatch("Verify", ALICE, {"KeyId": sign_id, "Message": b"m", "Signature": signed["Signature"], "SigningAlgorithm": "ECDSA_SHA_256"})
    assert verified["SignatureValid"] is True
    with pytest.raises(InvalidKeyUsageException):
        backend.dispatch("Sign", ALICE, {"KeyId": sign_id, "Message": b"m", "SigningAlgorithm": "ECDSA_SHA_384"})


def test_policy_enforced_and_lockout_check(backend: KmsBackend) -> None:
    key_id = new_key(backend)
    with pytest.raises(AccessDeniedException, match="because no resource-based policy allows the kms:Encrypt action"):
        backend.dispatch("Encrypt", OUTSIDER, {"KeyId": key_id, "Plaintext": b"x"})
    locked = json.dumps({"Statement": [{"Effect": "Allow", "Principal": "*", "Action": "kms:Decrypt", "Resource": "*"}]})
    with pytest.raises(MalformedPolicyDocumentException, match="will not allow you to update"):
        backend.dispatch("PutKeyPolicy", ALICE, {"KeyId": key_id, "Policy": locked})
    with pytest.raises(MalformedPolicyDocumentException):
        backend.dispatch("PutKeyPolicy", ALICE, {"KeyId": key_id, "Policy": "{not json"})
    backend.dispatch("PutKeyPolicy", ALICE, {"KeyId": key_id, "Policy": locked, "BypassPolicyLockoutSafetyCheck": True})
    with pytest.raises(AccessDeniedException):
        backend.dispatch("GetKeyPolicy", ALICE, {"KeyId": key_id})


def test_sqlite_store_persists_with_private_modes(tmp_path: Path) -> None:
    state = tmp_path / "state" / "kms"
    first = KmsBackend(store=SqliteStore(state))
    key_id = new_key(first)
    first.dispatch("CreateAlias", ALICE, {"AliasName": "alias/kept", "TargetKeyId": key_id})
    blob = first.dispatch("Encrypt", ALICE, {"KeyId": key_id, "Plaintext": b"kept"})["CiphertextBlob"]
    first.dispatch("DisableKey", ALICE, {"KeyId": key_id})
    first.close()
    assert stat.S_IMODE(os.stat(state).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(state / "kms.sqlite3").st_mode) == 0o600
    second = KmsBackend(store=SqliteStore(state))
    assert second.dispatch("DescribeKey", ALICE, {"KeyId": "alias/kept"})["KeyMetadata"]["KeyState"] == "Disabled"
    second.dispatch("EnableKey", ALICE, {"KeyId": key_id})
    assert second.dispatch("Decrypt", ALICE, {"CiphertextBlob": blob})["Plaintext"] == b"kept"
    second.close()


def test_memory_backend_keeps_nothing() -> None:
    new_key(KmsBackend())
    assert KmsBackend().dispatch("ListKeys", ALICE, {})["Keys"] == []


def test_key_repr_hides_material(backend: KmsBackend) -> None:
    key = backend.resolve(new_key(backend), allow_alias=False)
    assert key.material.hex() not in repr(key) and "material" not in repr(key)
