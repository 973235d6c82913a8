"""The TCP <-> VSOCK forwarder, without Docker (a process plays the enclave, see vsock_helpers)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO

import pytest
from tests.unit.vsock.vsock_helpers import ROOT, FakeEnclave, make_enclave, recv_all  # noqa: F401 - a fixture

from emulator import vsock
from emulator.vsock import forward as vsock_forward
from emulator.vsock.forward import Endpoint, ForwardError

LOCAL = Endpoint("127.0.0.1", 0)


def serve_in_thread(forwarder: vsock_forward.Forwarder) -> threading.Thread:
    thread = threading.Thread(target=forwarder.serve_forever, daemon=True)
    thread.start()
    return thread


@pytest.fixture
def tcp_echo_server() -> Iterator[tuple[str, int]]:
    """A host TCP echo service (keeps half-close) on a free port."""
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def echo(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)
            conn.shutdown(socket.SHUT_WR)

    def loop() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=echo, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    yield server.getsockname()[:2]
    stop.set()
    server.shutdown(socket.SHUT_RDWR)
    server.close()
    thread.join(5)


def test_hundred_concurrent_http_clients_reach_the_enclave(
    make_enclave: Callable[[int], FakeEnclave],
) -> None:
    make_enclave(16).spawn("http", "8080")
    with vsock_forward.to_enclave(16, 8080, LOCAL) as forwarder:
        serve_in_thread(forwarder)
        host, port = forwarder.tcp_address or ("", 0)

        def get(index: int) -> str:
            with urllib.request.urlopen(f"http://{host}:{port}/item/{index}", timeout=30) as reply:
                assert reply.status == 200
                return reply.read().decode()

        with ThreadPoolExecutor(max_workers=100) as pool:
            bodies = list(pool.map(get, range(100)))
        assert bodies == [f"hello from vsock /item/{i} peer=3\n" for i in range(100)]
        assert forwarder.connections == 100


def test_to_enclave_keeps_half_close_and_survives_a_missing_target(
    make_enclave: Callable[[int], FakeEnclave],
) -> None:
    enclave = make_enclave(16)
    with vsock_forward.to_enclave(16, 5000, LOCAL) as forwarder:
        serve_in_thread(forwarder)
        address = forwarder.tcp_address
        assert address is not None
        with socket.create_connection(address, timeout=10) as client:  # nobody on 16:5000 yet
            assert client.recv(10) == b""  # closed cleanly, this connection only
        enclave.spawn("echo", "5000")
        data = os.urandom(2_000_000)
        with socket.create_connection(address, timeout=20) as client:
            client.sendall(data)
            client.shutdown(socket.SHUT_WR)
            assert recv_all(client) == data


def test_from_enclave_reaches_a_host_tcp_service(
    make_enclave: Callable[[int], FakeEnclave], tcp_echo_server: tuple[str, int],
) -> None:
    enclave = make_enclave(16)
    target = Endpoint(*tcp_echo_server)
    with vsock_forward.from_enclave(8000, target) as forwarder:
        serve_in_thread(forwarder)
        out = enclave.run_code(
            "import socket\nfrom emulator.vsock import enclave as v\n"
            "s = v.connect_parent(8000, timeout=20)\ns.sendall(b'x' * 100000)\n"
            "s.shutdown(socket.SHUT_WR)\ngot = b''\n"
            "while c := s.recv(65536):\n    got += c\nprint(len(got), got == b'x' * 100000)\n"
        )
        assert out.split() == ["100000", "True"]
        parent_socket = enclave.run_dir / "parent" / "8000"
        assert parent_socket.exists()
    assert not parent_socket.exists()


def test_bad_addresses_are_clear_errors(nitro_home: Path) -> None:
    for text in ("16", "a:1", "16:x"):
        with pytest.raises(ForwardError, match="CID:PORT"):
            Endpoint.parse_vsock(text)
    for text in ("localhost", "h:70000", "h:"):
        with pytest.raises(ForwardError, match="HOST:PORT"):
            Endpoint.parse_tcp(text)
    with pytest.raises(ValueError, match="VSOCK port"):
        vsock_forward.to_enclave(16, 2**32, LOCAL)
    with pytest.raises(ValueError, match="VSOCK port"):
        vsock_forward.from_enclave(-1, LOCAL)


@contextlib.contextmanager
def _cli_forwarder(*args: str) -> Iterator[tuple[subprocess.Popen[str], IO[str]]]:
    """``nitro-emu vsock-forward ARGS`` in its own process: (process, its stderr).

    On the way out it is killed if still running, and its stderr pipe is closed.
    """
    proc = subprocess.Popen(
        [sys.executable, "-m", "emulator.cli", "vsock-forward", *args],
        env={**os.environ, "PYTHONPATH": str(ROOT)}, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stderr is not None
        yield proc, proc.stderr
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()


def test_cli_forwarder_stops_cleanly_on_sigterm(
    make_enclave: Callable[[int], FakeEnclave], nitro_home: Path,
) -> None:
    make_enclave(16).spawn("echo", "5000")
    with _cli_forwarder("--to-enclave", "16:5000", "--listen", "127.0.0.1:0") as (proc, stderr):
        line = stderr.readline()  # "forwarding tcp 127.0.0.1:<port> -> vsock 16:5000"
        port = int(line.split("tcp 127.0.0.1:")[1].split()[0])
        with socket.create_connection(("127.0.0.1", port), timeout=20) as client:
            client.sendall(b"before the signal")
            assert client.recv(100) == b"before the signal"
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=10) == 0
            assert client.recv(100) == b""  # the open connection was ended, not left hanging
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()


def test_cli_reverse_forwarder_stops_on_sigint_and_removes_its_socket(
    nitro_home: Path, tcp_echo_server: tuple[str, int],
) -> None:
    host, port = tcp_echo_server
    with _cli_forwarder("--from-enclave-port", "8001", "--to", f"{host}:{port}") as (proc, stderr):
        assert "vsock 3:8001 -> tcp" in stderr.readline()
        with vsock.connect(3, 8001, timeout=20) as client:  # the parent's own port (loopback)
            client.sendall(b"via the parent port")
            assert client.recv(100) == b"via the parent port"
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=10) == 0
            assert client.recv(100) == b""
        assert not (nitro_home / "run" / "parent" / "8001").exists()


@pytest.mark.parametrize("splice", [True, False])
def test_relay_moves_both_ways_and_keeps_half_close(splice: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if not splice:
        monkeypatch.delattr(os, "splice", raising=False)  # the copying fallback
    left, relay_left = socket.socketpair()
    relay_right, right = socket.socketpair()
    counts: list[tuple[int, int]] = []
    thread = threading.Thread(target=lambda: counts.append(vsock_forward.relay(relay_left, relay_right)))
    thread.start()
    data = os.urandom(3_000_000)
    with left, right, relay_left, relay_right:
        sender = threading.Thread(target=lambda: (left.sendall(data), left.shutdown(socket.SHUT_WR)))
        sender.start()
        assert recv_all(right) == data  # EOF arrived after the data: left's half-close crossed
        right.sendall(b"reply after the half-close")
        right.shutdown(socket.SHUT_WR)
        assert recv_all(left) == b"reply after the half-close"
        sender.join()
        thread.join(10)
    assert counts == [(len(data), 26)]
