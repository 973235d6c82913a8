"""KMS keys: specs, usages, material and metadata (no HTTP, no storage).

Which KeyUsage each KeySpec allows, and the algorithms DescribeKey lists, follow the KMS
Developer Guide "Key spec reference" (``symm-asymm-choose-key-spec.html``) and botocore's
KeyMetadata shape. HMAC, SM2, ML-DSA, ML-KEM and Ed25519 KMS keys are not implemented:
CreateKey refuses them with UnsupportedOperationException.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, replace
from typing import Any, Union

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from emulator.kms.errors import UnsupportedOperationException, ValidationException

__all__ = [
    "KEY_USAGES_BY_SPEC",
    "KmsKey",
    "PrivateKey",
    "check_key_spec",
    "generate_private_key",
    "load_private_key",
    "new_material",
    "private_key_der",
    "public_key_der",
]

PrivateKey = Union[rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey]

_RSA_BITS = {"RSA_2048": 2048, "RSA_3072": 3072, "RSA_4096": 4096}
_CURVES: dict[str, ec.EllipticCurve] = {
    "ECC_NIST_P256": ec.SECP256R1(),
    "ECC_NIST_P384": ec.SECP384R1(),
    "ECC_NIST_P521": ec.SECP521R1(),
    "ECC_SECG_P256K1": ec.SECP256K1(),
}
# Key spec reference: RSA keys encrypt or sign; NIST curves sign or agree keys; secp256k1
# only signs; SYMMETRIC_DEFAULT only encrypts.
KEY_USAGES_BY_SPEC: dict[str, tuple[str, ...]] = {
    "SYMMETRIC_DEFAULT": ("ENCRYPT_DECRYPT",),
    **{spec: ("ENCRYPT_DECRYPT", "SIGN_VERIFY") for spec in _RSA_BITS},
    "ECC_NIST_P256": ("SIGN_VERIFY", "KEY_AGREEMENT"),
    "ECC_NIST_P384": ("SIGN_VERIFY", "KEY_AGREEMENT"),
    "ECC_NIST_P521": ("SIGN_VERIFY", "KEY_AGREEMENT"),
    "ECC_SECG_P256K1": ("SIGN_VERIFY",),
}
_ECDSA_BY_SPEC = {
    "ECC_NIST_P256": ["ECDSA_SHA_256"],
    "ECC_NIST_P384": ["ECDSA_SHA_384"],
    "ECC_NIST_P521": ["ECDSA_SHA_512"],
    "ECC_SECG_P256K1": ["ECDSA_SHA_256"],
}
_RSA_SIGNING = [
    "RSASSA_PKCS1_V1_5_SHA_256", "RSASSA_PKCS1_V1_5_SHA_384", "RSASSA_PKCS1_V1_5_SHA_512",
    "RSASSA_PSS_SHA_256", "RSASSA_PSS_SHA_384", "RSASSA_PSS_SHA_512",
]


def check_key_spec(spec: str, usage: str | None) -> str:
    """The KeyUsage a new key of ``spec`` gets (AWS's default: ENCRYPT_DECRYPT).

    Raises:
        UnsupportedOperationException: a spec this emulator does not implement.
        ValidationException: a usage the spec does not allow.
    """
    allowed = KEY_USAGES_BY_SPEC.get(spec)
    if allowed is None:
        raise UnsupportedOperationException(f"KeySpec {spec} is not supported by this local KMS")
    chosen = usage or "ENCRYPT_DECRYPT"
    if chosen not in allowed:
        # [inferred] AWS's exact wording for this refusal is not documented.
        raise ValidationException(
            f"KeyUsage {chosen} is not compatible with KeySpec {spec}; "
            f"use one of: {', '.join(allowed)}"
        )
    return chosen


def generate_private_key(spec: str) -> PrivateKey:
    """A fresh private key for an asymmetric KeySpec or DataKeyPairSpec."""
    if spec in _RSA_BITS:
        return rsa.generate_private_key(public_exponent=65537, key_size=_RSA_BITS[spec])
    if spec in _CURVES:
        return ec.generate_private_key(_CURVES[spec])
    if spec == "ECC_NIST_EDWARDS25519":
        return ed25519.Ed25519PrivateKey.generate()
    raise UnsupportedOperationException(f"{spec} is not supported by this local KMS")


def private_key_der(key: PrivateKey) -> bytes:
    """PKCS#8 DER, unencrypted (what GenerateDataKeyPair returns as PrivateKeyPlaintext)."""
    return key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def public_key_der(key: PrivateKey) -> bytes:
    """X.509 SubjectPublicKeyInfo DER (what GetPublicKey returns)."""
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_private_key(der: bytes) -> PrivateKey:
    """The inverse of :func:`private_key_der`."""
    key = serialization.load_der_private_key(der, password=None)
    if not isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey)):
        raise TypeError(f"unexpected stored key type {type(key).__name__}")
    return key


