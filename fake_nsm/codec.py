"""NSM requests and responses as values, and their CBOR wire form (nitro-facts §1.1-1.2).

Standard library and ``cbor2`` only: the in-enclave client imports this module.

Encoding follows AWS's ``serde_cbor::to_vec`` of the Rust enums (§1.2): a unit variant is a
bare text string (``"DescribeNSM"``, ``"LockPCR"``), every other variant a one-entry map
``{"Variant": {field: value, ...}}`` with fields in declaration order, ``None`` written as
null (the key is kept), definite lengths and minimal integers. Decoding is as tolerant as
serde's derive (§1.2, "Decoding tolerance"): both enum forms, optional fields null, undefined
or absent, unknown fields ignored, integers of any width.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Union

import cbor2

from fake_nsm.errors import (
    ERROR_CLASSES,
    InputTooLarge,
    InvalidArgument,
    InvalidResponse,
    NsmRequestError,
)

if TYPE_CHECKING:
    import socket

#: Largest encoded request the NSM accepts (§1.4: the driver's 0x1000).
MAX_REQUEST_SIZE = 0x1000
#: Largest reply the NSM writes (§1.4: the 0x3000 response buffer).
MAX_RESPONSE_SIZE = 0x3000
#: The NSM socket's frame prefix, both directions: the CBOR body's length, 4 bytes big-endian
#: (docs/architecture.md, "NSM transport"). The client and the server both use this one.
FRAME_HEADER = struct.Struct(">I")
#: ErrorCode names in AWS's order, values 0..8 (§1.1).
ERROR_CODES: tuple[str, ...] = (
    "Success",
    "InvalidArgument",
    "InvalidIndex",
    "InvalidResponse",
    "ReadOnlyIndex",
    "InvalidOperation",
    "BufferTooSmall",
    "InputTooLarge",
    "InternalError",
)
_U16_MAX = 0xFFFF


# --- requests (§1.1, Request enum) -------------------------------------------------------


@dataclass(frozen=True)
class DescribePCR:
    """Read a PCR and its lock state."""

    index: int


@dataclass(frozen=True)
class ExtendPCR:
    """Extend a PCR: new = SHA384(old || data)."""

    index: int
    data: bytes


@dataclass(frozen=True)
class LockPCR:
    """Make one PCR read-only until the enclave ends."""

    index: int


@dataclass(frozen=True)
class LockPCRs:
    """Lock PCRs ``0 .. range-1``."""

    range: int


@dataclass(frozen=True)
class DescribeNSM:
    """Ask for the module's description (version, module_id, locked PCRs...)."""


@dataclass(frozen=True)
class Attestation:
    """Ask for a signed attestation document carrying these optional values."""

    user_data: bytes | None = None
    nonce: bytes | None = None
    public_key: bytes | None = None


@dataclass(frozen=True)
class GetRandom:
    """Ask for random bytes."""


Request = Union[DescribePCR, ExtendPCR, LockPCR, LockPCRs, DescribeNSM, Attestation, GetRandom]


# --- responses (§1.1, Response enum) -----------------------------------------------------


@dataclass(frozen=True)
class DescribePCRResponse:
    lock: bool
    data: bytes


@dataclass(frozen=True)
class ExtendPCRResponse:
    data: bytes


@dataclass(frozen=True)
class LockPCRResponse:
    pass


@dataclass(frozen=True)
class LockPCRsResponse:
    pass


@dataclass(frozen=True)
class DescribeNSMResponse:
    version_major: int
    version_minor: int
    version_patch: int
    module_id: str
    max_pcrs: int
    locked_pcrs: tuple[int, ...] = field(default_factory=tuple)
    digest: str = "SHA384"


@dataclass(frozen=True)
class AttestationResponse:
    document: bytes


@dataclass(frozen=True)
class GetRandomResponse:
    random: bytes


@dataclass(frozen=True)
class ErrorResponse:
    """``Response::Error(ErrorCode)``; ``code`` is the ErrorCode name."""

    code: str


