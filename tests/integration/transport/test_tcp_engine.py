"""The engine transport over ``DOCKER_HOST=tcp://127.0.0.1:<port>``, as a remote engine is reached.

The engine's API is served on a TCP port here by a byte-for-byte forwarder to its Unix socket
(the Docker SDK then speaks plain HTTP over TCP, attach streams included, as it does to a
remote ``dockerd -H tcp://``). An enclave runs on the engine transport through it: VSOCK both
ways, the enclave's CID as the parent sees it, and nothing left behind.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from emulator import vsock

pytestmark = [pytest.mark.docker, pytest.mark.timeout(300)]

PROGRAM = ["echo:5000", "whoami:5003", "echo-parent:7000:1"]


def _splice(source: socket.socket, sink: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while chunk := source.recv(1 << 16):
            sink.sendall(chunk)
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)


@pytest.fixture
def tcp_engine() -> Iterator[str]:
    """``tcp://127.0.0.1:<port>`` in front of the local engine's Unix socket."""
    path = "/var/run/docker.sock"
    if not os.path.exists(path):
        pytest.skip(f"the engine is not at {path}")
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    stop = threading.Event()
    pairs: list[tuple[socket.socket, socket.socket]] = []

    def serve() -> None:
        while not stop.is_set():
            try:
                client, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            engine = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            engine.connect(path)
            pairs.append((client, engine))
            for a, b in ((client, engine), (engine, client)):
                threading.Thread(target=_splice, args=(a, b), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"tcp://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join(5)
    server.close()
    for a, b in pairs:
        a.close()
        b.close()


def test_an_enclave_on_the_engine_transport_over_tcp(  # type: ignore[no-untyped-def]
    tcp_engine: str, docker_client, base_image, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from emulator.enclave.runtime import run_enclave, terminate_enclave
    from emulator.vsock.peer_image import peer_eif

    eif = peer_eif(docker_client, PROGRAM, tmp_path / "peer.eif")
    home = tmp_path / "home"
    monkeypatch.setenv("NITRO_EMU_HOME", str(home))
    monkeypatch.setenv("DOCKER_HOST", tcp_engine)
    monkeypatch.setenv("NITRO_EMU_TRANSPORT", "engine")
    with vsock.listen(7000) as listener:
        info = run_enclave(eif, memory_mib=1024, cpu_count=1)
        try:
            assert info.extra["transport"] == "engine"
            listener.settimeout(30)
            conn, (cid, port) = listener.accept()  # the enclave dials the parent through the relay
            with conn:
                assert cid == info.cid and port >= 1024
                conn.sendall(b"over tcp and back")
                conn.shutdown(socket.SHUT_WR)
                assert conn.recv(100) == b"over tcp and back"
            path = Path(vsock.listener_path(info.cid, 5003))
            for _ in range(300):
                if path.exists():
                    break
                threading.Event().wait(0.05)
            with vsock.connect(info.cid, 5003, timeout=30) as sock:
                peer_cid, _, own_cid, own_port = map(int, sock.recv(100).split())
            assert (peer_cid, own_cid, own_port) == (3, info.cid, 5003)
            with vsock.connect(info.cid, 5000, timeout=30) as sock:
                payload = os.urandom(1 << 20)
                sock.sendall(payload)
                sock.shutdown(socket.SHUT_WR)
                received = bytearray()
                while chunk := sock.recv(1 << 16):
                    received += chunk
                assert bytes(received) == payload
        finally:
            terminate_enclave(info.enclave_id)
    label = {"label": f"org.nitro-emu.home={home}"}
    assert docker_client.api.containers(all=True, filters=label) == []
    assert not (docker_client.api.volumes(filters=label) or {}).get("Volumes")
