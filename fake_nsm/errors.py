"""Errors of the fake NSM package.

Standard library only: the in-enclave client (``fake_nsm.client``) imports this module.

NsmError                      base of everything the device, server and client raise
 +-- NsmRequestError          the NSM answered ``{"Error": "<Code>"}`` (attribute ``code``);
 |    |                       one subclass per ErrorCode, named exactly as AWS names it:
 |    +-- InvalidArgument     the request could not be decoded (bad CBOR, bad field types)
 |    +-- InvalidIndex        PCR index >= 32, or LockPCRs range > 32
 |    +-- InvalidResponse     the reply was malformed or does not answer the request
 |    |                       (raised by the client, as AWS's nsm-lib does)
 |    +-- ReadOnlyIndex       extend or lock of a locked PCR
 |    +-- InvalidOperation    missing capabilities
 |    +-- BufferTooSmall      the reply did not fit the caller's buffer
 |    +-- InputTooLarge       request over 4096 bytes, or an attestation field over its limit
 |    +-- InternalError       the NSM (or the transport to it) failed
 +-- NsmUnavailable           no NSM to talk to: neither /dev/nsm nor the emulator socket
 +-- NsmConfigError           an NsmDevice / NsmServer was built with bad arguments
VerificationError             an attestation document failed a check (fake_nsm.verifier)
 +-- VerificationInputError   the caller's own input is unusable: no or bad trusted root,
 |                            bad PCR policy, bad nonce/max_age type (not the document)
 +-- MalformedDocumentError   CBOR, COSE structure, field types or sizes (nitro-facts §2.1)
 +-- UnsupportedAlgorithmError  protected header not {1: -35} (ES384), leaf key not P-384
 +-- UntrustedRootError       cabundle[0] is none of the pinned roots
 +-- CertificateChainError    a certificate signature, name, basicConstraints/pathLen or
 |                            keyUsage check failed
 +-- CertificateExpiredError  a certificate is outside its validity window at the given time
 +-- SignatureError           the COSE_Sign1 signature does not verify with the leaf key
 +-- PcrMismatchError         a PCR differs from the expected value (fields index/expected/actual)
 +-- NonceMismatchError       the document's nonce is not the expected one
 +-- StaleDocumentError       the document is older than max_age
 |    +-- FutureDocumentError the document is dated after the verification time (beyond skew)
 +-- DebugModeError           a debug-mode document (PCR0, 1, 2 all zero), not allowed
"""

from __future__ import annotations

from datetime import datetime, timedelta


class NsmError(Exception):
    """Base class of the NSM device, server and client errors."""


class NsmRequestError(NsmError):
    """The NSM refused a request; the subclass (and ``code``) is AWS's ErrorCode name.

    Attributes:
        code: the ErrorCode name, e.g. ``"ReadOnlyIndex"``.
        detail: what was wrong with the request, when known.
    """

    code: str = "InternalError"

    def __init__(self, detail: str = "") -> None:
        self.detail = detail
        message = f"NSM error {self.code}"
        super().__init__(f"{message}: {detail}" if detail else message)


class InvalidArgument(NsmRequestError):
    """The request is not a valid NSM request (bad CBOR, unknown variant, bad field type)."""

    code = "InvalidArgument"


class InvalidIndex(NsmRequestError):
    """A PCR index out of bounds (>= max_pcrs), or a LockPCRs range over max_pcrs."""

    code = "InvalidIndex"


class InvalidResponse(NsmRequestError):
    """The NSM's reply is malformed or does not correspond to the request."""

    code = "InvalidResponse"


class ReadOnlyIndex(NsmRequestError):
    """The PCR is locked and the request tried to modify it."""

    code = "ReadOnlyIndex"


class InvalidOperation(NsmRequestError):
    """The operation is not permitted (missing capabilities)."""

    code = "InvalidOperation"


class BufferTooSmall(NsmRequestError):
    """The operation succeeded but the reply did not fit the output buffer."""

    code = "BufferTooSmall"


