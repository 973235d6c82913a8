"""The fake NSM served on a Unix stream socket (docs/architecture.md, "NSM transport").

Every message, both directions, is a 4-byte big-endian length followed by the CBOR exactly as
on the ioctl (nitro-facts §1.2). One device per server; one thread per connection. A bad
request gets an NSM error reply and the connection stays usable; a broken frame (a length over
4096 + 64, or EOF inside a frame) closes that connection only. Nothing a client sends stops
the server: each bad client costs one log line.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import stat
import threading
import time
from pathlib import Path
from types import TracebackType

from fake_nsm import codec
from fake_nsm.device import NsmDevice
from fake_nsm.errors import InputTooLarge, InternalError, NsmConfigError, NsmError
from fake_nsm.faults import Fault, FaultError, FaultPlan

logger = logging.getLogger(__name__)

#: A length prefix above this closes the connection (architecture.md: 4096 + 64 of slack).
MAX_FRAME = codec.MAX_REQUEST_SIZE + 64
_SUN_PATH_MAX = 107


class BrokenFrame(Exception):
    """A client broke the framing; its connection is closed (internal to the server)."""


def _recv_exact(conn: socket.socket, size: int, *, at_boundary: bool) -> bytes | None:
    """Read exactly ``size`` bytes; None on a clean EOF before the first byte of a frame."""
    data = codec.recv_up_to(conn, size)
    if len(data) < size:
        if at_boundary and not data:
            return None
        raise BrokenFrame(f"EOF after {len(data)} of {size} bytes")
    return data


class NsmServer:
    """Serves one :class:`NsmDevice` on a Unix socket.

    Use as a context manager, or call :meth:`start` and :meth:`stop`::

        with NsmServer(run_dir / "nsm.sock", device):
            ...

    Args:
        socket_path: where to bind (at most 107 bytes); a stale socket file there is replaced.
        device: the NSM state this server answers for.
        backlog: the listen backlog.
        faults: injected faults (``fake_nsm.faults``), looked up by request name
            (``Attestation``, ``DescribePCR``, ...) before each answer.
    """

    def __init__(
        self,
        socket_path: str | os.PathLike[str],
        device: NsmDevice,
        *,
        backlog: int = 128,
        faults: FaultPlan | None = None,
    ) -> None:
        self.socket_path = Path(socket_path)
        if len(os.fsencode(self.socket_path)) > _SUN_PATH_MAX:
            raise NsmConfigError(
                f"socket path is {len(os.fsencode(self.socket_path))} bytes; Unix sockets allow "
                f"{_SUN_PATH_MAX}: use a shorter NITRO_EMU_HOME or --socket path: {self.socket_path}"
            )
        self.device = device
        self.faults = faults
        self._backlog = backlog
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()
        self._threads: set[threading.Thread] = set()
        self._guard = threading.Lock()
        self._stopping = threading.Event()
        self.bad_clients = 0  # connections closed for a broken frame, plus bad requests

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> NsmServer:
        """Bind (mode 0666), listen and start accepting in a background thread."""
        if self._listener is not None:
            raise NsmConfigError("this NsmServer is already started")
        self._remove_stale_socket()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(str(self.socket_path))
            # Enclave users (often root without CAP_DAC_OVERRIDE) must reach it (architecture.md).
            os.chmod(self.socket_path, 0o666)
            listener.listen(self._backlog)
        except OSError as error:
            listener.close()
            raise NsmConfigError(f"cannot serve the NSM on {self.socket_path}: {error}") from error
        self._listener = listener
        self._stopping.clear()
        self._accept_thread = threading.Thread(
            target=self._accept_loop, name=f"nsm-accept:{self.socket_path.name}", daemon=True
        )
        self._accept_thread.start()
        logger.info("NSM %s serving on %s", self.device.module_id, self.socket_path)
        return self

    def stop(self) -> None:
        """Stop accepting, close every connection, wait for their threads, remove the socket."""
        listener, self._listener = self._listener, None
        if listener is None:
            return
        self._stopping.set()
        try:
            listener.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
        except OSError:
            pass
        listener.close()
        if self._accept_thread is not None:
            self._accept_thread.join()
        with self._guard:
            connections, threads = list(self._connections), list(self._threads)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for thread in threads:
            thread.join()
        try:
            self.socket_path.unlink()
        except FileNotFoundError:
            pass

    def __enter__(self) -> NsmServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def serving(self) -> bool:
        return self._listener is not None

    def _remove_stale_socket(self) -> None:
        try:
            mode = self.socket_path.lstat().st_mode
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(mode):
            raise NsmConfigError(f"{self.socket_path} exists and is not a socket; remove it or pick another path")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(self.socket_path))
        except OSError as error:
            if error.errno not in (errno.ECONNREFUSED, errno.ENOENT):
                raise NsmConfigError(f"cannot check the old socket {self.socket_path}: {error}") from error
            self.socket_path.unlink(missing_ok=True)  # stale: nobody listens on it
        else:
            raise NsmConfigError(f"another NSM server is already listening on {self.socket_path}")
        finally:
            probe.close()

    # --- serving ---------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        listener = self._listener
        assert listener is not None
        while not self._stopping.is_set():
            try:
                conn, _ = listener.accept()
            except OSError as error:
                if self._stopping.is_set():
                    return
                if error.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    logger.warning("NSM %s: accept failed (%s); retrying", self.socket_path, error)
                    self._stopping.wait(0.05)
                    continue
                if error.errno in (errno.EINTR, errno.ECONNABORTED):
                    continue
                logger.error("NSM %s: accept failed, no longer serving: %s", self.socket_path, error)
                return
            thread = threading.Thread(target=self._serve_connection, args=(conn,), daemon=True)
            with self._guard:
                if self._stopping.is_set():
                    conn.close()
                    return
                self._connections.add(conn)
                self._threads.add(thread)
            thread.start()

    def _serve_connection(self, conn: socket.socket) -> None:
        try:
            while True:
                header = _recv_exact(conn, codec.FRAME_HEADER.size, at_boundary=True)
                if header is None:
                    return  # the client hung up between frames
                (length,) = codec.FRAME_HEADER.unpack(header)
                if length > MAX_FRAME:
                    raise BrokenFrame(f"frame length {length} is over {MAX_FRAME}")
                body = _recv_exact(conn, length, at_boundary=False)
                assert body is not None
                reply, fault = self._answer(body)
                if fault is not None and (fault.drop or fault.truncate):
                    logger.info("NSM %s: injected fault %s", self.socket_path, fault.describe())
                    if fault.truncate:
                        conn.sendall(reply[: max(1, len(reply) // 2)])
                    return  # the connection closes without (the rest of) an answer
                conn.sendall(reply)
        except BrokenFrame as error:
            self._note_bad_client(f"closed a connection: {error}")
        except OSError as error:
            if not self._stopping.is_set():
                self._note_bad_client(f"connection failed: {error}")
        finally:
            conn.close()
            with self._guard:
                self._connections.discard(conn)
                self._threads.discard(threading.current_thread())

    def _fault_for(self, request: codec.Request) -> Fault | None:
        """The injected fault armed for this request's name (``Attestation``, ...), if any."""
        if self.faults is None:
            return None
        try:
            return self.faults.take(type(request).__name__)
        except FaultError as error:
            logger.error("NSM %s: fault plan unreadable, ignored: %s", self.socket_path, error)
            return None

    def _answer(self, body: bytes) -> tuple[bytes, Fault | None]:
        """The framed reply to one framed request, and the injected fault that shaped it.

        An injected error is answered instead of the request (an ExtendPCR so refused extends
        nothing); a delay comes before the answer; a dropped request is not executed.
        """
        fault = None
        try:
            if len(body) > codec.MAX_REQUEST_SIZE:
                self._note_bad_client(f"request of {len(body)} bytes refused (InputTooLarge)")
                reply = codec.encode_response(codec.ErrorResponse(InputTooLarge.code))
            else:
                try:
                    request = codec.decode_request(body)
                except NsmError as error:
                    self._note_bad_client(f"bad request: {error}")
                    reply = codec.encode_response(codec.ErrorResponse(getattr(error, "code", "InvalidArgument")))
                else:
                    fault = self._fault_for(request)
                    if fault is not None and fault.drop:
                        return b"", fault
                    if fault is not None and fault.delay is not None:
                        time.sleep(fault.delay)
                    if fault is not None and fault.error is not None:
                        reply = codec.encode_response(codec.ErrorResponse(fault.error))
                    else:
                        reply = codec.encode_response(self.device.dispatch(request))
        except Exception:  # noqa: BLE001 - nothing a client sends may stop the server
            logger.exception("NSM %s: internal failure answering a request", self.socket_path)
            reply = codec.encode_response(codec.ErrorResponse(InternalError.code))
        return codec.FRAME_HEADER.pack(len(reply)) + reply, fault

    def _note_bad_client(self, message: str) -> None:
        with self._guard:
            self.bad_clients += 1
        logger.warning("NSM %s: %s", self.socket_path, message)
