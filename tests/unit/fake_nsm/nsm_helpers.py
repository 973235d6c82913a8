"""Helpers shared by the NSM tests: a device wired to the test CA, in-process transports."""

from __future__ import annotations

import ctypes
import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import cbor2

from fake_nsm.client import NsmMessage
from fake_nsm.device import NsmDevice

INSTANCE_ID = "i-020b6af9246d90e92"
MODULE_ID = f"{INSTANCE_ID}-enc0183d09086c24190"
# PCR4 of the genuine AWS documents for this instance (nitro-facts §1.3 [verified]).
REAL_PCR4_PREFIX = "1f442c86"
MEASUREMENTS = {
    0: hashlib.sha384(b"image").digest(),
    1: hashlib.sha384(b"kernel").digest(),
    2: hashlib.sha384(b"application").digest(),
    8: hashlib.sha384(b"signing certificate").digest(),
}


class TinySigner:
    """An unsigned COSE_Sign1-shaped document, for the fuzz tests (they fuzz the wire, not signing)."""

    def __init__(self, module_id: str) -> None:
        self.module_id = module_id

    def sign(self, pcrs: Mapping[int, bytes], *, user_data=None, nonce=None, public_key=None) -> bytes:  # type: ignore[no-untyped-def]
        payload = {
            "module_id": self.module_id, "digest": "SHA384", "timestamp": 1, "pcrs": dict(pcrs),
            "certificate": b"c", "cabundle": [b"r"], "public_key": public_key,
            "user_data": user_data, "nonce": nonce,
        }
        return cbor2.dumps([b"\xa1\x01\x38\x22", {}, cbor2.dumps(payload), bytes(96)])


def make_signer(ca_dir: Path, module_id: str = MODULE_ID) -> Any:
    """A real DocumentSigner for ``module_id`` on a test CA kept in ``ca_dir``."""
    from ca import TestCA
    from fake_nsm.document_signer import DocumentSigner

    return DocumentSigner(TestCA.load_or_create(ca_dir), module_id)


def document_payload(document: bytes) -> dict[Any, Any]:
    """The payload map of an (untagged) COSE_Sign1 attestation document."""
    message = cbor2.loads(document)
    assert isinstance(message, list) and len(message) == 4
    payload = cbor2.loads(message[2])
    assert isinstance(payload, dict)
    return payload


def make_device(ca_dir: Path, **overrides: Any) -> NsmDevice:
    options: dict[str, Any] = {"module_id": MODULE_ID, "measurements": MEASUREMENTS}
    options.update(overrides)
    if "signer" not in options:
        options["signer"] = make_signer(ca_dir, options["module_id"])
    return NsmDevice(**options)


def ca_root(ca_dir: Path) -> Any:
    from ca import TestCA

    return TestCA.load_or_create(ca_dir).root_certificate


class DeviceTransport:
    """The client's transport straight into an in-process device (the wire bytes still flow)."""

    def __init__(self, device: NsmDevice) -> None:
        self.device = device
        self.closed = False

    def exchange(self, request: bytes) -> bytes:
        return self.device.handle(request)

    def close(self) -> None:
        self.closed = True


class FakeIoctl:
    """Plays the kernel's part of ``ioctl(fd, 0xC0200A00, &nsm_message)`` (nitro-facts §1.4).

    Reads the request through the iovec's address, answers with the device, copies at most the
    caller's capacity to the response iovec and writes the length back, as drivers/misc/nsm.c.
    """

    def __init__(self, device: NsmDevice, *, reply: bytes | None = None) -> None:
        self.device = device
        self.reply = reply
        self.calls: list[tuple[int, int]] = []

    def __call__(self, fd: int, request_code: int, message: Any) -> int:
        self.calls.append((fd, request_code))
        assert isinstance(message, NsmMessage) and ctypes.sizeof(message) == 32
        request = ctypes.string_at(message.request.iov_base, message.request.iov_len)
        reply = self.reply if self.reply is not None else self.device.handle(request)
        length = min(len(reply), message.response.iov_len)
        ctypes.memmove(message.response.iov_base, reply, length)
        message.response.iov_len = length
        return 0


def fold_extend(start: bytes, chunks: list[bytes]) -> bytes:
    value = start
    for chunk in chunks:
        value = hashlib.sha384(value + chunk).digest()
    return value


def pcr_hex(pcrs: Mapping[int, bytes]) -> dict[int, str]:
    return {index: value.hex() for index, value in pcrs.items()}