Response = Union[
    DescribePCRResponse,
    ExtendPCRResponse,
    LockPCRResponse,
    LockPCRsResponse,
    DescribeNSMResponse,
    AttestationResponse,
    GetRandomResponse,
    ErrorResponse,
]

#: The response variant that answers each request variant (same Rust variant name).
RESPONSE_FOR: dict[type, type] = {
    DescribePCR: DescribePCRResponse,
    ExtendPCR: ExtendPCRResponse,
    LockPCR: LockPCRResponse,
    LockPCRs: LockPCRsResponse,
    DescribeNSM: DescribeNSMResponse,
    Attestation: AttestationResponse,
    GetRandom: GetRandomResponse,
}


# --- shared decoding helpers -------------------------------------------------------------


def _loads_exact(data: bytes, error: type[NsmRequestError], what: str) -> object:
    """Decode exactly one CBOR item; trailing bytes are an error, as in serde_cbor::from_slice."""
    if not data:
        raise error(f"empty {what}")
    stream = io.BytesIO(data)
    try:
        value = cbor2.CBORDecoder(stream).decode()
    except Exception as exc:  # noqa: BLE001 - cbor2 raises many types (and RecursionError)
        raise error(f"{what} is not valid CBOR ({type(exc).__name__}: {exc})") from None
    if stream.tell() != len(data):
        raise error(f"{what} has {len(data) - stream.tell()} trailing bytes after its CBOR item")
    return value


def _split_variant(value: object, error: type[NsmRequestError], what: str) -> tuple[str, object, bool]:
    """Return (variant name, body, is_unit_form) of a serde enum: a text or a one-entry map."""
    if isinstance(value, str):
        return value, None, True
    if isinstance(value, Mapping) and len(value) == 1:
        ((name, body),) = value.items()
        if isinstance(name, str):
            return name, body, False
    raise error(f"{what} must be a variant name (text) or a one-entry map {{name: fields}}")


def _fields(body: object, variant: str, error: type[NsmRequestError]) -> Mapping[object, object]:
    if not isinstance(body, Mapping):
        raise error(f"{variant} needs a map of fields, got {type(body).__name__}")
    return body


def _required(fields: Mapping[object, object], name: str, variant: str, err: type[NsmRequestError]) -> object:
    if name not in fields:
        raise err(f"{variant} is missing its field {name!r}")
    return fields[name]


def _u16(value: object, name: str, variant: str, err: type[NsmRequestError]) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _U16_MAX:
        raise err(f"{variant}.{name} must be an unsigned 16-bit integer, got {value!r:.40}")
    return value


def _bytes(value: object, name: str, variant: str, err: type[NsmRequestError]) -> bytes:
    if not isinstance(value, bytes):
        raise err(f"{variant}.{name} must be a byte string, got {type(value).__name__}")
    return value


def _optional_bytes(fields: Mapping[object, object], name: str, variant: str, err: type[NsmRequestError]) -> bytes | None:
    value = fields.get(name)
    if value is None or value is cbor2.undefined:
        return None
    return _bytes(value, name, variant, err)


# --- requests <-> CBOR -------------------------------------------------------------------

_UNIT_REQUESTS: dict[str, Request] = {"DescribeNSM": DescribeNSM(), "GetRandom": GetRandom()}


def decode_request(data: bytes) -> Request:
    """Decode one request as the NSM receives it.

    Raises:
        InputTooLarge: the encoded request is over 4096 bytes (§1.4).
        InvalidArgument: not one valid CBOR item, or not a well-formed request.
    """
    if len(data) > MAX_REQUEST_SIZE:
        raise InputTooLarge(f"request is {len(data)} bytes; the NSM accepts at most {MAX_REQUEST_SIZE}")
    err = InvalidArgument
    name, body, unit_form = _split_variant(_loads_exact(data, err, "request"), err, "a request")
    if name in _UNIT_REQUESTS:
        # serde accepts a unit variant as a bare text or as {"Name": null}.
        if unit_form or body is None:
            return _UNIT_REQUESTS[name]
        raise err(f"{name} takes no fields; send the text {name!r}")
    if unit_form:
        if name in _STRUCT_REQUESTS:
            raise err(f"{name} has fields; send it as a map {{{name!r}: {{...}}}}")
        raise err(f"unknown request {name!r:.60}")
    decoder = _STRUCT_REQUESTS.get(name)
    if decoder is None:
        raise err(f"unknown request {name!r:.60}")
    return decoder(_fields(body, name, err))


