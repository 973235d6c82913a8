"""The KMS wire protocol: AWS JSON 1.1 over HTTP POST (botocore ``metadata``: protocol
``json``, jsonVersion 1.1, targetPrefix ``TrentService``, signatureVersion v4).

A request is ``POST /`` with ``Content-Type: application/x-amz-json-1.1``,
``X-Amz-Target: TrentService.<Operation>``, a JSON object body (blobs base64) and a SigV4
``Authorization`` header. A reply is the JSON output shape, or an error
``{"__type": "<Code>", "message": "..."}`` with HTTP 400 (500 for KMSInternalException).

Authentication: the header must be SigV4's shape,
``AWS4-HMAC-SHA256 Credential=<AKID>/<date>/<region>/kms/aws4_request, SignedHeaders=..., Signature=...``
(or the presigned query form ``X-Amz-Credential=...``). **The signature is not verified**:
any secret key works. The access key id names the caller:
``arn:aws:iam::<server account>:user/<AKID>``. No header at all is
MissingAuthenticationTokenException ("Missing Authentication Token", as AWS answers
unsigned requests); a malformed one is IncompleteSignatureException.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import parse_qs, urlsplit

from emulator.kms import errors as kms_errors
from emulator.kms.backend import KmsBackend
from emulator.kms.errors import (
    IncompleteSignatureException,
    KmsError,
    KMSInternalException,
    MissingAuthenticationTokenException,
    SerializationException,
    UnknownOperationException,
)
from emulator.kms.models import Caller
from emulator.kms.shapes import OPERATIONS, validate_request
from fake_nsm.faults import Fault, FaultError, FaultPlan

__all__ = ["CONTENT_TYPE", "INJECTABLE_ERRORS", "KmsResponder", "WireResponse", "injected_error"]

#: Errors a fault may make an operation answer, with AWS's message for each.
INJECTABLE_ERRORS: dict[str, str] = {
    "ThrottlingException": "Rate exceeded",
    "KMSInternalException": "The request could not be completed because of an internal error.",
    "DisabledException": "{key} is disabled.",
    "KMSInvalidStateException": "{key} is pending deletion.",
    "NotFoundException": "Key '{key}' does not exist",
    "AccessDeniedException": "User is not authorized to perform this operation on {key}",
}


def injected_error(fault: Fault, params: Mapping[str, Any]) -> KmsError:
    """The KMS error a fault asks for, worded as AWS words it (the key as the request named it)."""
    assert fault.error is not None
    cls = getattr(kms_errors, fault.error)
    key = str(params.get("KeyId") or params.get("SourceKeyId") or "the key")
    message = fault.message or INJECTABLE_ERRORS.get(fault.error, "injected by nitro-emu").format(key=key)
    error: KmsError = cls(message)
    return error

CONTENT_TYPE = "application/x-amz-json-1.1"
TARGET_PREFIX = "TrentService."
_CREDENTIAL = re.compile(r"Credential=([^/,\s]+)/(\d{8})/([a-z0-9-]+)/([a-z0-9-]+)/aws4_request")
_log = logging.getLogger("emulator.kms")


@dataclass(frozen=True)
class WireResponse:
    """An HTTP reply: status, headers and body bytes."""

    status: int
    headers: Mapping[str, str]
    body: bytes
    operation: str = "-"
    caller: str = "-"
    error: str | None = None
    #: an injected transport fault the server carries out: "drop" or "truncate"
    transport_fault: str | None = None


def _encode(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, dict):
        return {key: _encode(item) for key, item in value.items() if item is not None}
    if isinstance(value, list):
        return [_encode(item) for item in value]
    return value


class KmsResponder:
    """Turns one HTTP request into one reply by calling the backend. Never raises.

    Args:
        backend: the KMS state and rules.
        faults: injected faults by operation name (``fake_nsm.faults``; docs/testing-unhappy-paths.md).
    """

    def __init__(self, backend: KmsBackend, faults: FaultPlan | None = None) -> None:
        self.backend = backend
        self.faults = faults

    def handle(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> WireResponse:
        """The reply to a request; ``headers`` are matched case-insensitively."""
        lowered = {name.lower(): value for name, value in headers.items()}
        request_id = str(uuid.uuid4())
        operation = "-"
        caller_arn = "-"
        try:
            operation = self._operation(method, lowered)
            caller = self._caller(lowered, path)
            caller_arn = caller.arn
            params = validate_request(operation, self._body(body))
            fault = self._fault(operation)
            if fault is not None and fault.drop:
                return WireResponse(500, {}, b"", operation, caller_arn, "injected drop", "drop")
            if fault is not None and fault.delay is not None:
                time.sleep(fault.delay)
            if fault is not None and fault.error is not None:
                raise injected_error(fault, params)
            reply = self.backend.dispatch(operation, caller, params)
            payload = json.dumps(_encode(reply)).encode()
            response = self._reply(200, payload, request_id, operation, caller_arn, None)
            if fault is not None and fault.truncate:
                return replace(response, transport_fault="truncate")
            return response
        except KmsError as error:
            payload = json.dumps(error.to_wire()).encode()
            return self._reply(error.status, payload, request_id, operation, caller_arn, error.aws_type)
        except Exception:  # noqa: BLE001 - no request may crash the server
            # The traceback goes to the log (it shows code, not request data); the client
            # sees AWS's internal error.
            _log.exception("KMS internal error in %s (request %s)", operation, request_id)
            internal = KMSInternalException("The request could not be completed because of an internal error.")
            payload = json.dumps(internal.to_wire()).encode()
            return self._reply(500, payload, request_id, operation, caller_arn, internal.aws_type)

    def _fault(self, operation: str) -> Fault | None:
        if self.faults is None:
            return None
        try:
            return self.faults.take(operation)
        except FaultError as error:
            _log.error("KMS fault plan unreadable, ignored: %s", error)
            return None

    @staticmethod
    def _reply(status: int, payload: bytes, request_id: str, operation: str, caller: str,
               error: str | None) -> WireResponse:
        headers = {"Content-Type": CONTENT_TYPE, "x-amzn-RequestId": request_id}
        return WireResponse(status, headers, payload, operation, caller, error)

    @staticmethod
    def _operation(method: str, headers: Mapping[str, str]) -> str:
        target = headers.get("x-amz-target", "")
        if method != "POST" or not target.startswith(TARGET_PREFIX):
            raise UnknownOperationException()
        operation = target[len(TARGET_PREFIX):]
        if operation not in OPERATIONS:
            raise UnknownOperationException()
        return operation

    def _caller(self, headers: Mapping[str, str], path: str) -> Caller:
        authorization = headers.get("authorization")
        if authorization is None:
            query = parse_qs(urlsplit(path).query)
            credential = query.get("X-Amz-Credential")
            if not credential:
                raise MissingAuthenticationTokenException("Missing Authentication Token")
            authorization = f"AWS4-HMAC-SHA256 Credential={credential[0]}, SignedHeaders=host, Signature=x"
        if not authorization.startswith("AWS4-HMAC-SHA256 "):
            raise IncompleteSignatureException(
                f"Authorization header requires 'AWS4-HMAC-SHA256' as its algorithm, got "
                f"'{authorization.split(' ', 1)[0][:40]}'"
            )
        match = _CREDENTIAL.search(authorization)
        if match is None or "Signature=" not in authorization or "SignedHeaders=" not in authorization:
            raise IncompleteSignatureException(
                "Authorization header requires 'Credential=<AKID>/<date>/<region>/kms/aws4_request', "
                "'SignedHeaders' and 'Signature' parameters"
            )
        return Caller.from_access_key(match.group(1), self.backend.account)

    @staticmethod
    def _body(body: bytes) -> dict[str, Any]:
        if not body.strip():
            return {}
        try:
            document = json.loads(body)
        except (ValueError, RecursionError):
            raise SerializationException("The request body is not valid JSON") from None
        if not isinstance(document, dict):
            raise SerializationException("The request body must be a JSON object")
        return document
