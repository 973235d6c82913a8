"""The Recipient parameter: verify an enclave's attestation document, encrypt to its key.

nitro-facts §5 (KMS Developer Guide "Cryptographic attestation support", API
``RecipientInfo``, aws-nitro-enclaves-sdk-c ``docs/kms-apis/RecipientRequest.md``):

- ``KeyEncryptionAlgorithm`` must be ``RSAES_OAEP_SHA_256`` (the only valid value);
- the document must verify against a pinned root: here the roots given to the backend
  (the local test CA's), never AWS's and never one taken from the document; it must be
  fresh (``max_age``); debug-mode documents verify, but their zero PCRs match no policy;
- its ``public_key`` must be an RSA key as DER SubjectPublicKeyInfo ("must include a
  RSA2048 key encoded as a DER SubjectPublicKeyInfo");
- the reply's plaintext member is absent and ``CiphertextForRecipient`` holds a CMS
  EnvelopedData to that key (``emulator.kms.cms``).

Which error AWS returns for a document that fails verification is not documented, nor
seen in any public trace found: this server answers ValidationException naming
``recipient.attestationDocument`` [inferred].
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from emulator.kms.errors import KMSInternalException, ValidationException
from fake_nsm.errors import VerificationError
from fake_nsm.trusted_roots import TrustedRoot
from fake_nsm.verifier import verify_attestation_document

__all__ = ["DEFAULT_MAX_AGE", "VerifiedRecipient", "encrypt_for_recipient", "verify_recipient"]

#: How old a document may be. AWS documents no limit [inferred: 5 minutes, as the verifier's
#: docs suggest]; the leaf certificate's 3-hour validity bounds it in any case.
DEFAULT_MAX_AGE = timedelta(minutes=5)
_MIN_RSA_BITS = 2048
_FIELD = "recipient.attestationDocument"


@dataclass(frozen=True)
class VerifiedRecipient:
    """A verified document's facts: the key to encrypt to and the condition keys it sets.

    Attributes:
        public_key: the enclave's RSA public key.
        module_id: the document's module id (for the log line; CloudTrail logs it too).
        pcrs: PCR index -> value.
    """

    public_key: rsa.RSAPublicKey
    module_id: str
    pcrs: Mapping[int, bytes]

    def condition_values(self) -> dict[str, list[str]]:
        """``kms:RecipientAttestation:*`` condition keys (lower case), values lower-case hex."""
        values = {
            f"kms:recipientattestation:pcr{index}": [value.hex()] for index, value in self.pcrs.items()
        }
        if 0 in self.pcrs:
            values["kms:recipientattestation:imagesha384"] = [self.pcrs[0].hex()]
        return values


def verify_recipient(
    recipient: Mapping[str, Any],
    trusted_roots: Sequence[TrustedRoot],
    *,
    max_age: timedelta = DEFAULT_MAX_AGE,
) -> VerifiedRecipient:
    """Check a request's Recipient (already shape-validated) and return what it attests.

    Raises:
        ValidationException: missing members, a document that fails verification, or a
            public key that is not RSA SubjectPublicKeyInfo DER.
    """
    algorithm = recipient.get("KeyEncryptionAlgorithm")
    document = recipient.get("AttestationDocument")
    if algorithm is None:
        # The model marks it optional; the SDK's RecipientRequest.md says "Required: Yes"
        # and RSAES_OAEP_SHA_256 is the only value [inferred: refuse its absence].
        raise ValidationException(
            "1 validation error detected: Value null at 'recipient.keyEncryptionAlgorithm' "
            "failed to satisfy constraint: Member must not be null"
        )
    if document is None:
        raise ValidationException(
            f"1 validation error detected: Value null at '{_FIELD}' failed to satisfy "
            "constraint: Member must not be null"
        )
    if not trusted_roots:
        raise KMSInternalException(
            "this local KMS was started without trusted roots, so it cannot verify "
            "attestation documents; start it with the test CA's root"
        )
    try:
        verified = verify_attestation_document(
            bytes(document), trusted_roots=list(trusted_roots), max_age=max_age, allow_debug=True
        )
    except VerificationError as error:
        raise ValidationException(f"Invalid attestation document at '{_FIELD}': {error}") from None
    if verified.public_key is None:
        raise ValidationException(
            f"Invalid attestation document at '{_FIELD}': it carries no public_key; the "
            "enclave must put an RSA public key (DER SubjectPublicKeyInfo) in it"
        )
    try:
        public_key = serialization.load_der_public_key(verified.public_key)
    except (ValueError, TypeError):
        raise ValidationException(
            f"Invalid attestation document at '{_FIELD}': its public_key is not a DER "
            "SubjectPublicKeyInfo"
        ) from None
    if not isinstance(public_key, rsa.RSAPublicKey) or public_key.key_size < _MIN_RSA_BITS:
        raise ValidationException(
            f"Invalid attestation document at '{_FIELD}': its public_key must be an RSA key "
            f"of at least {_MIN_RSA_BITS} bits for RSAES_OAEP_SHA_256"
        )
    return VerifiedRecipient(public_key=public_key, module_id=verified.module_id, pcrs=dict(verified.pcrs))


def encrypt_for_recipient(plaintext: bytes, recipient: VerifiedRecipient) -> bytes:
    """``CiphertextForRecipient``: a BER CMS EnvelopedData only the enclave can open.

    Raises:
        KMSInternalException: the CMS builder is missing or failed (nothing is released).
    """
    try:
        from emulator.kms import cms
    except ImportError as error:
        raise KMSInternalException(f"the CMS builder (emulator.kms.cms) is unavailable: {error}") from None
    return cms.build_enveloped_data(plaintext, recipient.public_key)