def _decode_describe_pcr(f: Mapping[object, object]) -> Request:
    return DescribePCR(_u16(_required(f, "index", "DescribePCR", InvalidArgument), "index", "DescribePCR", InvalidArgument))


def _decode_extend_pcr(f: Mapping[object, object]) -> Request:
    err = InvalidArgument
    index = _u16(_required(f, "index", "ExtendPCR", err), "index", "ExtendPCR", err)
    return ExtendPCR(index, _bytes(_required(f, "data", "ExtendPCR", err), "data", "ExtendPCR", err))


def _decode_lock_pcr(f: Mapping[object, object]) -> Request:
    return LockPCR(_u16(_required(f, "index", "LockPCR", InvalidArgument), "index", "LockPCR", InvalidArgument))


def _decode_lock_pcrs(f: Mapping[object, object]) -> Request:
    return LockPCRs(_u16(_required(f, "range", "LockPCRs", InvalidArgument), "range", "LockPCRs", InvalidArgument))


def _decode_attestation(f: Mapping[object, object]) -> Request:
    err = InvalidArgument
    return Attestation(
        user_data=_optional_bytes(f, "user_data", "Attestation", err),
        nonce=_optional_bytes(f, "nonce", "Attestation", err),
        public_key=_optional_bytes(f, "public_key", "Attestation", err),
    )


_STRUCT_REQUESTS = {
    "DescribePCR": _decode_describe_pcr,
    "ExtendPCR": _decode_extend_pcr,
    "LockPCR": _decode_lock_pcr,
    "LockPCRs": _decode_lock_pcrs,
    "Attestation": _decode_attestation,
}


def encode_request(request: Request) -> bytes:
    """Encode a request exactly as AWS's nsm-lib does (serde_cbor, §1.2)."""
    if isinstance(request, (DescribeNSM, GetRandom)):
        return cbor2.dumps(type(request).__name__)
    if isinstance(request, DescribePCR):
        body: dict[str, object] = {"index": request.index}
    elif isinstance(request, ExtendPCR):
        body = {"index": request.index, "data": bytes(request.data)}
    elif isinstance(request, LockPCR):
        body = {"index": request.index}
    elif isinstance(request, LockPCRs):
        body = {"range": request.range}
    elif isinstance(request, Attestation):
        body = {"user_data": request.user_data, "nonce": request.nonce, "public_key": request.public_key}
    else:
        raise TypeError(f"not an NSM request: {request!r}")
    return cbor2.dumps({type(request).__name__: body})


# --- responses <-> CBOR ------------------------------------------------------------------


def encode_response(response: Response) -> bytes:
    """Encode a response byte-for-byte as AWS's serde_cbor does (§1.2 table)."""
    if isinstance(response, (LockPCRResponse, LockPCRsResponse)):
        return cbor2.dumps(type(response).__name__.removesuffix("Response"))
    if isinstance(response, ErrorResponse):
        return cbor2.dumps({"Error": response.code})
    if isinstance(response, DescribePCRResponse):
        name, body = "DescribePCR", {"lock": bool(response.lock), "data": bytes(response.data)}
    elif isinstance(response, ExtendPCRResponse):
        name, body = "ExtendPCR", {"data": bytes(response.data)}
    elif isinstance(response, DescribeNSMResponse):
        name, body = "DescribeNSM", {
            "version_major": response.version_major,
            "version_minor": response.version_minor,
            "version_patch": response.version_patch,
            "module_id": response.module_id,
            "max_pcrs": response.max_pcrs,
            # BTreeSet<u16> serializes as a definite array in ascending order (§1.2).
            "locked_pcrs": sorted(set(response.locked_pcrs)),
            "digest": response.digest,
        }
    elif isinstance(response, AttestationResponse):
        name, body = "Attestation", {"document": bytes(response.document)}
    elif isinstance(response, GetRandomResponse):
        name, body = "GetRandom", {"random": bytes(response.random)}
    else:
        raise TypeError(f"not an NSM response: {response!r}")
    return cbor2.dumps({name: body})


