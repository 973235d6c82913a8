"""The NSM client for enclave code: the same calls on real Nitro and on nitro-emu.

Standard library and ``cbor2`` only (it runs inside enclaves). Two transports behind one
interface:

- :class:`DevNsmTransport`: the real ``/dev/nsm`` via ``ioctl(fd, 0xC0200A00, msg)`` where
  ``msg`` is two iovecs {request addr, len; response addr, len} (nitro-facts §1.4);
- :class:`SocketTransport`: the emulator's Unix socket (``$NITRO_EMU_NSM_SOCKET``, default
  ``/run/nitro-emu/nsm.sock``), each message framed by a 4-byte big-endian length.

:class:`NsmClient` picks ``/dev/nsm`` when it exists, so the same code runs on real Nitro::

    from fake_nsm.client import NsmClient

    with NsmClient() as nsm:
        document = nsm.get_attestation_doc(nonce=b"...", public_key=spki_der)

NSM refusals raise the exception named after the ErrorCode (``ReadOnlyIndex``, ...; all
:class:`~fake_nsm.errors.NsmRequestError`); a malformed or mismatched reply raises
:class:`~fake_nsm.errors.InvalidResponse`.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol

from fake_nsm import codec
from fake_nsm.errors import InputTooLarge, InternalError, InvalidResponse, NsmUnavailable

DEV_NSM = "/dev/nsm"
SOCKET_ENV = "NITRO_EMU_NSM_SOCKET"
DEFAULT_SOCKET = "/run/nitro-emu/nsm.sock"
#: _IOWR(0x0A, 0, sizeof(struct nsm_message)) with a 32-byte message (§1.4).
NSM_IOCTL_REQUEST = 0xC0200A00


class Transport(Protocol):
    """Carries one encoded request to the NSM and returns the encoded reply."""

    def exchange(self, request: bytes) -> bytes: ...

    def close(self) -> None: ...


# --- the real device ----------------------------------------------------------------------


class IoVec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class NsmMessage(ctypes.Structure):
    """``struct nsm_raw`` / the Rust driver's ``NsmMessage``: request iovec, response iovec."""

    _fields_ = [("request", IoVec), ("response", IoVec)]


class DevNsmTransport:
    """``/dev/nsm`` through ``fcntl.ioctl``, as AWS's driver crate and the kernel define it.

    The device is opened ``O_RDWR`` as a raw fd (no text mode, no seeking: a char device).

    Args:
        path: the device node.
        ioctl: the ioctl function (tests substitute a fake device; default ``fcntl.ioctl``).
    """

    def __init__(self, path: str = DEV_NSM, *, ioctl: Callable[[int, int, Any], Any] = fcntl.ioctl) -> None:
        try:
            self._fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as error:
            raise NsmUnavailable(f"cannot open the NSM device {path}: {error.strerror}") from error
        self.path = path
        self._ioctl = ioctl

    def exchange(self, request: bytes) -> bytes:
        if len(request) > codec.MAX_REQUEST_SIZE:  # the driver crate checks before the ioctl
            raise InputTooLarge(f"request is {len(request)} bytes; the NSM accepts {codec.MAX_REQUEST_SIZE}")
        request_buffer = ctypes.create_string_buffer(request, len(request))
        response_buffer = (ctypes.c_uint8 * codec.MAX_RESPONSE_SIZE)()
        message = NsmMessage(
            IoVec(ctypes.addressof(request_buffer), len(request)),
            IoVec(ctypes.addressof(response_buffer), codec.MAX_RESPONSE_SIZE),
        )
        try:
            self._ioctl(self._fd, NSM_IOCTL_REQUEST, message)
        except OSError as error:
            # The driver crate's mapping: EMSGSIZE -> InputTooLarge, anything else -> InternalError.
            if error.errno == errno.EMSGSIZE:
                raise InputTooLarge(f"{self.path} refused the request size (EMSGSIZE)") from error
            raise InternalError(f"ioctl on {self.path} failed: {error}") from error
        length = min(int(message.response.iov_len), codec.MAX_RESPONSE_SIZE)
        return bytes(response_buffer[:length])

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


# --- the emulator's socket ----------------------------------------------------------------


