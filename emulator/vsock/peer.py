"""Small VSOCK programs to run inside an enclave: check connectivity, test, benchmark.

Standard library only (plus ``vsock_enclave`` beside it). Each server prints ``ready <port>``
on stdout once it listens, then serves until killed::

    python3 -m emulator.vsock.peer echo 5000      # echo every byte back, keep half-close
    python3 -m emulator.vsock.peer digest 5001    # read to EOF, reply "<sha256> <count>"
    python3 -m emulator.vsock.peer discard 5004   # read to EOF, reply "<count>"
    python3 -m emulator.vsock.peer source 5002    # read an 8-byte count, send that many bytes
    python3 -m emulator.vsock.peer whoami 5003    # reply "<peer cid> <peer port> <cid> <port>"
    python3 -m emulator.vsock.peer http 8080      # HTTP/1.1 server answering GET with a body
    python3 -m emulator.vsock.peer echo-parent 7000 [N]  # connect to (3, 7000), echo N conns
    python3 -m emulator.vsock.peer echo:5000 http:8080   # several at once
"""

from __future__ import annotations

import hashlib
import http.server
import signal
import socket
import socketserver
import struct
import sys
import threading
import time
from typing import Any, Callable, Dict, Iterator, List, Tuple

try:  # inside the package, or copied flat beside vsock_enclave.py in an image
    from emulator.vsock import enclave as vsock_enclave
except ImportError:  # pragma: no cover - the flat layout
    import vsock_enclave  # type: ignore[no-redef, import-not-found]  # not on mypy's path

CHUNK = 256 * 1024
PATTERN = bytes(range(256)) * (CHUNK // 256)


def pattern_bytes(count: int) -> bytes:
    """The first ``count`` bytes of the stream ``source`` sends (for checking)."""
    return (PATTERN * (count // len(PATTERN) + 1))[:count]


def _received(conn: socket.socket) -> Iterator[memoryview]:
    """Each chunk ``conn`` receives until EOF: a view into one buffer, valid until the next."""
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    while True:
        n = conn.recv_into(buf)
        if not n:
            return
        yield view[:n]


def _echo(conn: socket.socket) -> None:
    for chunk in _received(conn):
        conn.sendall(chunk)
    conn.shutdown(socket.SHUT_WR)  # keep the half-close: the peer sees EOF after its data


def _digest(conn: socket.socket) -> None:
    digest = hashlib.sha256()
    count = 0
    for chunk in _received(conn):
        digest.update(chunk)
        count += len(chunk)
    conn.sendall(f"{digest.hexdigest()} {count}\n".encode())


def _discard(conn: socket.socket) -> None:
    count = 0
    for chunk in _received(conn):
        count += len(chunk)
    conn.sendall(f"{count}\n".encode())


def _recv_exact(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise ConnectionError("peer closed early")
        data += chunk
    return data


def _source(conn: socket.socket) -> None:
    (remaining,) = struct.unpack(">Q", _recv_exact(conn, 8))
    view = memoryview(PATTERN)
    while remaining:
        step = min(remaining, len(PATTERN))
        conn.sendall(view[:step])
        remaining -= step
    conn.shutdown(socket.SHUT_WR)


def _whoami(conn: socket.socket, peer: Tuple[int, int], listener: Any) -> None:
    conn.sendall(f"{peer[0]} {peer[1]} {listener.cid} {listener.port}\n".encode())


def _handle(handler: Callable[..., None], conn: socket.socket, *args: Any) -> None:
    try:
        handler(conn, *args)
    except OSError:
        pass  # the peer went away: this connection only
    finally:
        conn.close()


def _accept_loop(kind: str, listener: Any) -> None:
    while True:
        try:
            conn, peer = listener.accept()
        except OSError:
            return  # the listener was closed
        args: Tuple[Any, ...] = (peer, listener) if kind == "whoami" else ()
        thread = threading.Thread(target=_handle, args=(HANDLERS[kind], conn, *args), daemon=True)
        thread.start()


def start(kind: str, port: int, connections: int = 1) -> Callable[[], None]:
    """Start serving ``kind`` on ``port`` in a background thread; return its closer."""
    if kind == "echo-parent":
        thread = threading.Thread(target=echo_parent, args=(port, connections), daemon=True)
        thread.start()
        return lambda: None
    if kind == "http":
        server = VsockHTTPServer(port)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server.server_close
    listener = vsock_enclave.listen(port, backlog=1024)
    threading.Thread(target=_accept_loop, args=(kind, listener), daemon=True).start()
    return listener.close


class _Hello(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        body = f"hello from vsock {self.path} peer={self.client_address[0]}\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
        pass


class VsockHTTPServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    """``http.server`` on a VSOCK listener instead of TCP."""

    daemon_threads = True

    def __init__(self, port: int, handler: Any = _Hello) -> None:
        super().__init__(("", 0), handler, bind_and_activate=False)
        self.listener = vsock_enclave.listen(port, backlog=1024)
        self.socket = self.listener.socket

    def get_request(self) -> Tuple[socket.socket, Any]:
        return self.listener.accept()

    def server_close(self) -> None:
        self.listener.close()


def echo_parent(port: int, connections: int) -> None:
    """Connect to the parent's ``port`` ``connections`` times in turn and echo each stream."""
    for _ in range(connections):
        for _attempt in range(600):  # the parent may start listening after we start
            try:
                conn = vsock_enclave.connect_parent(port)
                break
            except ConnectionRefusedError:
                time.sleep(0.1)
        else:
            return
        _handle(_echo, conn)


HANDLERS: Dict[str, Callable[..., None]] = {
    "echo": _echo,
    "digest": _digest,
    "discard": _discard,
    "source": _source,
    "whoami": _whoami,
}


def main(argv: List[str]) -> int:
    """``KIND PORT [N]``, or several ``KIND:PORT[:N]`` specs served at once."""
    specs = [argv] if len(argv) >= 2 and ":" not in argv[0] else [a.split(":") for a in argv]
    kinds = (*HANDLERS, "http", "echo-parent")
    if not specs or any(len(s) < 2 or s[0] not in kinds or not s[1].isdecimal() for s in specs):
        print(__doc__, file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # close listeners: no stale files
    closers = []
    try:
        for spec in specs:
            closers.append(start(spec[0], int(spec[1]), int(spec[2]) if len(spec) > 2 else 1))
        print("ready", *(spec[1] for spec in specs), flush=True)
        while True:
            signal.pause()
    finally:
        for close in closers:
            close()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        sys.exit(130)
