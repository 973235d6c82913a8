"""The VSOCK mirror with real enclaves (Docker): echo both ways, kill, isolation, forwarder.

One EIF is built per session from the base image plus ``vsock_enclave.py`` and
``vsock_peer.py`` (flat in ``/app``); its program serves echo (5000), source (5002),
whoami (5003) and HTTP (8080), and echoes one connection it makes to the parent's port 7000.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from emulator import vsock
from emulator.vsock import forward as vsock_forward
from emulator.vsock.forward import Endpoint

pytestmark = [pytest.mark.docker, pytest.mark.timeout(300)]

PROGRAM = ["echo:5000", "source:5002", "whoami:5003", "http:8080", "echo-parent:7000:1"]


@pytest.fixture(scope="module")
def peer_eif(docker_client, base_image, tmp_path_factory: pytest.TempPathFactory) -> Path:  # type: ignore[no-untyped-def]
    from emulator.vsock.peer_image import peer_eif

    return peer_eif(docker_client, PROGRAM, tmp_path_factory.mktemp("eif") / "vsock-peer.eif")


@pytest.fixture(scope="module")
def vsock_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One NITRO_EMU_HOME for this module: run-enclave's EIF cache is warm after the first."""
    home = tmp_path_factory.mktemp("vhome")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NITRO_EMU_HOME", str(home))
        yield home


@pytest.fixture
def start_enclave(peer_eif: Path, vsock_home: Path) -> Iterator:  # type: ignore[type-arg]
    from emulator.enclave.runtime import run_enclave, terminate_enclave

    started = []

    def start():  # type: ignore[no-untyped-def]
        info = run_enclave(peer_eif, memory_mib=1024, cpu_count=1)
        started.append(info)
        _wait_listening(info.cid, 8080)
        return info

    yield start
    for info in started:
        try:
            terminate_enclave(info.enclave_id)
        except Exception:  # noqa: BLE001 - already gone (killed by the test)
            pass
    leftovers = list((vsock_home / "run" / "parent").glob("*"))
    for info in started:  # the enclave's runtime dir, its VSOCK sockets included, is gone
        leftovers += [info.cid] if (vsock_home / "run" / str(info.cid)).exists() else []
    assert not leftovers, f"left behind: {leftovers}"


def _wait_listening(cid: int, port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.exists(vsock.listener_path(cid, port)):
        assert time.monotonic() < deadline, f"enclave {cid} never listened on {port}"
        time.sleep(0.05)


def _recv_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


def _send_and_close(sock: socket.socket, data: bytes) -> None:
    sock.sendall(data)
    sock.shutdown(socket.SHUT_WR)


def _container(docker_client, info):  # type: ignore[no-untyped-def]
    (container,) = docker_client.containers.list(
        filters={"label": f"org.nitro-emu.enclave-id={info.enclave_id}"}
    )
    return container


def test_echo_both_directions(start_enclave) -> None:  # type: ignore[no-untyped-def]
    with vsock.listen(7000) as listener:  # the enclave program dials (3, 7000) once
        info = start_enclave()
        data = os.urandom(5_000_000)
        with vsock.connect(info.cid, 5000, timeout=30) as sock:
            sender = threading.Thread(target=_send_and_close, args=(sock, data))
            sender.start()  # send while reading: the echo pushes back on an unread stream
            assert _recv_all(sock) == data
            sender.join()
        listener.settimeout(30)
        conn, (cid, port) = listener.accept()
        with conn:
            assert cid == info.cid and port >= 1024
            conn.settimeout(30)
            conn.sendall(b"parent to enclave and back")
            conn.shutdown(socket.SHUT_WR)
            assert _recv_all(conn) == b"parent to enclave and back"
    with vsock.connect(info.cid, 5003, timeout=30) as sock:
        peer_cid, _, own_cid, own_port = map(int, _recv_all(sock).split())
        assert (peer_cid, own_cid, own_port) == (3, info.cid, 5003)


def test_enclave_killed_mid_stream_gives_eof_or_reset_and_leaves_no_socket(
    start_enclave, docker_client, vsock_home: Path,  # type: ignore[no-untyped-def]
) -> None:
    info = start_enclave()
    run_dir = vsock_home / "run" / str(info.cid)
    with vsock.connect(info.cid, 5002, timeout=30) as sock:
        sock.sendall(struct.pack(">Q", 1 << 40))  # an endless stream
        assert len(sock.recv(1 << 16)) > 0
        _container(docker_client, info).kill()
        with _eof_or_reset():
            while sock.recv(1 << 20):
                pass
    deadline = time.monotonic() + 30
    while run_dir.exists():  # the supervisor notices and removes the runtime dir
        assert time.monotonic() < deadline, f"left behind: {sorted(os.listdir(run_dir))}"
        time.sleep(0.1)
    with pytest.raises(vsock.UnknownCidError):
        vsock.connect(info.cid, 5000)


class _eof_or_reset:  # noqa: N801 - reads like pytest.raises
    """Accept either a clean EOF (the block ends) or ConnectionResetError; a timeout fails."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, value, tb) -> bool:  # type: ignore[no-untyped-def]
        return kind is None or issubclass(kind, ConnectionResetError)


def test_two_enclaves_are_isolated(start_enclave, docker_client) -> None:  # type: ignore[no-untyped-def]
    first, second = start_enclave(), start_enclave()
    assert first.cid != second.cid
    for info in (first, second):
        with vsock.connect(info.cid, 5003, timeout=30) as sock:
            assert _recv_all(sock).split()[2:] == [str(info.cid).encode(), b"5003"]
    code = (
        "import errno, os, sys\nsys.path.insert(0, '/app')\nimport vsock_enclave as v\n"
        f"try:\n    v.connect({second.cid}, 5003)\n"
        "except OSError as e:\n    print(errno.errorcode[e.errno])\n"
        "print(sorted(os.listdir('/run/nitro-emu/vsock')))\n"
    )
    result = _container(docker_client, first).exec_run(["python3", "-c", code])
    lines = result.output.decode().split("\n")
    assert result.exit_code == 0 and lines[0] == "ENODEV", result.output
    assert lines[1] == str(sorted(["5000", "5002", "5003", "8080"]))  # only its own ports


def test_forwarder_under_hundred_concurrent_http_clients(start_enclave) -> None:  # type: ignore[no-untyped-def]
    info = start_enclave()
    with vsock_forward.to_enclave(info.cid, 8080, Endpoint("127.0.0.1", 0)) as forwarder:
        threading.Thread(target=forwarder.serve_forever, daemon=True).start()
        host, port = forwarder.tcp_address or ("", 0)

        def get(index: int) -> str:
            url = f"http://{host}:{port}/n/{index}"
            with urllib.request.urlopen(url, timeout=60) as reply:
                return reply.read().decode()

        with ThreadPoolExecutor(max_workers=100) as pool:
            bodies = list(pool.map(get, range(100)))
    assert bodies == [f"hello from vsock /n/{i} peer=3\n" for i in range(100)]
