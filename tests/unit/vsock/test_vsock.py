"""The VSOCK mirror without Docker: a second process plays the enclave over the run-dir layout.

The "enclave" is ``python -m emulator.vsock.peer`` with ``NITRO_EMU_CID`` and
``NITRO_EMU_VSOCK_ROOT=<home>/run/<cid>``; ``run/<cid>/parent`` is a symlink standing in for
the read-only bind mount of ``run/parent`` (docs/architecture.md "VSOCK mirror").
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import socket
import struct
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from tests.unit.vsock.vsock_helpers import FakeEnclave, make_enclave, recv_all  # noqa: F401 - a fixture

from emulator import vsock
from emulator.vsock import enclave as vsock_enclave
from emulator.vsock.peer import pattern_bytes


def test_host_to_enclave_echo_keeps_half_close(make_enclave: Callable[[int], FakeEnclave]) -> None:
    make_enclave(16).spawn("echo", "5000")
    data = os.urandom(300_000)
    with vsock.connect(16, 5000, timeout=20) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)  # we are done writing; the reply still flows back
        assert recv_all(sock) == data


def test_enclave_to_parent_echo_and_peer_is_enclave_cid(
    make_enclave: Callable[[int], FakeEnclave],
) -> None:
    with vsock.listen(7000) as listener:
        make_enclave(16).spawn("echo-parent", "7000")
        listener.settimeout(20)
        conn, (cid, port) = listener.accept()
        with conn:
            assert cid == 16 and 1024 <= port <= 0x7FFFFFFF
            assert vsock.peer_address(conn) == (16, port)
            conn.settimeout(20)
            conn.sendall(b"from the parent")
            conn.shutdown(socket.SHUT_WR)
            assert recv_all(conn) == b"from the parent"
    assert not os.path.exists(listener.path)  # closing removes the socket file


def test_addresses_are_reported_as_cid_port(make_enclave: Callable[[int], FakeEnclave]) -> None:
    make_enclave(16).spawn("whoami", "5003")
    with vsock.connect(16, 5003, timeout=20) as sock:
        seen_cid, seen_port, own_cid, own_port = map(int, recv_all(sock).split())
        assert (seen_cid, seen_port) == vsock_enclave.local_address(sock)
        assert seen_cid == vsock.PARENT_CID
        assert (own_cid, own_port) == (16, 5003)
        assert vsock.peer_address(sock) == (16, 5003)


def test_nobody_listening_is_econnrefused(make_enclave: Callable[[int], FakeEnclave]) -> None:
    enclave = make_enclave(16)
    with pytest.raises(ConnectionRefusedError) as caught:
        vsock.connect(16, 5999)
    assert caught.value.errno == errno.ECONNREFUSED and "16:5999" in str(caught.value)
    stale = enclave.run_dir / "vsock"
    stale.mkdir()
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(str(stale / "6000"))
    dead.close()  # a socket file whose listener is gone
    with pytest.raises(ConnectionRefusedError):
        vsock.connect(16, 6000)
    os.unlink(stale / "6000")


@pytest.mark.parametrize("cid", [17, 0, 2, 4])
def test_unknown_cid_is_enodev_and_says_how_to_list(nitro_home: Path, cid: int) -> None:
    with pytest.raises(vsock.UnknownCidError) as caught:
        vsock.connect(cid, 5000)
    assert isinstance(caught.value, OSError) and caught.value.errno == errno.ENODEV
    assert f"CID {cid}" in str(caught.value) and "describe-enclaves" in str(caught.value)


@pytest.mark.parametrize(
    ("cid", "port"),
    [(16, -1), (16, 2**32), (16, vsock.VMADDR_PORT_ANY), (16, True), (16, "80"),
     (-1, 80), (2**32, 80), (vsock.VMADDR_CID_ANY, 80), (16.0, 80)],
)
def test_bad_address_is_a_clear_value_error(nitro_home: Path, cid: object, port: object) -> None:
    with pytest.raises(ValueError, match="VSOCK (port|CID)"):
        vsock.connect(cid, port)  # type: ignore[arg-type]


def test_listen_port_range_and_any(nitro_home: Path) -> None:
    with pytest.raises(vsock.InvalidAddressError):
        vsock.listen(2**32)
    with vsock.listen(vsock.VMADDR_PORT_ANY) as listener:
        assert 1024 <= listener.port <= 0x7FFFFFFF
        assert listener.address == (3, listener.port)


def test_listener_dying_mid_stream_gives_eof_or_reset(
    make_enclave: Callable[[int], FakeEnclave],
) -> None:
    enclave = make_enclave(16)
    proc = enclave.spawn("echo", "5000")
    with vsock.connect(16, 5000, timeout=20) as sock:
        sock.sendall(b"x" * 1000)
        assert len(sock.recv(1000)) > 0
        proc.kill()  # SIGKILL: no cleanup in the enclave
        proc.wait()
        with pytest.raises((ConnectionResetError, BrokenPipeError)):
            while sock.recv(1 << 16):
                pass
            sock.sendall(b"y" * 1_000_000)  # EOF seen; writing to the dead peer fails too
    # the dead listener left its file: it refuses, and the next listener replaces it
    with pytest.raises(ConnectionRefusedError):
        vsock.connect(16, 5000)
    enclave.spawn("echo", "5000")
    with vsock.connect(16, 5000, timeout=20) as sock:
        sock.sendall(b"again")
        sock.shutdown(socket.SHUT_WR)
        assert recv_all(sock) == b"again"


def test_client_that_never_reads_gets_backpressure_others_unaffected(
    make_enclave: Callable[[int], FakeEnclave],
) -> None:
    make_enclave(16).spawn("echo", "5000")
    with vsock.connect(16, 5000) as stuck:
        stuck.setblocking(False)
        buffered = 0
        chunk = b"z" * 65536
        try:
            while buffered < 512 * 1024 * 1024:
                buffered += stuck.send(chunk)
        except BlockingIOError:
            pass  # the stream pushed back: the echo server blocks on a reader that never reads
        assert buffered < 64 * 1024 * 1024, "bytes were buffered without limit"
        with vsock.connect(16, 5000, timeout=20) as other:  # the same server still serves others
            other.sendall(b"still here")
            other.shutdown(socket.SHUT_WR)
            assert recv_all(other) == b"still here"


def test_thousand_concurrent_connections_to_one_enclave(
    make_enclave: Callable[[int], FakeEnclave],
) -> None:
    make_enclave(16).spawn("echo", "5000")
    socks = [vsock.connect(16, 5000, timeout=30) for _ in range(1000)]
    try:
        for index, sock in enumerate(socks):
            sock.sendall(b"%d;" % index)
        for index, sock in enumerate(socks):
            expected = b"%d;" % index
            got = b""
            while len(got) < len(expected):
                got += sock.recv(64)
            assert got == expected
    finally:
        for sock in socks:
            sock.close()


def test_stale_socket_replaced_live_one_refused(nitro_home: Path) -> None:
    with vsock.listen(7001) as first:
        with pytest.raises(OSError) as caught:
            vsock.listen(7001)
        assert caught.value.errno == errno.EADDRINUSE
        with vsock.connect(3, 7001, timeout=5) as client:  # the liveness probe is not seen
            conn, peer = first.accept()
            conn.close()
            assert peer == vsock_enclave.local_address(client)
        path = first.path
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(path)
    dead.close()  # what a killed process leaves
    with vsock.listen(7001) as second:
        with vsock.connect(3, 7001, timeout=5) as client:
            conn, peer = second.accept()
            conn.close()
            assert peer[0] == 3
    assert not os.path.exists(path)


def test_two_cids_are_isolated(make_enclave: Callable[[int], FakeEnclave]) -> None:
    sixteen, seventeen = make_enclave(16), make_enclave(17)
    sixteen.spawn("whoami", "5000")
    seventeen.spawn("echo", "6000")
    with vsock.connect(16, 5000, timeout=20) as sock:
        assert recv_all(sock).split()[2:] == [b"16", b"5000"]
    with pytest.raises(ConnectionRefusedError):  # 17's port is not 16's
        vsock.connect(16, 6000)
    code = (
        "import errno\nfrom emulator.vsock import enclave as v\n"
        "for cid, port in ((17, 6000), (16, 6000)):\n"
        "    try:\n        v.connect(cid, port).close(); print('connected')\n"
        "    except OSError as e:\n        print(errno.errorcode[e.errno])\n"
    )
    # from inside 16: the other enclave is unreachable; its own port 6000 has no listener
    assert sixteen.run_code(code).split() == ["ENODEV", "ECONNREFUSED"]


@pytest.mark.slow
def test_one_gib_with_checksum(make_enclave: Callable[[int], FakeEnclave]) -> None:
    make_enclave(16).spawn("digest", "5001")
    total = 1 << 30
    block = os.urandom(1 << 20)
    digest = hashlib.sha256()
    with vsock.connect(16, 5001, timeout=60) as sock:
        for index in range(total // len(block)):
            piece = block[index % 7 :] + block[: index % 7]  # not the same block each time
            digest.update(piece)
            sock.sendall(piece)
        sock.shutdown(socket.SHUT_WR)
        assert recv_all(sock).decode().split() == [digest.hexdigest(), str(total)]


def test_enclave_to_enclave_source_stream(make_enclave: Callable[[int], FakeEnclave]) -> None:
    make_enclave(16).spawn("source", "5002")
    with vsock.connect(16, 5002, timeout=20) as sock:
        sock.sendall(struct.pack(">Q", 3_000_000))
        assert recv_all(sock) == pattern_bytes(3_000_000)


def test_asyncio_both_directions(make_enclave: Callable[[int], FakeEnclave]) -> None:
    enclave = make_enclave(16)
    enclave.spawn("echo", "5000")

    async def scenario() -> None:
        reader, writer = await vsock.open_connection(16, 5000)
        writer.write(b"async hello")
        writer.write_eof()
        assert await reader.read() == b"async hello"
        writer.close()
        await writer.wait_closed()

        got: asyncio.Future[tuple[bytes, tuple[int, int]]] = asyncio.get_running_loop().create_future()

        async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            w.write(b"parent says hi")
            w.write_eof()
            got.set_result((await r.read(), vsock.peer_address(w)))
            w.close()

        async with await vsock.start_server(handle, 7002) as server:
            assert os.path.exists(enclave.run_dir / "parent" / "7002")
            with pytest.raises(OSError, match="already listened on"):
                vsock.listen(7002)  # its liveness probe must not reach handle()
            threading.Thread(target=enclave.spawn, args=("echo-parent", "7002"), daemon=True).start()
            data, peer = await asyncio.wait_for(got, 20)
            assert data == b"parent says hi" and peer[0] == 16
            assert server.address == (3, 7002)
        assert not os.path.exists(enclave.run_dir / "parent" / "7002")
        with pytest.raises(ConnectionRefusedError):
            await vsock.open_connection(16, 5999)

    asyncio.run(scenario())


def test_long_state_dir_uses_proc_fd_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / ("h" * 60) / ("o" * 60)
    monkeypatch.setenv("NITRO_EMU_HOME", str(home))
    with vsock.listen(7003) as listener:
        assert len(os.fsencode(listener.path)) > 107
        with vsock.connect(3, 7003, timeout=5) as client:
            conn, peer = listener.accept()
            with conn:
                client.sendall(b"long")
                assert conn.recv(4) == b"long" and peer[0] == 3
    assert not os.path.exists(listener.path)


def test_enclave_side_needs_its_cid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NITRO_EMU_VSOCK_ROOT", str(tmp_path))
    monkeypatch.setenv("NITRO_EMU_CID", "")
    with pytest.raises(OSError, match="NITRO_EMU_CID"):
        vsock_enclave.listen(5000)
    monkeypatch.setenv("NITRO_EMU_CID", "16")
    with vsock_enclave.listen(5000) as listener:  # and its own CID loops back to itself
        with vsock_enclave.connect(16, 5000, timeout=5) as client:
            conn, peer = listener.accept()
            with conn:
                assert peer[0] == 16
                assert vsock_enclave.peer_address(client) == (16, 5000)


def test_transport_choice_real_nitro_vs_emulator(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NITRO_EMU_CID", raising=False)
    monkeypatch.delenv("NITRO_EMU_VSOCK_ROOT", raising=False)
    monkeypatch.setattr(vsock_enclave, "DEFAULT_ROOT", str(tmp_path / "absent"))
    assert vsock_enclave.emulated() is False  # real Nitro: AF_VSOCK, same calls
    monkeypatch.setattr(vsock_enclave, "DEFAULT_ROOT", str(tmp_path))
    assert vsock_enclave.emulated() is True  # /run/nitro-emu exists: the Unix layout
    monkeypatch.setattr(vsock_enclave, "DEFAULT_ROOT", str(tmp_path / "absent"))
    monkeypatch.setenv("NITRO_EMU_CID", "16")
    assert vsock_enclave.emulated() is True


@pytest.mark.skipif(not hasattr(socket, "AF_VSOCK"), reason="this Python has no AF_VSOCK")
def test_real_nitro_path_uses_af_vsock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NITRO_EMU_CID", raising=False)
    monkeypatch.delenv("NITRO_EMU_VSOCK_ROOT", raising=False)
    monkeypatch.setattr(vsock_enclave, "DEFAULT_ROOT", str(tmp_path / "absent"))
    try:
        listener = vsock_enclave.listen(vsock.VMADDR_PORT_ANY)
    except OSError as error:  # the kernel has no vsock transport at all
        pytest.skip(f"AF_VSOCK sockets unavailable here: {error}")
    with listener:
        assert listener.socket.family == socket.AF_VSOCK
        assert listener.port != vsock.VMADDR_PORT_ANY
        assert listener.path is None  # nothing on the filesystem
