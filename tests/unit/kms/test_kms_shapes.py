"""Request validation: AWS's SerializationException / ValidationException wording."""

from __future__ import annotations

import re

import pytest

from emulator.kms.errors import SerializationException, ValidationException
from emulator.kms.shapes import OPERATIONS, validate_request


def test_every_violation_is_reported_in_one_message() -> None:
    with pytest.raises(ValidationException) as raised:
        validate_request("GenerateDataKey", {"NumberOfBytes": 0, "KeySpec": "AES_1"})
    assert raised.value.message == (
        "3 validation errors detected: "
        "Value null at 'keyId' failed to satisfy constraint: Member must not be null; "
        "Value '0' at 'numberOfBytes' failed to satisfy constraint: Member must have value greater than or equal to 1; "
        "Value 'AES_1' at 'keySpec' failed to satisfy constraint: Member must satisfy enum value set: [AES_256, AES_128]"
    )


def test_patterns_nested_members_and_blob_decoding() -> None:
    with pytest.raises(ValidationException, match="at 'aliasName' failed to satisfy constraint: Member must satisfy regular expression pattern"):
        validate_request("CreateAlias", {"AliasName": "alias/with space", "TargetKeyId": "k"})
    with pytest.raises(ValidationException, match="Value at 'recipient.attestationDocument'"):
        validate_request("Decrypt", {"CiphertextBlob": "eA==", "Recipient": {"AttestationDocument": ""}})
    params = validate_request("Decrypt", {"CiphertextBlob": "eA==", "Unknown": 1, "KeyId": None})
    assert params == {"CiphertextBlob": b"x"}


@pytest.mark.parametrize(
    ("operation", "body", "field"),
    [("GenerateRandom", {"NumberOfBytes": 1.5}, "NumberOfBytes"),
     ("Encrypt", {"KeyId": "k", "Plaintext": "not base64!"}, "Plaintext"),
     ("ListKeys", {"Limit": "10"}, "Limit"),
     ("CreateKey", {"Tags": [{"TagKey": 1, "TagValue": "v"}]}, "Tags[0].TagKey"),
     ("Decrypt", {"CiphertextBlob": "eA==", "Recipient": {"AttestationDocument": 5}}, "Recipient.AttestationDocument")],
)
def test_wrong_types_are_serialization_errors_naming_the_member(operation: str, body: dict[str, object], field: str) -> None:
    with pytest.raises(SerializationException, match=re.escape(f"'{field}'")):
        validate_request(operation, body)


def test_the_recipient_operations_take_a_recipient() -> None:
    # nitro-facts §5: exactly these five operations accept Recipient.
    with_recipient = sorted(name for name, shape in OPERATIONS.items() if "Recipient" in shape)
    assert with_recipient == ["Decrypt", "DeriveSharedSecret", "GenerateDataKey", "GenerateDataKeyPair", "GenerateRandom"]