def decode_response(data: bytes) -> Response:
    """Decode a reply from the NSM (real or emulated).

    Raises:
        InvalidResponse: the bytes are not one well-formed NSM response.
    """
    err = InvalidResponse
    if len(data) > MAX_RESPONSE_SIZE:
        raise err(f"reply is {len(data)} bytes; the NSM writes at most {MAX_RESPONSE_SIZE}")
    name, body, unit_form = _split_variant(_loads_exact(data, err, "reply"), err, "a reply")
    if name in ("LockPCR", "LockPCRs"):
        if unit_form or body is None:
            return LockPCRResponse() if name == "LockPCR" else LockPCRsResponse()
        raise err(f"{name} reply carries unexpected fields")
    if name == "Error":
        if unit_form or not isinstance(body, str) or body not in ERROR_CODES:
            raise err(f"Error reply without a known ErrorCode: {body!r:.60}")
        return ErrorResponse(body)
    if unit_form:
        raise err(f"unknown or fieldless reply {name!r:.60}")
    f = _fields(body, name, err)
    if name == "DescribePCR":
        lock = _required(f, "lock", name, err)
        if not isinstance(lock, bool):
            raise err("DescribePCR.lock must be a boolean")
        return DescribePCRResponse(lock, _bytes(_required(f, "data", name, err), "data", name, err))
    if name == "ExtendPCR":
        return ExtendPCRResponse(_bytes(_required(f, "data", name, err), "data", name, err))
    if name == "Attestation":
        return AttestationResponse(_bytes(_required(f, "document", name, err), "document", name, err))
    if name == "GetRandom":
        return GetRandomResponse(_bytes(_required(f, "random", name, err), "random", name, err))
    if name == "DescribeNSM":
        return _decode_describe_nsm(f)
    raise err(f"unknown reply {name!r:.60}")


def _decode_describe_nsm(f: Mapping[object, object]) -> DescribeNSMResponse:
    err, name = InvalidResponse, "DescribeNSM"
    numbers = {
        key: _u16(_required(f, key, name, err), key, name, err)
        for key in ("version_major", "version_minor", "version_patch", "max_pcrs")
    }
    module_id = _required(f, "module_id", name, err)
    digest = _required(f, "digest", name, err)
    locked = _required(f, "locked_pcrs", name, err)
    if not isinstance(module_id, str) or not isinstance(digest, str):
        raise err("DescribeNSM.module_id and .digest must be text")
    if not isinstance(locked, (list, tuple)):
        raise err("DescribeNSM.locked_pcrs must be an array")
    indices = tuple(sorted(_u16(i, "locked_pcrs", name, err) for i in locked))
    return DescribeNSMResponse(module_id=module_id, locked_pcrs=indices, digest=digest, **numbers)


def raise_for_error(response: Response, request: Request) -> Response:
    """Return ``response`` if it answers ``request``; raise the typed error otherwise.

    Raises:
        NsmRequestError: the subclass named after the ErrorCode of an ``Error`` reply.
        InvalidResponse: the reply is a different variant than the request asked for.
    """
    if isinstance(response, ErrorResponse):
        cls = ERROR_CLASSES.get(response.code)
        if cls is None:  # "Success" as an error is not a meaningful reply
            raise InvalidResponse(f"the NSM answered Error({response.code})")
        raise cls(f"the NSM refused {type(request).__name__}")
    expected = RESPONSE_FOR[type(request)]
    if not isinstance(response, expected):
        raise InvalidResponse(
            f"{type(request).__name__} was answered with {type(response).__name__.removesuffix('Response')}"
        )
    return response


def recv_up_to(sock: socket.socket, size: int) -> bytes:
    """Read ``size`` bytes of a frame from ``sock``, or fewer if the peer closes first.

    The caller decides what a short read means (a clean end, or a broken frame).
    """
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return bytes(data)
