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
 +-- (one subclass per check)
"""

from __future__ import annotations


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
