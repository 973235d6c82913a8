"""The request shapes of the implemented operations, and their validation.

Every member name, type and constraint below is copied from botocore's service model
(``botocore/data/kms/2014-11-01/service-2.json``, apiVersion 2014-11-01). Two stages, as
AWS's JSON 1.1 front end answers them:

1. types: a member of the wrong JSON type, or a blob that is not base64, is a
   ``SerializationException`` (the message names the member);
2. constraints: required members, lengths, ranges, enums and patterns are collected into
   one ``ValidationException`` worded as AWS words it::

       1 validation error detected: Value '2000' at 'numberOfBytes' failed to satisfy
       constraint: Member must have value less than or equal to 1024

   (member paths are lowerCamelCase, nested ones dotted, e.g. ``recipient.keyEncryptionAlgorithm``;
   blob values are never echoed, as AWS omits sensitive values: "Value at 'plaintext' ...").

Members not in the model are ignored, as newer SDKs may send members this server predates.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from emulator.kms.errors import SerializationException, ValidationException

__all__ = ["Member", "OPERATIONS", "validate_request"]


@dataclass(frozen=True)
class Member:
    """One member of a request shape (botocore's ``shapes`` entry, reduced)."""

    kind: str  # string, blob, integer, boolean, map, list, structure
    required: bool = False
    min: int | None = None
    max: int | None = None
    enum: tuple[str, ...] | None = None
    pattern: str | None = None
    members: Mapping[str, Member] = field(default_factory=dict)  # structure
    item: Member | None = None  # list


# -------------------------------------------------------------------- shared shapes

def _key_id(required: bool = False) -> Member:
    return Member("string", required=required, min=1, max=2048)  # KeyIdType


_CIPHERTEXT = Member("blob", min=1, max=6144)  # CiphertextType
_PLAINTEXT = Member("blob", min=1, max=4096)  # PlaintextType (sensitive)
_CONTEXT = Member("map")  # EncryptionContextType: map<string, string>
_GRANT_TOKENS = Member("list", min=0, max=10, item=Member("string", min=1, max=8192))
_BOOLEAN = Member("boolean")
_ENCRYPTION_ALGORITHM = Member(
    "string", enum=("SYMMETRIC_DEFAULT", "RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256", "SM2PKE")
)
_KEY_SPECS = (
    "RSA_2048", "RSA_3072", "RSA_4096", "ECC_NIST_P256", "ECC_NIST_P384", "ECC_NIST_P521",
    "ECC_SECG_P256K1", "SYMMETRIC_DEFAULT", "HMAC_224", "HMAC_256", "HMAC_384", "HMAC_512",
    "SM2", "ML_DSA_44", "ML_DSA_65", "ML_DSA_87", "ECC_NIST_EDWARDS25519", "ML_KEM_512",
    "ML_KEM_768", "ML_KEM_1024",
)
_CUSTOMER_MASTER_KEY_SPECS = _KEY_SPECS[:13]
_KEY_USAGES = (
    "SIGN_VERIFY", "ENCRYPT_DECRYPT", "GENERATE_VERIFY_MAC", "KEY_AGREEMENT",
    "ENCAPSULATE_DECAPSULATE",
)
_DATA_KEY_PAIR_SPECS = (
    "RSA_2048", "RSA_3072", "RSA_4096", "ECC_NIST_P256", "ECC_NIST_P384", "ECC_NIST_P521",
    "ECC_SECG_P256K1", "SM2", "ECC_NIST_EDWARDS25519", "ML_KEM_512", "ML_KEM_768",
    "ML_KEM_1024",
)
_SIGNING_ALGORITHMS = (
    "RSASSA_PSS_SHA_256", "RSASSA_PSS_SHA_384", "RSASSA_PSS_SHA_512",
    "RSASSA_PKCS1_V1_5_SHA_256", "RSASSA_PKCS1_V1_5_SHA_384", "RSASSA_PKCS1_V1_5_SHA_512",
    "ECDSA_SHA_256", "ECDSA_SHA_384", "ECDSA_SHA_512", "SM2DSA", "ML_DSA_SHAKE_256",
    "ED25519_SHA_512", "ED25519_PH_SHA_512",
)
# RecipientInfo: AttestationDocumentType 1..262144, KeyEncryptionMechanism enum.
_RECIPIENT = Member(
    "structure",
    members={
        "KeyEncryptionAlgorithm": Member("string", enum=("RSAES_OAEP_SHA_256",)),
        "AttestationDocument": Member("blob", min=1, max=262144),
    },
)
_POLICY = Member("string", min=1, max=131072, pattern="[\\u0009\\u000A\\u000D\\u0020-\\u00FF]+")
_POLICY_NAME = Member("string", min=1, max=128, pattern="[\\w]+")
_ALIAS_NAME = Member("string", required=True, min=1, max=256, pattern="^[a-zA-Z0-9:/_-]+$")
_LIMIT = Member("integer", min=1, max=1000)
_MARKER = Member("string", min=1, max=1024, pattern="[\\u0020-\\u00FF]*")
_NUMBER_OF_BYTES = Member("integer", min=1, max=1024)
_DATA_KEY_SPEC = Member("string", enum=("AES_256", "AES_128"))
_TAGS = Member(
    "list",
    item=Member(
        "structure",
        members={
            "TagKey": Member("string", required=True, min=1, max=128),
            "TagValue": Member("string", required=True, min=0, max=256),
        },
    ),
)
_DRY_RUN = {"DryRun": _BOOLEAN}

OPERATIONS: dict[str, dict[str, Member]] = {
    "CreateKey": {
        "Policy": _POLICY,
        "Description": Member("string", min=0, max=8192),
        "KeyUsage": Member("string", enum=_KEY_USAGES),
        "CustomerMasterKeySpec": Member("string", enum=_CUSTOMER_MASTER_KEY_SPECS),
        "KeySpec": Member("string", enum=_KEY_SPECS),
        "Origin": Member("string", enum=("AWS_KMS", "EXTERNAL", "AWS_CLOUDHSM", "EXTERNAL_KEY_STORE")),
        "CustomKeyStoreId": Member("string", min=1, max=64),
        "BypassPolicyLockoutSafetyCheck": _BOOLEAN,
        "Tags": _TAGS,
        "MultiRegion": _BOOLEAN,
    },
    "DescribeKey": {"KeyId": _key_id(True), "GrantTokens": _GRANT_TOKENS},
    "ListKeys": {"Limit": _LIMIT, "Marker": _MARKER},
    "CreateAlias": {"AliasName": _ALIAS_NAME, "TargetKeyId": _key_id(True)},
    "UpdateAlias": {"AliasName": _ALIAS_NAME, "TargetKeyId": _key_id(True)},
    "DeleteAlias": {"AliasName": _ALIAS_NAME},
    "ListAliases": {"KeyId": _key_id(), "Limit": _LIMIT, "Marker": _MARKER},
    "PutKeyPolicy": {
        "KeyId": _key_id(True),
        "PolicyName": _POLICY_NAME,
        "Policy": Member("string", required=True, min=1, max=131072,
                         pattern="[\\u0009\\u000A\\u000D\\u0020-\\u00FF]+"),
        "BypassPolicyLockoutSafetyCheck": _BOOLEAN,
    },
    "GetKeyPolicy": {"KeyId": _key_id(True), "PolicyName": _POLICY_NAME},
    "EnableKey": {"KeyId": _key_id(True)},
    "DisableKey": {"KeyId": _key_id(True)},
    "ScheduleKeyDeletion": {
        "KeyId": _key_id(True),
        "PendingWindowInDays": Member("integer", min=1, max=365),
    },
    "CancelKeyDeletion": {"KeyId": _key_id(True)},
    "Encrypt": {
        "KeyId": _key_id(True),
        "Plaintext": Member("blob", required=True, min=1, max=4096),
        "EncryptionContext": _CONTEXT,
        "GrantTokens": _GRANT_TOKENS,
        "EncryptionAlgorithm": _ENCRYPTION_ALGORITHM,
        **_DRY_RUN,
    },
    "Decrypt": {
        "CiphertextBlob": Member("blob", required=True, min=1, max=6144),
        "EncryptionContext": _CONTEXT,
        "GrantTokens": _GRANT_TOKENS,
        "KeyId": _key_id(),
        "EncryptionAlgorithm": _ENCRYPTION_ALGORITHM,
        "Recipient": _RECIPIENT,
        **_DRY_RUN,
    },
    "ReEncrypt": {
        "CiphertextBlob": Member("blob", required=True, min=1, max=6144),
        "SourceEncryptionContext": _CONTEXT,
        "SourceKeyId": _key_id(),
        "DestinationKeyId": _key_id(True),
        "DestinationEncryptionContext": _CONTEXT,
        "SourceEncryptionAlgorithm": _ENCRYPTION_ALGORITHM,
        "DestinationEncryptionAlgorithm": _ENCRYPTION_ALGORITHM,
        "GrantTokens": _GRANT_TOKENS,
        **_DRY_RUN,
    },
    "GenerateDataKey": {
        "KeyId": _key_id(True),
        "EncryptionContext": _CONTEXT,
        "NumberOfBytes": _NUMBER_OF_BYTES,
        "KeySpec": _DATA_KEY_SPEC,
        "GrantTokens": _GRANT_TOKENS,
        "Recipient": _RECIPIENT,
        **_DRY_RUN,
    },
    "GenerateDataKeyWithoutPlaintext": {
        "KeyId": _key_id(True),
        "EncryptionContext": _CONTEXT,
        "KeySpec": _DATA_KEY_SPEC,
        "NumberOfBytes": _NUMBER_OF_BYTES,
        "GrantTokens": _GRANT_TOKENS,
        **_DRY_RUN,
    },
    "GenerateDataKeyPair": {
        "EncryptionContext": _CONTEXT,
        "KeyId": _key_id(True),
        "KeyPairSpec": Member("string", required=True, enum=_DATA_KEY_PAIR_SPECS),
        "GrantTokens": _GRANT_TOKENS,
        "Recipient": _RECIPIENT,
        **_DRY_RUN,
    },
    "GenerateDataKeyPairWithoutPlaintext": {
        "EncryptionContext": _CONTEXT,
        "KeyId": _key_id(True),
        "KeyPairSpec": Member("string", required=True, enum=_DATA_KEY_PAIR_SPECS),
        "GrantTokens": _GRANT_TOKENS,
        **_DRY_RUN,
    },
    "GenerateRandom": {
        "NumberOfBytes": _NUMBER_OF_BYTES,
        "CustomKeyStoreId": Member("string", min=1, max=64),
        "Recipient": _RECIPIENT,
    },
    "DeriveSharedSecret": {
        "KeyId": _key_id(True),
        "KeyAgreementAlgorithm": Member("string", required=True, enum=("ECDH",)),
        "PublicKey": Member("blob", required=True, min=1, max=8192),
        "GrantTokens": _GRANT_TOKENS,
        "Recipient": _RECIPIENT,
        **_DRY_RUN,
    },
    "GetPublicKey": {"KeyId": _key_id(True), "GrantTokens": _GRANT_TOKENS},
    "Sign": {
        "KeyId": _key_id(True),
        "Message": Member("blob", required=True, min=1, max=4096),
        "MessageType": Member("string", enum=("RAW", "DIGEST", "EXTERNAL_MU")),
        "GrantTokens": _GRANT_TOKENS,
        "SigningAlgorithm": Member("string", required=True, enum=_SIGNING_ALGORITHMS),
        **_DRY_RUN,
    },
    "Verify": {
        "KeyId": _key_id(True),
        "Message": Member("blob", required=True, min=1, max=4096),
        "MessageType": Member("string", enum=("RAW", "DIGEST", "EXTERNAL_MU")),
        "Signature": Member("blob", required=True, min=1, max=6144),
        "SigningAlgorithm": Member("string", required=True, enum=_SIGNING_ALGORITHMS),
        "GrantTokens": _GRANT_TOKENS,
        **_DRY_RUN,
    },
}

_JSON_TYPE_NAMES = {"string": "a string", "blob": "a base64 string", "integer": "an integer",
                    "boolean": "a boolean", "map": "an object of strings",
                    "list": "a list", "structure": "an object"}


def validate_request(operation: str, body: Mapping[str, Any]) -> dict[str, Any]:
    """The request's known members, typed (blobs as bytes), after AWS's checks.

    Raises:
        SerializationException: a member of the wrong JSON type, or a blob not base64.
        ValidationException: constraint violations, all of them in one message.
    """
    shape = OPERATIONS[operation]
    params = _convert_structure(shape, body, "")
    problems: list[str] = []
    _check_structure(shape, params, "", problems)
    if problems:
        count = len(problems)
        noun = "error" if count == 1 else "errors"
        raise ValidationException(f"{count} validation {noun} detected: " + "; ".join(problems))
    return params


def _camel(name: str) -> str:
    return name[:1].lower() + name[1:]


def _convert_structure(shape: Mapping[str, Member], value: Mapping[str, Any], path: str) -> dict[str, Any]:
    converted: dict[str, Any] = {}
    for name, member in shape.items():
        if name in value and value[name] is not None:
            converted[name] = _convert(member, value[name], path + name)
    return converted


def _wrong_type(path: str, member: Member, value: object) -> SerializationException:
    return SerializationException(
        f"Value of '{path}' must be {_JSON_TYPE_NAMES[member.kind]}, "
        f"not a JSON {_json_type(value)}"
    )


def _json_type(value: object) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "null"


def _convert(member: Member, value: Any, path: str) -> Any:
    kind = member.kind
    if kind == "string":
        if not isinstance(value, str):
            raise _wrong_type(path, member, value)
        return value
    if kind == "blob":
        if not isinstance(value, str):
            raise _wrong_type(path, member, value)
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise SerializationException(f"Value of '{path}' is not valid base64") from None
    if kind == "integer":
        if isinstance(value, bool) or not isinstance(value, int):
            raise _wrong_type(path, member, value)
        return value
    if kind == "boolean":
        if not isinstance(value, bool):
            raise _wrong_type(path, member, value)
        return value
    if kind == "map":
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise _wrong_type(path, member, value)
        return dict(value)
    if kind == "list":
        if not isinstance(value, list) or member.item is None:
            raise _wrong_type(path, member, value)
        return [_convert(member.item, item, f"{path}[{i}]") for i, item in enumerate(value)]
    if not isinstance(value, dict):  # structure
        raise _wrong_type(path, member, value)
    return _convert_structure(member.members, value, path + ".")


def _check_structure(shape: Mapping[str, Member], params: Mapping[str, Any], path: str, problems: list[str]) -> None:
    for name, member in shape.items():
        where = path + _camel(name)
        if name not in params:
            if member.required:
                problems.append(f"Value null at '{where}' failed to satisfy constraint: Member must not be null")
            continue
        _check(member, params[name], where, problems)


def _check(member: Member, value: Any, where: str, problems: list[str]) -> None:
    if member.kind == "structure":
        _check_structure(member.members, value, where + ".", problems)
        return
    if member.kind == "list" and member.item is not None:
        for index, item in enumerate(value):
            _check(member.item, item, f"{where}.{index + 1}.member", problems)
    shown = "Value" if member.kind in ("blob", "list", "map", "structure") else f"Value '{value}'"
    prefix = f"{shown} at '{where}' failed to satisfy constraint: Member must"
    if member.kind == "integer":
        if member.min is not None and value < member.min:
            problems.append(f"{prefix} have value greater than or equal to {member.min}")
        elif member.max is not None and value > member.max:
            problems.append(f"{prefix} have value less than or equal to {member.max}")
        return
    if member.kind in ("string", "blob", "list"):
        length = len(value)
        if member.min is not None and length < member.min:
            problems.append(f"{prefix} have length greater than or equal to {member.min}")
        elif member.max is not None and length > member.max:
            problems.append(f"{prefix} have length less than or equal to {member.max}")
    if member.kind == "string":
        if member.enum is not None and value not in member.enum:
            problems.append(f"{prefix} satisfy enum value set: [{', '.join(member.enum)}]")
        elif member.pattern is not None and value and not re.fullmatch(member.pattern, value):
            problems.append(f"{prefix} satisfy regular expression pattern: {member.pattern}")