class InputTooLarge(NsmRequestError):
    """The request (or one of its fields) is larger than the NSM accepts."""

    code = "InputTooLarge"


class InternalError(NsmRequestError):
    """The NSM, or the transport to it, could not fulfil the request."""

    code = "InternalError"


class NsmUnavailable(NsmError):
    """There is no NSM to talk to (no /dev/nsm, no emulator socket)."""


class NsmConfigError(NsmError, ValueError):
    """An NSM device or server was configured with an invalid value."""


#: ErrorCode name -> exception class (every code except ``Success``), AWS's order.
ERROR_CLASSES: dict[str, type[NsmRequestError]] = {
    cls.code: cls
    for cls in (
        InvalidArgument,
        InvalidIndex,
        InvalidResponse,
        ReadOnlyIndex,
        InvalidOperation,
        BufferTooSmall,
        InputTooLarge,
        InternalError,
    )
}


class VerificationError(Exception):
    """An attestation document failed verification; subclasses name the failed check."""


class VerificationInputError(VerificationError):
    """The caller's input (trusted roots, PCR policy, nonce, max_age) is unusable."""


class MalformedDocumentError(VerificationError):
    """The bytes are not a well-formed attestation document (CBOR, COSE, types, sizes)."""


class UnsupportedAlgorithmError(VerificationError):
    """The document uses an algorithm other than ES384 over P-384 (nitro-facts §2.2)."""


class UntrustedRootError(VerificationError):
    """The chain is not anchored at a pinned root.

    Attributes:
        fingerprint: SHA-256 (upper-case hex) of the document's ``cabundle[0]``.
    """

    def __init__(self, message: str, *, fingerprint: str) -> None:
        super().__init__(message)
        self.fingerprint = fingerprint


class CertificateChainError(VerificationError):
    """A certificate of the chain failed a signature, name or extension check."""


class CertificateExpiredError(VerificationError):
    """A certificate of the chain is not valid at the verification time.

    Attributes:
        position: which certificate (``"leaf"``, ``"cabundle[2]"``, ...).
        not_before, not_after: its validity window (UTC).
        at: the verification time (UTC).
    """

    def __init__(
        self, message: str, *, position: str, not_before: datetime, not_after: datetime, at: datetime
    ) -> None:
        super().__init__(message)
        self.position = position
        self.not_before = not_before
        self.not_after = not_after
        self.at = at


class SignatureError(VerificationError):
    """The COSE_Sign1 signature does not verify with the leaf certificate's key."""


class PcrMismatchError(VerificationError):
    """A PCR of the document differs from the expected value.

    Attributes:
        index: the PCR index.
        expected: the expected value.
        actual: the document's value, or None when the document lacks that PCR.
    """

    def __init__(self, message: str, *, index: int, expected: bytes, actual: bytes | None) -> None:
        super().__init__(message)
        self.index = index
        self.expected = expected
        self.actual = actual


class NonceMismatchError(VerificationError):
    """The document's nonce is not the one the verifier sent.

    Attributes:
        expected: the nonce asked for.
        actual: the document's nonce, or None when it has none.
    """

    def __init__(self, message: str, *, expected: bytes, actual: bytes | None) -> None:
        super().__init__(message)
        self.expected = expected
        self.actual = actual


class StaleDocumentError(VerificationError):
    """The document fails the freshness check: older than ``max_age``.

    Attributes:
        timestamp: the document's timestamp (ms since the Unix epoch).
        at: the verification time (UTC).
        max_age: the allowed age, or None when only the future check failed.
    """

    def __init__(
        self, message: str, *, timestamp: int, at: datetime, max_age: timedelta | None
    ) -> None:
        super().__init__(message)
        self.timestamp = timestamp
        self.at = at
        self.max_age = max_age


class FutureDocumentError(StaleDocumentError):
    """The document is dated after the verification time by more than the allowed skew."""


class DebugModeError(VerificationError):
    """A debug-mode document (PCR0, PCR1, PCR2 all zero; nitro-facts §2.5) was not allowed."""
