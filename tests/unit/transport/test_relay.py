"""The engine transport's relay, both ends in this process over a socketpair (no Docker).

``host`` plays the supervisor (its real listeners in ``host_dir``), ``far`` the companion
(the enclave's side in ``far_dir``): what each end's real sockets see is what the enclave
and the host's clients see under the engine transport.
"""

from __future__ import annotations

import errno
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from emulator.transport import relay
from emulator.transport.companion import DockerStream
from emulator.vsock.enclave import abstract_name, parse_peer


@dataclass
class Pair:
    host_dir: Path
    far_dir: Path
    host: relay.Relay
    far: relay.Relay
    threads: list[threading.Thread]


def _wait(predicate, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    host_dir, far_dir = tmp_path / "host", tmp_path / "far"
    for root in (host_dir, far_dir):
        (root / "vsock").mkdir(parents=True)
        (root / "parent").mkdir()
    a, b = socket.socketpair()

    def host_open(name: str) -> str:
        if name == "nsm.sock" or relay.port_name(name, "parent") is not None:
            return str(host_dir / name)
        raise ValueError("not for the far end")

    def host_listen(name: str) -> str:
        if relay.port_name(name, "vsock") is None:
            raise ValueError("vsock only")
        return str(host_dir / name)

    def pin(name: str, peer: str) -> str | None:
        port = peer.rpartition(":")[2]
        return f"nitro-emu-vsock:16:{port}" if peer and port.isdecimal() else None

    host = relay.Relay(a.fileno(), a.fileno(), open_path=host_open, listen_path=host_listen, parity=1,
                       peer_for=pin)
    # Both ends share this process's abstract namespace (in the engine they do not): the far
    # end binds the caller's name with the port plus one, which proves the name crossed.
    def far_peer(name: str, peer: str) -> str | None:
        head, _, port = peer.rpartition(":")
        return f"{head}:{int(port) + 1}" if port.isdecimal() else None

    far = relay.Relay(b.fileno(), b.fileno(), parity=0, peer_for=far_peer,
                      open_path=lambda name: str(far_dir / name) if name.startswith("vsock/") else _no(name),
                      listen_path=lambda name: str(far_dir / name))
    far.on_hello = lambda _info: far.send_hello()
    hello = threading.Event()
    host.on_hello = lambda _info: hello.set()
    host.watch(str(host_dir / "parent"), "parent")
    far.watch(str(far_dir / "vsock"), "vsock")
    host.announce("nsm.sock")
    host.send_hello()
    threads = [threading.Thread(target=r.run, daemon=True) for r in (host, far)]
    for thread in threads:
        thread.start()
    host.wake()
    assert hello.wait(5)
    yield Pair(host_dir, far_dir, host, far, threads)
    for r in (host, far):
        r.stop()
    for thread in threads:
        thread.join(5)
    a.close()
    b.close()


def _no(name: str) -> str:
    raise ValueError(f"refused {name}")


def _listen(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.listen(8)
    sock.settimeout(5)
    return sock


def test_an_enclave_listener_appears_on_the_host_and_carries_both_ways(pair: Pair) -> None:
    server = _listen(pair.far_dir / "vsock" / "5000")
    _wait(lambda: (pair.host_dir / "vsock" / "5000").exists())
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.bind(abstract_name(3, 4242))
    client.settimeout(5)
    client.connect(str(pair.host_dir / "vsock" / "5000"))
    conn, peer = server.accept()
    assert parse_peer(peer) == (3, 4243)  # the enclave learns who calls (see far_peer)
    client.sendall(b"ping")
    assert conn.recv(10) == b"ping"
    conn.sendall(b"pong")
    assert client.recv(10) == b"pong"
    client.shutdown(socket.SHUT_WR)  # half-close crosses the relay: EOF there, the other way still open
    assert conn.recv(10) == b""
    conn.sendall(b"after")
    assert client.recv(10) == b"after"
    conn.close()
    assert client.recv(10) == b""
    client.close()
    server.close()
    os.unlink(pair.far_dir / "vsock" / "5000")
    _wait(lambda: not (pair.host_dir / "vsock" / "5000").exists())  # withdrawn when it goes


def test_the_parent_listener_is_mirrored_and_the_enclave_cid_is_pinned(pair: Pair) -> None:
    server = _listen(pair.host_dir / "parent" / "7000")
    _wait(lambda: (pair.far_dir / "parent" / "7000").exists())
    inside = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    inside.bind(abstract_name(99, 5555))  # the enclave claims another CID
    inside.connect(str(pair.far_dir / "parent" / "7000"))
    conn, peer = server.accept()
    assert parse_peer(peer) == (16, 5555)  # the host says which CID it is
    inside.sendall(b"x" * 100)
    assert conn.recv(200) == b"x" * 100
    for sock in (inside, conn, server):
        sock.close()


def test_nsm_socket_is_relayed(pair: Pair) -> None:
    server = _listen(pair.host_dir / "nsm.sock")
    _wait(lambda: (pair.far_dir / "nsm.sock").exists())
    inside = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    inside.connect(str(pair.far_dir / "nsm.sock"))
    conn, _ = server.accept()
    inside.sendall(b"\x00\x00\x00\x01\xa0")
    assert conn.recv(10) == b"\x00\x00\x00\x01\xa0"
    for sock in (inside, conn, server):
        sock.close()


def test_a_mirror_whose_listener_is_gone_closes_the_caller(pair: Pair) -> None:
    server = _listen(pair.far_dir / "vsock" / "5001")
    _wait(lambda: (pair.host_dir / "vsock" / "5001").exists())
    server.close()  # the file stays (a killed process): connecting there is refused
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.settimeout(5)
    client.connect(str(pair.host_dir / "vsock" / "5001"))
    assert client.recv(10) == b""
    client.close()


def test_a_stalled_stream_does_not_block_another(pair: Pair) -> None:
    bulk = _listen(pair.far_dir / "vsock" / "6000")
    echo = _listen(pair.far_dir / "vsock" / "6001")
    _wait(lambda: (pair.host_dir / "vsock" / "6001").exists() and (pair.host_dir / "vsock" / "6000").exists())
    writer = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    writer.connect(str(pair.host_dir / "vsock" / "6000"))
    stalled, _ = bulk.accept()  # never reads
    writer.setblocking(False)
    sent = 0
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        try:
            sent += writer.send(b"z" * 65536)
        except BlockingIOError:
            time.sleep(0.05)
    # the window holds the rest back at the sender: bounded, not everything buffered
    assert relay.WINDOW <= sent < relay.WINDOW + 8 * (1 << 20)
    other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    other.settimeout(5)
    other.connect(str(pair.host_dir / "vsock" / "6001"))
    conn, _ = echo.accept()
    other.sendall(b"still here")
    assert conn.recv(20) == b"still here"
    total = 0
    stalled.settimeout(5)
    while total < sent:  # and the stalled one drains completely once read
        chunk = stalled.recv(1 << 20)
        assert chunk
        total += len(chunk)
    assert total == sent
    for sock in (writer, stalled, other, conn, bulk, echo):
        sock.close()


def test_large_transfer_arrives_intact(pair: Pair) -> None:
    server = _listen(pair.far_dir / "vsock" / "6100")
    _wait(lambda: (pair.host_dir / "vsock" / "6100").exists())
    payload = os.urandom(8 << 20)
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(str(pair.host_dir / "vsock" / "6100"))
    conn, _ = server.accept()
    sender = threading.Thread(target=lambda: (client.sendall(payload), client.shutdown(socket.SHUT_WR)))
    sender.start()
    received = bytearray()
    conn.settimeout(10)
    while chunk := conn.recv(1 << 20):
        received += chunk
    sender.join()
    assert bytes(received) == payload
    for sock in (client, conn, server):
        sock.close()


def test_names_outside_the_rules_are_refused(pair: Pair) -> None:
    # the far end may not ask the host to open anything but the NSM and the parent's ports
    with pytest.raises(ValueError):
        pair.host.open_path("../../etc/passwd")
    assert relay.port_name("vsock/4294967296", "vsock") is None
    assert relay.port_name("vsock/12", "vsock") == 12
    assert relay.port_name("parent/12", "vsock") is None


def test_relay_refuses_an_unknown_name_with_econnrefused(tmp_path: Path) -> None:
    a, b = socket.socketpair()
    end = relay.Relay(a.fileno(), a.fileno(), open_path=_no, listen_path=_no, parity=1, log=lambda line: None)
    end.inbuf += relay.FRAME.pack(relay.OPEN, 2, 23) + b'{"name": "etc/shadow"} '
    end._parse()  # noqa: SLF001 - one frame in, one frame out
    kind, channel, length = relay.FRAME.unpack_from(end.out)
    assert (kind, channel) == (relay.REFUSED, 2)
    assert int.from_bytes(end.out[relay.FRAME.size:relay.FRAME.size + length], "big") == errno.ECONNREFUSED
    end.close()
    a.close()
    b.close()


def test_oversized_frames_are_a_protocol_error() -> None:
    a, b = socket.socketpair()
    end = relay.Relay(a.fileno(), a.fileno(), open_path=_no, listen_path=_no, parity=1)
    end.inbuf += relay.FRAME.pack(relay.DATA, 3, 1 << 30)
    with pytest.raises(relay.RelayError, match="limit"):
        end._parse()  # noqa: SLF001
    end.close()
    a.close()
    b.close()


def test_docker_stream_framing_is_taken_off_across_chunk_boundaries() -> None:
    errors: list[bytes] = []
    demux = DockerStream(errors.append)
    raw = b"\x01\0\0\0\0\0\0\x05hello" + b"\x02\0\0\0\0\0\0\x03err" + b"\x01\0\0\0\0\0\0\x02ok"
    out = b"".join(demux(raw[i:i + 3]) for i in range(0, len(raw), 3))
    assert out == b"hellook"
    assert b"".join(errors) == b"err"