class SocketTransport:
    """The nitro-emu NSM socket: 4-byte big-endian length + CBOR, both directions.

    One connection, used by one request at a time (a lock serialises threads).

    Args:
        path: the socket; default ``$NITRO_EMU_NSM_SOCKET`` or ``/run/nitro-emu/nsm.sock``.
        timeout: seconds to wait for a reply (None: forever, as the real ioctl blocks).
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, *, timeout: float | None = None) -> None:
        self.path = os.fspath(path) if path is not None else os.environ.get(SOCKET_ENV, DEFAULT_SOCKET)
        self._lock = threading.Lock()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._sock.connect(self.path)
        except OSError as error:
            self._sock.close()
            raise NsmUnavailable(
                f"no NSM: {DEV_NSM} does not exist and the emulator socket {self.path} refused "
                f"({error.strerror}); run inside nitro-emu, or start `nitro-emu nsm serve "
                f"--socket PATH` and set {SOCKET_ENV}=PATH"
            ) from error
        self._sock.settimeout(timeout)

    def exchange(self, request: bytes) -> bytes:
        if len(request) > codec.MAX_REQUEST_SIZE:
            raise InputTooLarge(f"request is {len(request)} bytes; the NSM accepts {codec.MAX_REQUEST_SIZE}")
        with self._lock:
            try:
                self._sock.sendall(codec.FRAME_HEADER.pack(len(request)) + request)
                (length,) = codec.FRAME_HEADER.unpack(self._recv_exact(codec.FRAME_HEADER.size))
                if length > codec.MAX_RESPONSE_SIZE:
                    self.close()
                    raise InvalidResponse(f"reply frame of {length} bytes is over {codec.MAX_RESPONSE_SIZE}")
                return self._recv_exact(length)
            except OSError as error:
                self.close()
                raise InternalError(f"the NSM socket {self.path} failed: {error}") from error

    def _recv_exact(self, size: int) -> bytes:
        data = codec.recv_up_to(self._sock, size)
        if len(data) < size:
            self.close()
            raise InternalError(f"the NSM socket {self.path} closed the connection mid-reply")
        return data

    def close(self) -> None:
        self._sock.close()


def default_transport() -> Transport:
    """``/dev/nsm`` when it exists (real Nitro), else the emulator socket."""
    if os.path.exists(DEV_NSM):
        return DevNsmTransport(DEV_NSM)
    return SocketTransport()


# --- the client ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PcrDescription:
    """A PCR's lock state and value (48 bytes)."""

    lock: bool
    data: bytes


@dataclass(frozen=True)
class NsmDescription:
    """DescribeNSM: the module's version, id, PCR count, locked PCRs and digest."""

    version_major: int
    version_minor: int
    version_patch: int
    module_id: str
    max_pcrs: int
    locked_pcrs: frozenset[int]
    digest: str


class NsmClient:
    """Every NSM request as a method. Thread-safe; a context manager that closes the transport.

    Args:
        transport: how to reach the NSM; default :func:`default_transport`.
    """

    def __init__(self, transport: Transport | None = None) -> None:
        self.transport = transport if transport is not None else default_transport()

    def request(self, request: codec.Request) -> codec.Response:
        """Send one request; return the matching reply or raise the NSM's typed error."""
        reply = self.transport.exchange(codec.encode_request(request))
        return codec.raise_for_error(codec.decode_response(reply), request)

    def describe_pcr(self, index: int) -> PcrDescription:
        reply = self.request(codec.DescribePCR(index))
        assert isinstance(reply, codec.DescribePCRResponse)
        return PcrDescription(lock=reply.lock, data=reply.data)

    def extend_pcr(self, index: int, data: bytes) -> bytes:
        """Extend PCR ``index`` with ``data``; returns the new value."""
        reply = self.request(codec.ExtendPCR(index, bytes(data)))
        assert isinstance(reply, codec.ExtendPCRResponse)
        return reply.data

    def lock_pcr(self, index: int) -> None:
        self.request(codec.LockPCR(index))

    def lock_pcrs(self, range_: int) -> None:
        """Lock PCRs ``0 .. range_-1``."""
        self.request(codec.LockPCRs(range_))

    def describe_nsm(self) -> NsmDescription:
        reply = self.request(codec.DescribeNSM())
        assert isinstance(reply, codec.DescribeNSMResponse)
        return NsmDescription(
            version_major=reply.version_major,
            version_minor=reply.version_minor,
            version_patch=reply.version_patch,
            module_id=reply.module_id,
            max_pcrs=reply.max_pcrs,
            locked_pcrs=frozenset(reply.locked_pcrs),
            digest=reply.digest,
        )

    def get_attestation_doc(
        self, user_data: bytes | None = None, nonce: bytes | None = None, public_key: bytes | None = None
    ) -> bytes:
        """A signed attestation document (untagged COSE_Sign1 bytes)."""

        def opt(value: bytes | None) -> bytes | None:
            return None if value is None else bytes(value)

        reply = self.request(codec.Attestation(opt(user_data), opt(nonce), opt(public_key)))
        assert isinstance(reply, codec.AttestationResponse)
        return reply.document

    def get_random(self) -> bytes:
        """Random bytes from the NSM (256 on nitro-emu)."""
        reply = self.request(codec.GetRandom())
        assert isinstance(reply, codec.GetRandomResponse)
        return reply.random

    def close(self) -> None:
        self.transport.close()

    def __enter__(self) -> NsmClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
