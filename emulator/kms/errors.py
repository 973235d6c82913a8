"""The local KMS's errors: one class per AWS KMS error code, named as botocore names them.

Source of the names: botocore ``botocore/data/kms/2014-11-01/service-2.json`` (the error
shapes of each operation); the protocol-level ones (UnknownOperationException,
SerializationException, ValidationException, AccessDeniedException,
MissingAuthenticationTokenException, IncompleteSignatureException) are the JSON 1.1
protocol's common errors, which the service model does not list.

KmsError(EmulatorError)            ``aws_type`` (the ``__type``), ``message``, ``status``
 +-- AccessDeniedException         no policy statement allows the call, or one denies it
 +-- AlreadyExistsException        the alias exists
 +-- DisabledException             the key is disabled
 +-- DryRunOperationException      DryRun was set and the request would have succeeded
 +-- IncorrectKeyException         KeyId names a key other than the ciphertext's
 +-- IncompleteSignatureException  an Authorization header that is not SigV4's shape
 +-- InvalidAliasNameException     an alias name without ``alias/`` or with ``alias/aws/``
 +-- InvalidArnException           a malformed ARN
 +-- InvalidCiphertextException    tampered, truncated or foreign ciphertext, wrong context
 +-- InvalidKeyUsageException      the key's KeyUsage or spec does not allow the operation
 +-- InvalidMarkerException        a pagination marker this server did not issue
 +-- KMSInternalException          a bug here (HTTP 500)
 +-- KMSInvalidSignatureException  Verify: the signature is not valid
 +-- KMSInvalidStateException      e.g. the key is pending deletion
 +-- MalformedPolicyDocumentException  the key policy is not a valid policy
 +-- MissingAuthenticationTokenException  an unsigned request
 +-- NotFoundException             no such key or alias
 +-- SerializationException        the body is not JSON, or a field has the wrong type
 +-- UnknownOperationException     an X-Amz-Target that is not a KMS operation
 +-- UnsupportedOperationException the operation does not apply to this key (spec)
 +-- ValidationException           a field violates its constraint (the message names it)
"""

from __future__ import annotations

from emulator.errors import EmulatorError

__all__ = [
    "AccessDeniedException",
    "AlreadyExistsException",
    "DisabledException",
    "DryRunOperationException",
    "IncompleteSignatureException",
    "IncorrectKeyException",
    "InvalidAliasNameException",
    "InvalidArnException",
    "InvalidCiphertextException",
    "InvalidKeyUsageException",
    "InvalidMarkerException",
    "KMSInternalException",
    "KMSInvalidSignatureException",
    "KMSInvalidStateException",
    "KmsError",
    "MalformedPolicyDocumentException",
    "MissingAuthenticationTokenException",
    "NotFoundException",
    "SerializationException",
    "ThrottlingException",
    "UnknownOperationException",
    "UnsupportedOperationException",
    "ValidationException",
]


class KmsError(EmulatorError):
    """An error the local KMS answers with, shaped as AWS's ``{"__type", "message"}``.

    Attributes:
        aws_type: the AWS error code (the ``__type`` on the wire), the class name.
        message: what happened; None for errors AWS sends without a message.
        status: the HTTP status (400 for client errors, 500 for internal ones).
    """

    status: int = 400

    def __init__(self, message: str | None = None) -> None:
        super().__init__(f"{self.aws_type}: {message}" if message else self.aws_type)
        self.message = message

    @property
    def aws_type(self) -> str:
        return type(self).__name__

    def to_wire(self) -> dict[str, str]:
        """The JSON error body: ``{"__type": ..., "message": ...}`` (message when known)."""
        body = {"__type": self.aws_type}
        if self.message is not None:
            body["message"] = self.message
        return body


class AccessDeniedException(KmsError):
    """No statement of the key policy allows the call, or one explicitly denies it."""

    def to_wire(self) -> dict[str, str]:
        # AWS spells this one's member "Message": a genuine reply in
        # aws/aws-nitro-enclaves-sdk-c issue #157. botocore reads either spelling.
        body = {"__type": self.aws_type}
        if self.message is not None:
            body["Message"] = self.message
        return body


class AlreadyExistsException(KmsError):
    """The resource (an alias) already exists."""


class DisabledException(KmsError):
    """The key is disabled."""


class IncompleteSignatureException(KmsError):
    """The Authorization header is not a complete SigV4 header."""


class IncorrectKeyException(KmsError):
    """The KeyId of the request is not the key that encrypted the ciphertext."""


class InvalidAliasNameException(KmsError):
    """The alias name is not valid."""


class InvalidArnException(KmsError):
    """The ARN is not a valid KMS key or alias ARN."""


class InvalidCiphertextException(KmsError):
    """The ciphertext, its encryption context or its key does not authenticate."""


class InvalidKeyUsageException(KmsError):
    """The key's KeyUsage (or spec, or algorithm) is not compatible with the operation."""


class InvalidMarkerException(KmsError):
    """The pagination marker was not issued by this server."""


class KMSInternalException(KmsError):
    """An internal failure (a bug of the emulator); HTTP 500."""

    status = 500


class KMSInvalidStateException(KmsError):
    """The key's state does not allow the operation (e.g. PendingDeletion)."""


class MalformedPolicyDocumentException(KmsError):
    """The key policy is not a well-formed policy."""


class MissingAuthenticationTokenException(KmsError):
    """The request carries no SigV4 Authorization header."""


class NotFoundException(KmsError):
    """No such key or alias."""


class SerializationException(KmsError):
    """The body is not a JSON object, or a member has the wrong JSON type."""


class ThrottlingException(KmsError):
    """The request rate is over the quota ("Rate exceeded"); SDKs retry it with backoff.

    Not in KMS's service model but sent by the service (KMS Developer Guide, "Quotas":
    "ThrottlingException ... Rate exceeded"); only injected faults raise it here.
    """


class UnknownOperationException(KmsError):
    """The X-Amz-Target names no KMS operation."""


class UnsupportedOperationException(KmsError):
    """The operation is not supported for this key spec or request."""


class ValidationException(KmsError):
    """A member violates its constraint; the message names it as AWS does."""


class DryRunOperationException(KmsError):
    """The request would have succeeded, but DryRun was set."""


class KMSInvalidSignatureException(KmsError):
    """Verify: the signature does not verify with the key and algorithm."""
