"""The KMS backend: the registry's key administration plus the cryptographic operations.

``KmsBackend.dispatch(operation, caller, params)`` takes shape-validated parameters
(``emulator.kms.shapes``) and returns the reply members (bytes for blobs), with no HTTP.

Rules (AWS KMS API Reference of each operation): symmetric keys encrypt with
SYMMETRIC_DEFAULT only; RSA ENCRYPT_DECRYPT keys with RSAES_OAEP_SHA_1/256 (and then
Decrypt needs KeyId); GenerateDataKey* and GenerateDataKeyPair* need a symmetric key;
DeriveSharedSecret a KEY_AGREEMENT key; Sign/Verify a SIGN_VERIFY key; GetPublicKey an
asymmetric key. With a Recipient the plaintext member is left out of the reply and
``CiphertextForRecipient`` carries it, encrypted to the attested enclave (nitro-facts §5).
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable, Mapping
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

from emulator.kms import keys as key_specs
from emulator.kms.ciphertext import blob_key_id, open_blob, seal
from emulator.kms.errors import (
    DryRunOperationException,
    IncorrectKeyException,
    InvalidCiphertextException,
    InvalidKeyUsageException,
    KMSInvalidSignatureException,
    UnknownOperationException,
    UnsupportedOperationException,
    ValidationException,
)
from emulator.kms.keys import KmsKey
from emulator.kms.models import Caller, KeyRegistry
from emulator.kms.recipient import VerifiedRecipient, encrypt_for_recipient, verify_recipient

__all__ = ["KmsBackend"]

Params = Mapping[str, Any]
_OAEP_HASHES: dict[str, Callable[[], hashes.HashAlgorithm]] = {
    "RSAES_OAEP_SHA_1": hashes.SHA1,
    "RSAES_OAEP_SHA_256": hashes.SHA256,
}
_SIGNING_HASHES: dict[str, Callable[[], hashes.HashAlgorithm]] = {
    "256": hashes.SHA256, "384": hashes.SHA384, "512": hashes.SHA512,
}
_DATA_KEY_BYTES = {"AES_256": 32, "AES_128": 16}
_DRY_RUN_MESSAGE = "The request would have succeeded, but the DryRun option is set."


def _context_values(context: Mapping[str, str] | None) -> dict[str, list[str]]:
    """``kms:EncryptionContext:<key>`` and ``kms:EncryptionContextKeys`` (KMS Developer Guide)."""
    context = context or {}
    values = {f"kms:encryptioncontext:{key.lower()}": [value] for key, value in context.items()}
    if context:
        values["kms:encryptioncontextkeys"] = list(context)
    return values


def _key_material_id(key: KmsKey) -> str:
    """A stable 64-hex KeyMaterialId derived from the key id (never from the material)."""
    return hashlib.sha256(b"nitro-emu kms key material id\0" + key.key_id.encode()).hexdigest()


class KmsBackend(KeyRegistry):
    """A local KMS: keys, aliases, policies and the cryptographic operations. Thread-safe."""

    def dispatch(self, operation: str, caller: Caller, params: Params) -> dict[str, Any]:
        """Run one operation by its wire name (e.g. ``"Decrypt"``).

        Raises:
            KmsError: the AWS error for the request.
        """
        handler = _HANDLERS.get(operation)
        if handler is None:
            raise UnknownOperationException()
        return handler(self, caller, params)

    # ---------------------------------------------------------------- shared steps

    def _recipient(self, params: Params) -> VerifiedRecipient | None:
        recipient = params.get("Recipient")
        if recipient is None:
            return None
        return verify_recipient(recipient, self.trusted_roots, max_age=self.max_age)

    @staticmethod
    def _values(context: Mapping[str, str] | None, recipient: VerifiedRecipient | None) -> dict[str, list[str]]:
        values = _context_values(context)
        if recipient is not None:
            values.update(recipient.condition_values())
        return values

    @staticmethod
    def _require_usage(key: KmsKey, usage: str, operation: str) -> None:
        if key.key_usage != usage:
            raise InvalidKeyUsageException(
                f"{key.arn} key usage is {key.key_usage} which is not valid for {operation}."
            )

    @staticmethod
    def _require_symmetric(key: KmsKey, operation: str) -> None:
        if not key.symmetric or key.key_usage != "ENCRYPT_DECRYPT":
            raise InvalidKeyUsageException(
                f"{key.arn} key spec is {key.key_spec} and usage {key.key_usage}: {operation} "
                "needs a symmetric encryption key (SYMMETRIC_DEFAULT, ENCRYPT_DECRYPT)."
            )

    @staticmethod
    def _dry_run(params: Params) -> None:
        if params.get("DryRun"):
            raise DryRunOperationException(_DRY_RUN_MESSAGE)

    @staticmethod
    def _release(reply: dict[str, Any], member: str, secret: bytes, recipient: VerifiedRecipient | None) -> dict[str, Any]:
        if recipient is None:
            reply[member] = secret
        else:
            reply["CiphertextForRecipient"] = encrypt_for_recipient(secret, recipient)
        return reply

    def _encrypt_with(self, key: KmsKey, plaintext: bytes, context: Mapping[str, str] | None,
                      algorithm: str) -> bytes:
        self._require_usage(key, "ENCRYPT_DECRYPT", "Encrypt")
        if key.symmetric:
            if algorithm != "SYMMETRIC_DEFAULT":
                raise InvalidKeyUsageException(
                    f"{key.arn} is a symmetric key: EncryptionAlgorithm must be SYMMETRIC_DEFAULT"
                )
            return seal(key.key_id, key.material, plaintext, context)
        private = key.private_key()
        if algorithm not in _OAEP_HASHES or not isinstance(private, rsa.RSAPrivateKey):
            raise InvalidKeyUsageException(
                f"{key.arn} is an RSA key: EncryptionAlgorithm must be RSAES_OAEP_SHA_1 or RSAES_OAEP_SHA_256"
            )
        if context:
            # [inferred] asymmetric encryption does not support an encryption context
            # (KMS Developer Guide "Encryption context": symmetric keys only).
            raise ValidationException("EncryptionContext is not supported with asymmetric KMS keys")
        hash_algorithm = _OAEP_HASHES[algorithm]()
        limit = private.key_size // 8 - 2 * hash_algorithm.digest_size - 2
        if len(plaintext) > limit:
            raise ValidationException(
                f"Plaintext is {len(plaintext)} bytes; {key.key_spec} with {algorithm} encrypts at most {limit}"
            )
        return private.public_key().encrypt(
            plaintext, padding.OAEP(padding.MGF1(hash_algorithm), hash_algorithm, None)
        )

    def _open(self, caller: Caller, blob: bytes, key_identifier: str | None, algorithm: str,
              context: Mapping[str, str] | None, action: str, recipient: VerifiedRecipient | None) -> tuple[KmsKey, bytes]:
        """Authorize and decrypt a ciphertext; the key comes from the blob when symmetric."""
        if algorithm == "SYMMETRIC_DEFAULT":
            blob_key = self.key_by_id(blob_key_id(blob))
            if blob_key is None:
                raise InvalidCiphertextException()
            if key_identifier is not None:
                named = self.resolve(key_identifier, allow_alias=True)
                if named.key_id != blob_key.key_id:
                    raise IncorrectKeyException(
                        "The key ID in the request does not identify a KMS key that can perform this operation."
                    )
            key = blob_key
        else:
            if key_identifier is None:
                # Decrypt: "KeyId ... Required: only when decrypting with an asymmetric KMS key".
                raise ValidationException("KeyId is required to decrypt with an asymmetric KMS key")
            key = self.resolve(key_identifier, allow_alias=True)
        self.authorize(caller, key, action, self._values(context, recipient))
        self.require_enabled(key)
        self._require_usage(key, "ENCRYPT_DECRYPT", "Decrypt")
        if key.symmetric:
            if algorithm != "SYMMETRIC_DEFAULT":
                raise InvalidKeyUsageException(f"{key.arn} is a symmetric key: use SYMMETRIC_DEFAULT")
            return key, open_blob(blob, key.material, context)
        private = key.private_key()
        if algorithm not in _OAEP_HASHES or not isinstance(private, rsa.RSAPrivateKey):
            raise InvalidKeyUsageException(f"{key.arn} is an RSA key: use RSAES_OAEP_SHA_1 or RSAES_OAEP_SHA_256")
        hash_algorithm = _OAEP_HASHES[algorithm]()
        try:
            return key, private.decrypt(blob, padding.OAEP(padding.MGF1(hash_algorithm), hash_algorithm, None))
        except ValueError:
            raise InvalidCiphertextException() from None

    # ---------------------------------------------------------------- encrypt / decrypt

    def encrypt(self, caller: Caller, params: Params) -> dict[str, Any]:
        """Encrypt."""
        key = self.resolve(params["KeyId"], allow_alias=True)
        context = params.get("EncryptionContext")
        self.authorize(caller, key, "kms:Encrypt", _context_values(context))
        self.require_enabled(key)
        algorithm = params.get("EncryptionAlgorithm", "SYMMETRIC_DEFAULT")
        blob = self._encrypt_with(key, params["Plaintext"], context, algorithm)
        self._dry_run(params)
        return {"CiphertextBlob": blob, "KeyId": key.arn, "EncryptionAlgorithm": algorithm}

    def decrypt(self, caller: Caller, params: Params) -> dict[str, Any]:
        """Decrypt, with or without a Recipient."""
        recipient = self._recipient(params)
        algorithm = params.get("EncryptionAlgorithm", "SYMMETRIC_DEFAULT")
        key, plaintext = self._open(
            caller, params["CiphertextBlob"], params.get("KeyId"), algorithm,
            params.get("EncryptionContext"), "kms:Decrypt", recipient,
        )
        self._dry_run(params)
        reply: dict[str, Any] = {"KeyId": key.arn, "EncryptionAlgorithm": algorithm}
        if recipient is None and key.symmetric:
            reply["KeyMaterialId"] = _key_material_id(key)
        return self._release(reply, "Plaintext", plaintext, recipient)

    def re_encrypt(self, caller: Caller, params: Params) -> dict[str, Any]:
        """ReEncrypt: kms:ReEncryptFrom on the source key, kms:ReEncryptTo on the destination."""
        source_algorithm = params.get("SourceEncryptionAlgorithm", "SYMMETRIC_DEFAULT")
        destination_algorithm = params.get("DestinationEncryptionAlgorithm", "SYMMETRIC_DEFAULT")
        destination = self.resolve(params["DestinationKeyId"], allow_alias=True)
        source, plaintext = self._open(
            caller, params["CiphertextBlob"], params.get("SourceKeyId"), source_algorithm,
            params.get("SourceEncryptionContext"), "kms:ReEncryptFrom", None,
        )
        context = params.get("DestinationEncryptionContext")
        self.authorize(caller, destination, "kms:ReEncryptTo", _context_values(context))
        self.require_enabled(destination)
        blob = self._encrypt_with(destination, plaintext, context, destination_algorithm)
        self._dry_run(params)
        return {
            "CiphertextBlob": blob,
            "SourceKeyId": source.arn,
            "KeyId": destination.arn,
            "SourceEncryptionAlgorithm": source_algorithm,
            "DestinationEncryptionAlgorithm": destination_algorithm,
        }

    # ---------------------------------------------------------------- data keys

    def _data_key(self, caller: Caller, params: Params, action: str,
                  recipient: VerifiedRecipient | None) -> tuple[KmsKey, bytes, bytes]:
        has_bytes, has_spec = "NumberOfBytes" in params, "KeySpec" in params
        if has_bytes == has_spec:
            # The API reference: "use the KeySpec or NumberOfBytes parameters (but not both)";
            # the wording when neither is given is moto's copy of AWS's.
            raise ValidationException("Please specify either number of bytes or key spec.")
        size = params["NumberOfBytes"] if has_bytes else _DATA_KEY_BYTES[params["KeySpec"]]
        key = self.resolve(params["KeyId"], allow_alias=True)
        context = params.get("EncryptionContext")
        self.authorize(caller, key, action, self._values(context, recipient))
        self.require_enabled(key)
        self._require_symmetric(key, action.removeprefix("kms:"))
        self._dry_run(params)
        data_key = secrets.token_bytes(size)
        return key, data_key, seal(key.key_id, key.material, data_key, context)

    def generate_data_key(self, caller: Caller, params: Params) -> dict[str, Any]:
        """GenerateDataKey, with or without a Recipient."""
        recipient = self._recipient(params)
        key, data_key, blob = self._data_key(caller, params, "kms:GenerateDataKey", recipient)
        reply: dict[str, Any] = {"CiphertextBlob": blob, "KeyId": key.arn}
        if recipient is None:
            reply["KeyMaterialId"] = _key_material_id(key)
        return self._release(reply, "Plaintext", data_key, recipient)

    def generate_data_key_without_plaintext(self, caller: Caller, params: Params) -> dict[str, Any]:
        """GenerateDataKeyWithoutPlaintext."""
        key, _data_key, blob = self._data_key(caller, params, "kms:GenerateDataKeyWithoutPlaintext", None)
        return {"CiphertextBlob": blob, "KeyId": key.arn, "KeyMaterialId": _key_material_id(key)}

    def _data_key_pair(self, caller: Caller, params: Params, action: str,
                       recipient: VerifiedRecipient | None) -> tuple[KmsKey, bytes, bytes, bytes]:
        spec = params["KeyPairSpec"]
        key = self.resolve(params["KeyId"], allow_alias=True)
        context = params.get("EncryptionContext")
        self.authorize(caller, key, action, self._values(context, recipient))
        self.require_enabled(key)
        self._require_symmetric(key, action.removeprefix("kms:"))
        if spec in ("SM2", "ML_KEM_512", "ML_KEM_768", "ML_KEM_1024"):
            raise UnsupportedOperationException(f"KeyPairSpec {spec} is not supported by this local KMS")
        self._dry_run(params)
        private = key_specs.generate_private_key(spec)
        private_der = key_specs.private_key_der(private)
        return key, private_der, key_specs.public_key_der(private), seal(key.key_id, key.material, private_der, context)

    def generate_data_key_pair(self, caller: Caller, params: Params) -> dict[str, Any]:
        """GenerateDataKeyPair, with or without a Recipient."""
        recipient = self._recipient(params)
        key, private_der, public_der, blob = self._data_key_pair(caller, params, "kms:GenerateDataKeyPair", recipient)
        reply: dict[str, Any] = {
            "PrivateKeyCiphertextBlob": blob, "PublicKey": public_der, "KeyId": key.arn,
            "KeyPairSpec": params["KeyPairSpec"],
        }
        if recipient is None:
            reply["KeyMaterialId"] = _key_material_id(key)
        return self._release(reply, "PrivateKeyPlaintext", private_der, recipient)

    def generate_data_key_pair_without_plaintext(self, caller: Caller, params: Params) -> dict[str, Any]:
        """GenerateDataKeyPairWithoutPlaintext."""
        key, _private, public_der, blob = self._data_key_pair(
            caller, params, "kms:GenerateDataKeyPairWithoutPlaintext", None
        )
        return {
            "PrivateKeyCiphertextBlob": blob, "PublicKey": public_der, "KeyId": key.arn,
            "KeyPairSpec": params["KeyPairSpec"], "KeyMaterialId": _key_material_id(key),
        }

    def generate_random(self, caller: Caller, params: Params) -> dict[str, Any]:
        """GenerateRandom (no key, so no key policy: IAM-only on AWS)."""
        if "CustomKeyStoreId" in params:
            raise UnsupportedOperationException("Custom key stores are not supported by this local KMS")
        if "NumberOfBytes" not in params:
            # [inferred] AWS's answer to a GenerateRandom without NumberOfBytes.
            raise ValidationException(
                "1 validation error detected: Value null at 'numberOfBytes' failed to satisfy "
                "constraint: Member must not be null"
            )
        recipient = self._recipient(params)
        return self._release({}, "Plaintext", secrets.token_bytes(params["NumberOfBytes"]), recipient)

    # ---------------------------------------------------------------- asymmetric keys

    def derive_shared_secret(self, caller: Caller, params: Params) -> dict[str, Any]:
        """DeriveSharedSecret: ECDH with a KEY_AGREEMENT key and the peer's SPKI public key."""
        recipient = self._recipient(params)
        key = self.resolve(params["KeyId"], allow_alias=True)
        self.authorize(caller, key, "kms:DeriveSharedSecret", self._values(None, recipient))
        self.require_enabled(key)
        self._require_usage(key, "KEY_AGREEMENT", "DeriveSharedSecret")
        private = key.private_key()
        assert isinstance(private, ec.EllipticCurvePrivateKey)  # KEY_AGREEMENT keys are EC
        try:
            peer = serialization.load_der_public_key(params["PublicKey"])
        except (ValueError, TypeError):
            peer = None
        if not isinstance(peer, ec.EllipticCurvePublicKey) or peer.curve.name != private.curve.name:
            raise ValidationException(
                f"PublicKey must be a DER SubjectPublicKeyInfo of an {key.key_spec} public key"
            )
        self._dry_run(params)
        secret = private.exchange(ec.ECDH(), peer)
        reply: dict[str, Any] = {"KeyId": key.arn, "KeyAgreementAlgorithm": "ECDH", "KeyOrigin": "AWS_KMS"}
        return self._release(reply, "SharedSecret", secret, recipient)

    def get_public_key(self, caller: Caller, params: Params) -> dict[str, Any]:
        """GetPublicKey (asymmetric keys only)."""
        key = self.resolve(params["KeyId"], allow_alias=True)
        self.authorize(caller, key, "kms:GetPublicKey")
        self.require_enabled(key)
        if key.symmetric:
            raise UnsupportedOperationException(f"{key.arn} is a symmetric key: it has no public key.")
        reply: dict[str, Any] = {
            "KeyId": key.arn, "PublicKey": key_specs.public_key_der(key.private_key()),
            "CustomerMasterKeySpec": key.key_spec, "KeySpec": key.key_spec, "KeyUsage": key.key_usage,
        }
        for name, value in (
            ("EncryptionAlgorithms", key.encryption_algorithms()),
            ("SigningAlgorithms", key.signing_algorithms()),
            ("KeyAgreementAlgorithms", key.key_agreement_algorithms()),
        ):
            if value is not None:
                reply[name] = value
        return reply

    def _signing(self, caller: Caller, params: Params, action: str) -> tuple[KmsKey, Any, Any, bytes]:
        key = self.resolve(params["KeyId"], allow_alias=True)
        self.authorize(caller, key, action)
        self.require_enabled(key)
        self._require_usage(key, "SIGN_VERIFY", action.removeprefix("kms:"))
        algorithm = params["SigningAlgorithm"]
        if algorithm not in (key.signing_algorithms() or ()):
            raise InvalidKeyUsageException(f"{key.arn} does not support SigningAlgorithm {algorithm}")
        message_type = params.get("MessageType", "RAW")
        if message_type not in ("RAW", "DIGEST"):
            raise UnsupportedOperationException(f"MessageType {message_type} is not supported by this local KMS")
        hash_algorithm = _SIGNING_HASHES[algorithm[-3:]]()
        message = params["Message"]
        chosen: Any = hash_algorithm
        if message_type == "DIGEST":
            if len(message) != hash_algorithm.digest_size:
                raise ValidationException(
                    f"Digest is invalid length for algorithm {algorithm}: {len(message)} bytes, "
                    f"expected {hash_algorithm.digest_size}"
                )
            chosen = utils.Prehashed(hash_algorithm)
        if algorithm.startswith("ECDSA"):
            scheme: Any = ec.ECDSA(chosen)
        elif algorithm.startswith("RSASSA_PSS"):
            scheme = padding.PSS(padding.MGF1(hash_algorithm), hash_algorithm.digest_size)
        else:
            scheme = padding.PKCS1v15()
        self._dry_run(params)
        return key, scheme, chosen, message

    def sign(self, caller: Caller, params: Params) -> dict[str, Any]:
        """Sign: RSASSA-PSS / PKCS#1 v1.5 with RSA keys, ECDSA (DER) with EC keys."""
        key, scheme, chosen, message = self._signing(caller, params, "kms:Sign")
        private = key.private_key()
        if isinstance(private, rsa.RSAPrivateKey):
            signature = private.sign(message, scheme, chosen)
        else:
            assert isinstance(private, ec.EllipticCurvePrivateKey)
            signature = private.sign(message, scheme)
        return {"KeyId": key.arn, "Signature": signature, "SigningAlgorithm": params["SigningAlgorithm"]}

    def verify(self, caller: Caller, params: Params) -> dict[str, Any]:
        """Verify: KMSInvalidSignatureException when the signature does not verify."""
        key, scheme, chosen, message = self._signing(caller, params, "kms:Verify")
        public = key.private_key().public_key()
        try:
            if isinstance(public, rsa.RSAPublicKey):
                public.verify(params["Signature"], message, scheme, chosen)
            else:
                assert isinstance(public, ec.EllipticCurvePublicKey)
                public.verify(params["Signature"], message, scheme)
        except (InvalidSignature, ValueError):
            raise KMSInvalidSignatureException() from None
        return {"KeyId": key.arn, "SignatureValid": True, "SigningAlgorithm": params["SigningAlgorithm"]}


