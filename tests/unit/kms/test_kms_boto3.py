"""End to end with unmodified boto3: every operation, aliases, ARNs, errors, persistence."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding

from ca import TestCA
from emulator.kms.server import KmsServer

boto3 = pytest.importorskip("boto3")
from botocore.exceptions import ClientError  # noqa: E402


def code(error: pytest.ExceptionInfo[ClientError]) -> str:
    return str(error.value.response["Error"]["Code"])


def client(server: KmsServer, access_key: str = "AKIDEXAMPLE") -> Any:
    return boto3.client("kms", endpoint_url=server.endpoint_url, region_name="us-east-1",
                        aws_access_key_id=access_key, aws_secret_access_key="x")


def test_key_lifecycle_aliases_and_policies(kms: Any) -> None:
    meta = kms.create_key(Description="app key")["KeyMetadata"]
    key_id, arn = meta["KeyId"], meta["Arn"]
    assert arn == f"arn:aws:kms:us-east-1:111122223333:key/{key_id}" and meta["Enabled"] is True
    kms.create_alias(AliasName="alias/app", TargetKeyId=key_id)
    for identifier in (key_id, arn, "alias/app", "arn:aws:kms:us-east-1:111122223333:alias/app"):
        assert kms.describe_key(KeyId=identifier)["KeyMetadata"]["KeyId"] == key_id
    assert {"KeyId": key_id, "KeyArn": arn} in kms.list_keys()["Keys"]
    aliases = kms.list_aliases(KeyId=key_id)["Aliases"]
    assert [(a["AliasName"], a["TargetKeyId"]) for a in aliases] == [("alias/app", key_id)]
    other = kms.create_key()["KeyMetadata"]["KeyId"]
    kms.update_alias(AliasName="alias/app", TargetKeyId=other)
    assert kms.describe_key(KeyId="alias/app")["KeyMetadata"]["KeyId"] == other
    kms.delete_alias(AliasName="alias/app")
    with pytest.raises(ClientError) as raised:
        kms.describe_key(KeyId="alias/app")
    assert code(raised) == "NotFoundException"

    policy = json.loads(kms.get_key_policy(KeyId=key_id, PolicyName="default")["Policy"])
    assert policy["Statement"][0]["Action"] == "kms:*"
    policy["Statement"].append({"Sid": "deny-sign", "Effect": "Deny", "Principal": "*", "Action": "kms:Encrypt", "Resource": "*"})
    kms.put_key_policy(KeyId=key_id, PolicyName="default", Policy=json.dumps(policy))
    with pytest.raises(ClientError) as raised:
        kms.encrypt(KeyId=key_id, Plaintext=b"x")
    assert code(raised) == "AccessDeniedException"
    assert "explicit deny" in raised.value.response["Error"]["Message"]
    with pytest.raises(ClientError) as raised:
        kms.put_key_policy(KeyId=key_id, PolicyName="default", Policy="{")
    assert code(raised) == "MalformedPolicyDocumentException"

    kms.disable_key(KeyId=key_id)
    assert kms.describe_key(KeyId=key_id)["KeyMetadata"]["KeyState"] == "Disabled"
    kms.enable_key(KeyId=key_id)
    scheduled = kms.schedule_key_deletion(KeyId=key_id, PendingWindowInDays=7)
    assert scheduled["KeyState"] == "PendingDeletion" and scheduled["KeyId"] == arn
    with pytest.raises(ClientError) as raised:
        kms.generate_data_key(KeyId=key_id, KeySpec="AES_256")
    assert code(raised) == "KMSInvalidStateException"
    assert kms.cancel_key_deletion(KeyId=key_id)["KeyId"] == arn


def test_symmetric_cryptography(kms: Any) -> None:
    key_id = kms.create_key()["KeyMetadata"]["KeyId"]
    kms.create_alias(AliasName="alias/data", TargetKeyId=key_id)
    context = {"tenant": "a"}
    blob = kms.encrypt(KeyId="alias/data", Plaintext=b"hello", EncryptionContext=context)["CiphertextBlob"]
    assert kms.decrypt(CiphertextBlob=blob, EncryptionContext=context)["Plaintext"] == b"hello"

    with pytest.raises(ClientError) as raised:
        kms.decrypt(CiphertextBlob=blob, EncryptionContext={"tenant": "b"})
    assert code(raised) == "InvalidCiphertextException"
    tampered = blob[:-1] + bytes([blob[-1] ^ 1])
    with pytest.raises(ClientError) as raised:
        kms.decrypt(CiphertextBlob=tampered, EncryptionContext=context)
    assert code(raised) == "InvalidCiphertextException"
    other = kms.create_key()["KeyMetadata"]["KeyId"]
    with pytest.raises(ClientError) as raised:
        kms.decrypt(CiphertextBlob=blob, EncryptionContext=context, KeyId=other)
    assert code(raised) == "IncorrectKeyException"

    moved = kms.re_encrypt(CiphertextBlob=blob, SourceEncryptionContext=context, DestinationKeyId=other)
    assert moved["SourceKeyId"].endswith(key_id) and moved["KeyId"].endswith(other)
    assert kms.decrypt(CiphertextBlob=moved["CiphertextBlob"])["Plaintext"] == b"hello"

    data_key = kms.generate_data_key(KeyId=key_id, KeySpec="AES_256")
    assert len(data_key["Plaintext"]) == 32
    assert kms.decrypt(CiphertextBlob=data_key["CiphertextBlob"])["Plaintext"] == data_key["Plaintext"]
    assert "Plaintext" not in kms.generate_data_key_without_plaintext(KeyId=key_id, NumberOfBytes=64)
    assert len(kms.generate_random(NumberOfBytes=1024)["Plaintext"]) == 1024

    kms.disable_key(KeyId=key_id)
    with pytest.raises(ClientError) as raised:
        kms.decrypt(CiphertextBlob=blob, EncryptionContext=context)
    assert code(raised) == "DisabledException"


def test_asymmetric_operations(kms: Any) -> None:
    key_id = kms.create_key()["KeyMetadata"]["KeyId"]
    pair = kms.generate_data_key_pair(KeyId=key_id, KeyPairSpec="ECC_NIST_P256")
    private = serialization.load_der_private_key(pair["PrivateKeyPlaintext"], None)
    assert private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) == pair["PublicKey"]
    assert kms.decrypt(CiphertextBlob=pair["PrivateKeyCiphertextBlob"])["Plaintext"] == pair["PrivateKeyPlaintext"]
    bare = kms.generate_data_key_pair_without_plaintext(KeyId=key_id, KeyPairSpec="RSA_2048")
    assert "PrivateKeyPlaintext" not in bare and bare["KeyPairSpec"] == "RSA_2048"

    agreement = kms.create_key(KeySpec="ECC_NIST_P384", KeyUsage="KEY_AGREEMENT")["KeyMetadata"]
    assert agreement["KeyAgreementAlgorithms"] == ["ECDH"]
    kms_public = serialization.load_der_public_key(kms.get_public_key(KeyId=agreement["KeyId"])["PublicKey"])
    peer = ec.generate_private_key(ec.SECP384R1())
    peer_spki = peer.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    shared = kms.derive_shared_secret(KeyId=agreement["KeyId"], KeyAgreementAlgorithm="ECDH", PublicKey=peer_spki)
    assert isinstance(kms_public, ec.EllipticCurvePublicKey)
    assert shared["SharedSecret"] == peer.exchange(ec.ECDH(), kms_public)

    signer = kms.create_key(KeySpec="RSA_2048", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["KeyId"]
    signature = kms.sign(KeyId=signer, Message=b"msg", SigningAlgorithm="RSASSA_PSS_SHA_256")["Signature"]
    public = serialization.load_der_public_key(kms.get_public_key(KeyId=signer)["PublicKey"])
    public.verify(signature, b"msg", padding.PSS(padding.MGF1(hashes.SHA256()), 32), hashes.SHA256())  # type: ignore[union-attr,call-arg]
    assert kms.verify(KeyId=signer, Message=b"msg", Signature=signature, SigningAlgorithm="RSASSA_PSS_SHA_256")["SignatureValid"]
    with pytest.raises(ClientError) as raised:
        kms.verify(KeyId=signer, Message=b"other", Signature=signature, SigningAlgorithm="RSASSA_PSS_SHA_256")
    assert code(raised) == "KMSInvalidSignatureException"

    rsa_key = kms.create_key(KeySpec="RSA_3072")["KeyMetadata"]["KeyId"]
    blob = kms.encrypt(KeyId=rsa_key, Plaintext=b"p", EncryptionAlgorithm="RSAES_OAEP_SHA_1")["CiphertextBlob"]
    assert kms.decrypt(KeyId=rsa_key, CiphertextBlob=blob, EncryptionAlgorithm="RSAES_OAEP_SHA_1")["Plaintext"] == b"p"


def test_validation_messages_name_the_field(kms_server: KmsServer) -> None:
    from botocore.config import Config

    unchecked = boto3.client("kms", endpoint_url=kms_server.endpoint_url, region_name="us-east-1",
                             aws_access_key_id="AKIDEXAMPLE", aws_secret_access_key="x",
                             config=Config(parameter_validation=False))
    key_id = unchecked.create_key()["KeyMetadata"]["KeyId"]
    cases = [
        (lambda: unchecked.generate_random(NumberOfBytes=1025),
         "Value '1025' at 'numberOfBytes' failed to satisfy constraint: Member must have value less than or equal to 1024"),
        (lambda: unchecked.generate_random(NumberOfBytes=0), "at 'numberOfBytes'"),
        (lambda: unchecked.encrypt(KeyId=key_id, Plaintext=b"x" * 4097), "Value at 'plaintext' failed"),
        (lambda: unchecked.generate_data_key(KeyId=key_id, KeySpec="AES_512"),
         "Member must satisfy enum value set: [AES_256, AES_128]"),
        (lambda: unchecked.generate_data_key_pair(KeyId=key_id, KeyPairSpec="RSA_1024"), "at 'keyPairSpec'"),
        (lambda: unchecked.describe_key(), "Value null at 'keyId'"),
    ]
    for call, expected in cases:
        with pytest.raises(ClientError) as raised:
            call()
        assert code(raised) == "ValidationException"
        message = raised.value.response["Error"]["Message"]
        assert message.startswith("1 validation error detected: ") and expected in message, message
    with pytest.raises(ClientError) as raised:
        unchecked.generate_random(NumberOfBytes="ten")
    assert code(raised) == "SerializationException" and "NumberOfBytes" in raised.value.response["Error"]["Message"]


def test_another_account_is_denied_by_the_default_policy(kms_server: KmsServer, kms: Any) -> None:
    key_id = kms.create_key()["KeyMetadata"]["KeyId"]
    # The caller is this server's account whatever the access key: any access key works.
    assert client(kms_server, "AKIDOTHER").describe_key(KeyId=key_id)["KeyMetadata"]["KeyId"] == key_id
    policy = json.dumps({"Statement": [
        {"Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::111122223333:user/AKIDEXAMPLE"}, "Action": "kms:*", "Resource": "*"}]})
    kms.put_key_policy(KeyId=key_id, PolicyName="default", Policy=policy)
    with pytest.raises(ClientError) as raised:
        client(kms_server, "AKIDOTHER").describe_key(KeyId=key_id)
    assert code(raised) == "AccessDeniedException"
    assert raised.value.response["Error"]["Message"] == (
        "User: arn:aws:iam::111122223333:user/AKIDOTHER is not authorized to perform: kms:DescribeKey "
        f"on resource: arn:aws:kms:us-east-1:111122223333:key/{key_id} because no resource-based "
        "policy allows the kms:DescribeKey action"
    )


def test_state_survives_a_restart(tmp_path: Path, test_ca: TestCA) -> None:
    state = tmp_path / "kms-state"
    policy = json.dumps({"Statement": [{"Sid": "kept", "Effect": "Allow", "Principal": {"AWS": "111122223333"},
                                        "Action": "kms:*", "Resource": "*"}]})
    with KmsServer(state_dir=state, trusted_roots=[test_ca.root_der]) as server:
        kms = client(server)
        key_id = kms.create_key(Policy=policy)["KeyMetadata"]["KeyId"]
        kms.create_alias(AliasName="alias/kept", TargetKeyId=key_id)
        blob = kms.encrypt(KeyId="alias/kept", Plaintext=b"durable")["CiphertextBlob"]
    with KmsServer(state_dir=state, trusted_roots=[test_ca.root_der]) as server:
        kms = client(server)
        assert kms.decrypt(CiphertextBlob=blob)["Plaintext"] == b"durable"
        assert kms.describe_key(KeyId="alias/kept")["KeyMetadata"]["KeyId"] == key_id
        assert json.loads(kms.get_key_policy(KeyId=key_id)["Policy"])["Statement"][0]["Sid"] == "kept"
    with KmsServer(state_dir=None) as server:  # memory mode: nothing of the above
        assert client(server).list_keys()["Keys"] == []
