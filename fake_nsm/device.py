"""One enclave's Nitro Secure Module: the PCR bank and the request handler (nitro-facts §1.3).

The rules are those AWS's on-device conformance test (nsm-api ``nsm-test/src/bin/nsm-check.rs``)
asserts: 32 PCRs of 48 bytes, PCRs 0-15 locked at boot, extend = SHA384(old || data), locked
PCRs refuse extend and lock, ``LockPCRs{range <= 32}`` succeeds, attestation carries exactly
the locked PCRs. Which ErrorCode each refusal gets is not documented by AWS; the mapping here
is the §1.3 [inferred] one.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Mapping
from typing import Protocol

from fake_nsm import codec
from fake_nsm.errors import (
    InputTooLarge,
    InternalError,
    InvalidIndex,
    NsmConfigError,
    NsmRequestError,
    ReadOnlyIndex,
)

logger = logging.getLogger(__name__)

MAX_PCRS = 32
PCR_SIZE = 48  # SHA-384
DIGEST = "SHA384"
#: PCRs 0..15 are locked at boot (§1.3).
BOOT_LOCKED = range(16)
#: PCRs taken from the enclave image's measurements (§3.1); zero in debug mode (§2.5).
MEASURED_PCRS = (0, 1, 2, 8)
#: DescribeNSM version: no authoritative value is public; third-party output shows 1.0.0 (§1.3).
VERSION = (1, 0, 0)
RANDOM_SIZE = 256
#: Attestation field limit the AWS test exercises (1024 each), and the strict limit the AWS
#: syntactic-validation section gives user_data and nonce (512) (§1.3, §2.1).
FIELD_LIMIT = 1024
STRICT_USER_DATA_LIMIT = 512


class DocumentSigning(Protocol):
    """What the device needs from ``fake_nsm.document_signer.DocumentSigner``."""

    def sign(
        self,
        pcrs: Mapping[int, bytes],
        *,
        user_data: bytes | None = None,
        nonce: bytes | None = None,
        public_key: bytes | None = None,
    ) -> bytes: ...


def extend(old: bytes, data: bytes) -> bytes:
    """The PCR extend: SHA384(old || data), the data not pre-hashed (§1.3)."""
    return hashlib.sha384(old + data).digest()


def instance_pcr(instance_id: str) -> bytes:
    """PCR4: SHA384(48 zero bytes || the parent instance id as ASCII) [verified §1.3]."""
    return extend(bytes(PCR_SIZE), instance_id.encode("ascii"))


def _pcr_value(index: int, value: bytes | str) -> bytes:
    if isinstance(value, str):
        try:
            value = bytes.fromhex(value)
        except ValueError:
            raise NsmConfigError(f"PCR{index} is not hex: {value!r:.60}") from None
    if not isinstance(value, (bytes, bytearray)) or len(value) != PCR_SIZE:
        raise NsmConfigError(f"PCR{index} must be {PCR_SIZE} bytes (SHA-384), got {len(value)}")
    return bytes(value)


class NsmDevice:
    """The NSM of one enclave. Thread-safe: any number of connections may share it.

    Args:
        module_id: the enclave id, ``i-<17 hex>-enc<16 hex>``; DescribeNSM and documents carry it.
        signer: signs attestation documents (a ``DocumentSigner`` for the enclave's leaf).
        measurements: PCR index (0, 1, 2 or 8) -> 48-byte value (bytes or hex); absent ones
            are zero (PCR8 is zero for an unsigned EIF).
        debug_mode: zero PCR0/1/2/8 as a debug-mode enclave does (§2.5); PCR3/4 stay.
        instance_id: the parent instance id hashed into PCR4; defaults to the part of
            ``module_id`` before ``-enc``.
        pcr3: the IAM-role measurement (48 bytes or hex); zero by default.
        strict: limit user_data and nonce to 512 bytes (the AWS validation section) instead
            of the 1024 the AWS device test uses; public_key stays at 1024.
    """

    def __init__(
        self,
        *,
        module_id: str,
        signer: DocumentSigning,
        measurements: Mapping[int, bytes | str] | None = None,
        debug_mode: bool = False,
        instance_id: str | None = None,
        pcr3: bytes | str | None = None,
        strict: bool = False,
    ) -> None:
        if not module_id:
            raise NsmConfigError("module_id must be non-empty (the enclave id)")
        self.module_id = module_id
        self.instance_id = instance_id if instance_id is not None else module_id.split("-enc")[0]
        if not self.instance_id.isascii():
            raise NsmConfigError(f"instance id must be ASCII: {self.instance_id!r}")
        self.debug_mode = debug_mode
        self.strict = strict
        self._signer = signer
        self._lock = threading.Lock()
        self._pcrs = [bytes(PCR_SIZE) for _ in range(MAX_PCRS)]
        self._locked = [index in BOOT_LOCKED for index in range(MAX_PCRS)]
        for index, value in (measurements or {}).items():
            if index not in MEASURED_PCRS:
                raise NsmConfigError(f"measurements may set PCR 0, 1, 2 and 8 only, not PCR{index}")
            if not debug_mode:
                self._pcrs[index] = _pcr_value(index, value)
        if pcr3 is not None:
            self._pcrs[3] = _pcr_value(3, pcr3)
        self._pcrs[4] = instance_pcr(self.instance_id)

    # --- state, for the supervisor and tests -----------------------------------------------

    def pcr(self, index: int) -> bytes:
        """The current value of a PCR."""
        with self._lock:
            return self._pcrs[self._index(index)]

    def is_locked(self, index: int) -> bool:
        with self._lock:
            return self._locked[self._index(index)]

    def locked_pcrs(self) -> dict[int, bytes]:
        """Index -> value of every locked PCR, as an attestation document carries them."""
        with self._lock:
            return {i: value for i, value in enumerate(self._pcrs) if self._locked[i]}

    # --- the wire entry point ----------------------------------------------------------------

    def handle(self, data: bytes) -> bytes:
        """Answer one encoded request with the encoded response, never raising."""
        try:
            request = codec.decode_request(data)
        except NsmRequestError as error:
            logger.debug("undecodable request: %s", error)
            return codec.encode_response(codec.ErrorResponse(error.code))
        return codec.encode_response(self.dispatch(request))

    def dispatch(self, request: codec.Request) -> codec.Response:
        """Answer one decoded request; refusals become ``ErrorResponse``."""
        try:
            return self._execute(request)
        except NsmRequestError as error:
            return codec.ErrorResponse(error.code)
        except Exception:  # noqa: BLE001 - a device fault must become InternalError, not a crash
            logger.exception("NSM %s failed on %s", self.module_id, type(request).__name__)
            return codec.ErrorResponse(InternalError.code)

    # --- request semantics (§1.3) -------------------------------------------------------------

    def _execute(self, request: codec.Request) -> codec.Response:
        if isinstance(request, codec.DescribePCR):
            with self._lock:
                index = self._index(request.index)
                return codec.DescribePCRResponse(lock=self._locked[index], data=self._pcrs[index])
        if isinstance(request, codec.ExtendPCR):
            with self._lock:
                index = self._writable(request.index)
                self._pcrs[index] = extend(self._pcrs[index], request.data)
                return codec.ExtendPCRResponse(data=self._pcrs[index])
        if isinstance(request, codec.LockPCR):
            with self._lock:
                self._locked[self._writable(request.index)] = True
            return codec.LockPCRResponse()
        if isinstance(request, codec.LockPCRs):
            if request.range > MAX_PCRS:
                raise InvalidIndex(f"LockPCRs range {request.range} is over max_pcrs {MAX_PCRS}")
            with self._lock:  # already-locked PCRs in the range are fine (nsm-check)
                for index in range(request.range):
                    self._locked[index] = True
            return codec.LockPCRsResponse()
        if isinstance(request, codec.DescribeNSM):
            with self._lock:
                locked = tuple(i for i in range(MAX_PCRS) if self._locked[i])
            major, minor, patch = VERSION
            return codec.DescribeNSMResponse(
                version_major=major,
                version_minor=minor,
                version_patch=patch,
                module_id=self.module_id,
                max_pcrs=MAX_PCRS,
                locked_pcrs=locked,
                digest=DIGEST,
            )
        if isinstance(request, codec.Attestation):
            return self._attest(request)
        if isinstance(request, codec.GetRandom):
            return codec.GetRandomResponse(random=os.urandom(RANDOM_SIZE))
        raise TypeError(f"not an NSM request: {request!r}")

    def _attest(self, request: codec.Attestation) -> codec.AttestationResponse:
        short = STRICT_USER_DATA_LIMIT if self.strict else FIELD_LIMIT
        limits = {"user_data": short, "nonce": short, "public_key": FIELD_LIMIT}
        for name, limit in limits.items():
            value = getattr(request, name)
            if value is not None and len(value) > limit:
                raise InputTooLarge(f"Attestation.{name} is {len(value)} bytes; the limit is {limit}")
        pcrs = self.locked_pcrs()  # snapshot; sign outside the lock so clients run in parallel
        document = self._signer.sign(
            pcrs, user_data=request.user_data, nonce=request.nonce, public_key=request.public_key
        )
        return codec.AttestationResponse(document=document)

    @staticmethod
    def _index(index: int) -> int:
        if not 0 <= index < MAX_PCRS:
            raise InvalidIndex(f"PCR index {index} is out of range 0..{MAX_PCRS - 1}")
        return index

    def _writable(self, index: int) -> int:
        """The index, if it names an unlocked PCR (caller holds the lock)."""
        self._index(index)
        if self._locked[index]:
            raise ReadOnlyIndex(f"PCR{index} is locked")
        return index