_Handler = Callable[[KmsBackend, Caller, Params], dict[str, Any]]
_HANDLERS: dict[str, _Handler] = {
    "CancelKeyDeletion": KmsBackend.cancel_key_deletion,
    "CreateAlias": KmsBackend.create_alias,
    "CreateKey": KmsBackend.create_key,
    "Decrypt": KmsBackend.decrypt,
    "DeleteAlias": KmsBackend.delete_alias,
    "DeriveSharedSecret": KmsBackend.derive_shared_secret,
    "DescribeKey": KmsBackend.describe_key,
    "DisableKey": KmsBackend.disable_key,
    "EnableKey": KmsBackend.enable_key,
    "Encrypt": KmsBackend.encrypt,
    "GenerateDataKey": KmsBackend.generate_data_key,
    "GenerateDataKeyPair": KmsBackend.generate_data_key_pair,
    "GenerateDataKeyPairWithoutPlaintext": KmsBackend.generate_data_key_pair_without_plaintext,
    "GenerateDataKeyWithoutPlaintext": KmsBackend.generate_data_key_without_plaintext,
    "GenerateRandom": KmsBackend.generate_random,
    "GetKeyPolicy": KmsBackend.get_key_policy,
    "GetPublicKey": KmsBackend.get_public_key,
    "ListAliases": KmsBackend.list_aliases,
    "ListKeys": KmsBackend.list_keys,
    "PutKeyPolicy": KmsBackend.put_key_policy,
    "ReEncrypt": KmsBackend.re_encrypt,
    "ScheduleKeyDeletion": KmsBackend.schedule_key_deletion,
    "Sign": KmsBackend.sign,
    "UpdateAlias": KmsBackend.update_alias,
    "Verify": KmsBackend.verify,
}