@dataclass(frozen=True)
class KmsKey:
    """One KMS key. ``material`` is secret: it never leaves the server, never gets logged.

    Attributes:
        key_id: the UUID.
        arn: ``arn:aws:kms:<region>:<account>:key/<uuid>``.
        account, region: where the key lives.
        key_spec, key_usage: as CreateKey chose them.
        material: 32 random bytes (symmetric) or the PKCS#8 DER private key.
        policy: the key policy (JSON text), PolicyName ``default``.
        description: CreateKey's Description.
        created: CreationDate, seconds since the epoch.
        enabled: False after DisableKey (and while pending deletion).
        deletion_date: set while PendingDeletion (seconds since the epoch).
        pending_window_days: the ScheduleKeyDeletion window while PendingDeletion.
        tags: CreateKey's Tags.
    """

    key_id: str
    arn: str
    account: str
    region: str
    key_spec: str
    key_usage: str
    material: bytes
    policy: str
    description: str
    created: float
    enabled: bool = True
    deletion_date: float | None = None
    pending_window_days: int | None = None
    tags: tuple[tuple[str, str], ...] = ()

    def __repr__(self) -> str:  # never show the material
        return f"KmsKey({self.arn}, {self.key_spec}, {self.key_usage}, {self.state})"

    @property
    def state(self) -> str:
        if self.deletion_date is not None:
            return "PendingDeletion"
        return "Enabled" if self.enabled else "Disabled"

    @property
    def symmetric(self) -> bool:
        return self.key_spec == "SYMMETRIC_DEFAULT"

    def private_key(self) -> PrivateKey:
        """The asymmetric private key (only for asymmetric specs)."""
        return load_private_key(self.material)

    def with_changes(self, **changes: Any) -> KmsKey:
        return replace(self, **changes)

    def encryption_algorithms(self) -> list[str] | None:
        if self.key_usage != "ENCRYPT_DECRYPT":
            return None
        return ["SYMMETRIC_DEFAULT"] if self.symmetric else ["RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256"]

    def signing_algorithms(self) -> list[str] | None:
        if self.key_usage != "SIGN_VERIFY":
            return None
        return list(_RSA_SIGNING) if self.key_spec in _RSA_BITS else list(_ECDSA_BY_SPEC[self.key_spec])

    def key_agreement_algorithms(self) -> list[str] | None:
        return ["ECDH"] if self.key_usage == "KEY_AGREEMENT" else None

    def metadata(self) -> dict[str, Any]:
        """botocore's KeyMetadata shape (timestamps as epoch seconds, JSON 1.1's form)."""
        meta: dict[str, Any] = {
            "AWSAccountId": self.account,
            "KeyId": self.key_id,
            "Arn": self.arn,
            "CreationDate": self.created,
            "Enabled": self.enabled,
            "Description": self.description,
            "KeyUsage": self.key_usage,
            "KeyState": self.state,
            "Origin": "AWS_KMS",
            "KeyManager": "CUSTOMER",
            "CustomerMasterKeySpec": self.key_spec,
            "KeySpec": self.key_spec,
            "MultiRegion": False,
        }
        if self.deletion_date is not None:
            meta["DeletionDate"] = self.deletion_date
            meta["PendingDeletionWindowInDays"] = self.pending_window_days
        for name, value in (
            ("EncryptionAlgorithms", self.encryption_algorithms()),
            ("SigningAlgorithms", self.signing_algorithms()),
            ("KeyAgreementAlgorithms", self.key_agreement_algorithms()),
        ):
            if value is not None:
                meta[name] = value
        return meta


def new_material(spec: str) -> bytes:
    """The secret of a new key: 256 random bits, or a PKCS#8 private key."""
    if spec == "SYMMETRIC_DEFAULT":
        return secrets.token_bytes(32)
    return private_key_der(generate_private_key(spec))
