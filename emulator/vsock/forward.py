"""Port forwarding between host TCP and VSOCK, as socat / vsock-proxy do on real parents.

Two directions (docs/vsock.md "Forwarder"):

* :func:`to_enclave` exposes an enclave's VSOCK port on a host TCP address, so that ``curl``
  on the host reaches a server inside the enclave;
* :func:`from_enclave` listens as the parent on a VSOCK port and connects each enclave
  connection to a host TCP service (what ``vsock-proxy`` does for KMS on real Nitro).

Unlike the VSOCK mirror itself (kernel-connected Unix sockets, no relay), a forwarder has to
copy bytes: TCP and Unix sockets cannot be joined into one stream. Each connection gets two
threads, one per direction, that move bytes with ``splice(2)`` through a 256 KiB pipe (the
bytes never enter Python), or, where splice is unavailable, ``recv_into`` + ``sendall`` with
a 256 KiB buffer. Blocking writes carry backpressure across. EOF in one direction becomes ``shutdown(SHUT_WR)`` on the other side
(half-close kept); an error in either direction tears down both sockets of that connection
only.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

from emulator.vsock import host as vsock
from emulator.errors import EmulatorError

BUFFER_SIZE = 256 * 1024
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


class ForwardError(EmulatorError):
    """A forwarder could not start (bad address, port in use)."""


@dataclass(frozen=True)
class Endpoint:
    """A TCP ``host:port`` or a VSOCK ``cid:port``, parsed from the command line."""

    host: str
    port: int

    @classmethod
    def parse_tcp(cls, text: str) -> Endpoint:
        host, sep, port = text.rpartition(":")
        if not sep or not port.isdecimal() or not 0 <= int(port) <= 65535:
            raise ForwardError(f"expected a TCP address HOST:PORT (port 0..65535), got {text!r}")
        return cls(host.strip("[]") or "127.0.0.1", int(port))

    @classmethod
    def parse_vsock(cls, text: str) -> Endpoint:
        cid, sep, port = text.partition(":")
        if not sep or not cid.isdecimal() or not port.isdecimal():
            raise ForwardError(f"expected a VSOCK address CID:PORT (two integers), got {text!r}")
        return cls(cid, int(port))


def _copy(source: socket.socket, sink: socket.socket, counter: list[int], index: int) -> None:
    buf = bytearray(BUFFER_SIZE)
    view = memoryview(buf)
    while True:
        count = source.recv_into(buf)
        if not count:
            return
        sink.sendall(view[:count])
        counter[index] += count


def _splice(source: socket.socket, sink: socket.socket, counter: list[int], index: int) -> bool:
    """Move source -> sink through a pipe with splice(2), in the kernel; False if unsupported."""
    try:
        read_end, write_end = os.pipe()
    except OSError:  # out of descriptors: the copying loop needs none
        return False
    try:
        with contextlib.suppress(OSError):
            fcntl.fcntl(write_end, F_SETPIPE_SZ, BUFFER_SIZE)
        src, dst = source.fileno(), sink.fileno()
        first = True
        while True:
            try:
                count = os.splice(src, write_end, BUFFER_SIZE)
            except OSError as error:
                if first and error.errno in (errno.EINVAL, errno.ENOSYS):
                    return False  # this pair of descriptors cannot splice
                raise
            first = False
            if not count:
                return True
            counter[index] += count
            while count:
                count -= os.splice(read_end, dst, count)
    finally:
        os.close(read_end)
        os.close(write_end)


def _pump(source: socket.socket, sink: socket.socket, counter: list[int], index: int) -> None:
    """Copy source -> sink until EOF, then half-close sink; on error, tear both down."""
    try:
        if not (hasattr(os, "splice") and _splice(source, sink, counter, index)):
            _copy(source, sink, counter, index)
        sink.shutdown(socket.SHUT_WR)
    except OSError:
        for sock in (source, sink):  # a reset or a dead peer: end this connection only
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


def relay(first: socket.socket, second: socket.socket) -> tuple[int, int]:
    """Copy both ways between two connected sockets until both directions end.

    Returns the bytes copied (first -> second, second -> first). Closes neither socket.
    """
    counter = [0, 0]
    back = threading.Thread(target=_pump, args=(second, first, counter, 1), daemon=True)
    back.start()
    _pump(first, second, counter, 0)
    back.join()
    return counter[0], counter[1]


class Forwarder:
    """Accepts on one side and, per connection, dials the other side and relays.

    ``serve_forever()`` runs the accept loop; ``stop()`` (any thread, or a signal handler)
    makes it return; ``close()`` also ends every open connection and frees the address.
    """

    def __init__(
        self,
        listener: socket.socket | vsock.VsockListener,
        dial: Callable[[], socket.socket],
        description: str,
        *,
        log: TextIO | None = None,
    ) -> None:
        self.listener = listener
        self.dial = dial
        self.description = description
        self.log = log
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._threads: set[threading.Thread] = set()
        self._closing = threading.Event()
        self._closed = False
        self.connections = 0

    def _say(self, message: str) -> None:
        if self.log is not None:
            print(f"nitro-emu vsock-forward: {message}", file=self.log, flush=True)

    def serve_forever(self) -> None:
        """Accept and relay connections until :meth:`close`."""
        self._say(f"forwarding {self.description}")
        while not self._closing.is_set():
            try:
                accepted = self.listener.accept()
            except OSError:
                if self._closing.is_set():
                    break
                raise
            conn = accepted[0]
            thread = threading.Thread(target=self._serve_one, args=(conn,), daemon=True)
            with self._lock:
                if self._closing.is_set():
                    conn.close()
                    break
                self._open.add(conn)
                self._threads.add(thread)
                self.connections += 1
            thread.start()

    def _serve_one(self, conn: socket.socket) -> None:
        other: socket.socket | None = None
        try:
            try:
                other = self.dial()
            except (OSError, EmulatorError) as error:
                self._say(f"cannot reach the target, closing this connection: {error}")
                return
            with self._lock:
                if self._closing.is_set():
                    return
                self._open.add(other)
            for sock in (conn, other):
                if sock.family in (socket.AF_INET, socket.AF_INET6):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            relay(conn, other)
        finally:
            with self._lock:
                self._open.discard(conn)
                if other is not None:
                    self._open.discard(other)
                self._threads.discard(threading.current_thread())
            conn.close()
            if other is not None:
                other.close()

    def stop(self) -> None:
        """Make :meth:`serve_forever` return soon. Takes no lock: safe in a signal handler."""
        self._closing.set()
        sock = self.listener.socket if isinstance(self.listener, vsock.VsockListener) else self.listener
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked in accept()

    def close(self, timeout: float = 5.0) -> None:
        """Stop accepting, end open connections and release the listening address."""
        if self._closed:
            return
        self._closed = True
        self.stop()
        with self._lock:
            for conn in self._open:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
            threads = list(self._threads)
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self.listener.close()

    def __enter__(self) -> Forwarder:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def tcp_address(self) -> tuple[str, int] | None:
        """The bound TCP address (to-enclave direction), e.g. after listening on port 0."""
        if isinstance(self.listener, socket.socket):
            host, port = self.listener.getsockname()[:2]
            return (host, port)
        return None


def to_enclave(cid: int, port: int, listen: Endpoint, *, log: TextIO | None = None) -> Forwarder:
    """Listen on TCP ``listen`` and forward each connection to VSOCK (``cid``, ``port``)."""
    vsock.check_address(cid, port)  # a typo fails now; the enclave may start later
    try:
        infos = socket.getaddrinfo(listen.host, listen.port, type=socket.SOCK_STREAM)
        family, _, _, _, address = infos[0]
        server = socket.socket(family, socket.SOCK_STREAM)
    except OSError as error:
        raise ForwardError(f"cannot listen on {listen.host}:{listen.port}: {error}") from None
    try:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(address)
        server.listen(1024)
    except OSError as error:
        server.close()
        raise ForwardError(f"cannot listen on {listen.host}:{listen.port}: {error}") from None
    bound = server.getsockname()
    return Forwarder(
        server,
        lambda: vsock.connect(cid, port, timeout=None),
        f"tcp {bound[0]}:{bound[1]} -> vsock {cid}:{port}",
        log=log,
    )


def from_enclave(vsock_port: int, target: Endpoint, *, log: TextIO | None = None) -> Forwarder:
    """Listen as the parent on VSOCK ``vsock_port``; forward to TCP ``target``."""
    try:
        listener = vsock.listen(vsock_port, backlog=1024)
    except OSError as error:
        raise ForwardError(f"cannot listen on VSOCK port {vsock_port}: {error}") from None

    def dial() -> socket.socket:
        sock = socket.create_connection((target.host, target.port), timeout=30)
        sock.settimeout(None)
        return sock

    return Forwarder(
        listener,
        dial,
        f"vsock 3:{listener.port} -> tcp {target.host}:{target.port}",
        log=log,
    )
