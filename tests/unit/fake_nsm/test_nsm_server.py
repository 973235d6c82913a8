"""The NSM socket server: framing, bad clients, concurrency, documents that verify."""

from __future__ import annotations

import logging
import os
import socket
import stat
import struct
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import cbor2
import pytest
from tests.unit.fake_nsm.nsm_helpers import MEASUREMENTS, MODULE_ID, ca_root, fold_extend, make_device

from fake_nsm import codec
from fake_nsm.client import SOCKET_ENV, NsmClient, SocketTransport
from fake_nsm.device import NsmDevice, extend
from fake_nsm.errors import InputTooLarge, InvalidArgument, NsmConfigError, NsmUnavailable, ReadOnlyIndex
from fake_nsm.server import NsmServer

ZERO = bytes(48)


@pytest.fixture(scope="module")
def ca_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ca")


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A short directory for sockets (sun_path holds 107 bytes)."""
    with tempfile.TemporaryDirectory(prefix="nsm-") as name:
        yield Path(name)


@pytest.fixture
def device(ca_dir: Path) -> NsmDevice:
    return make_device(ca_dir)


@pytest.fixture
def server(short_dir: Path, device: NsmDevice) -> Iterator[NsmServer]:
    with NsmServer(short_dir / "nsm.sock", device) as running:
        yield running


def raw_connect(server: NsmServer) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(str(server.socket_path))
    return sock


def send_frame(sock: socket.socket, body: bytes, length: int | None = None) -> None:
    sock.sendall(struct.pack(">I", len(body) if length is None else length) + body)


def recv_frame(sock: socket.socket) -> bytes | None:
    """One reply frame, or None if the server closed the connection (EOF, or RST when it
    closed with our unread bytes pending)."""
    try:
        header = sock.recv(4, socket.MSG_WAITALL)
    except ConnectionResetError:
        return None
    if not header:
        return None
    (length,) = struct.unpack(">I", header)
    return sock.recv(length, socket.MSG_WAITALL)


# --- framing and lifecycle ------------------------------------------------------------------


def test_framed_exchange_and_socket_mode(server: NsmServer) -> None:
    assert stat.S_IMODE(server.socket_path.stat().st_mode) == 0o666
    with raw_connect(server) as sock:
        send_frame(sock, bytes.fromhex("6b44657363726962654e534d"))  # "DescribeNSM"
        reply = codec.decode_response(recv_frame(sock) or b"")
        assert isinstance(reply, codec.DescribeNSMResponse) and reply.module_id == MODULE_ID
        send_frame(sock, codec.encode_request(codec.LockPCR(3)))
        assert recv_frame(sock) == codec.encode_response(codec.ErrorResponse("ReadOnlyIndex"))


def test_stop_removes_the_socket_and_closes_clients(short_dir: Path, device: NsmDevice) -> None:
    server = NsmServer(short_dir / "nsm.sock", device).start()
    sock = raw_connect(server)
    send_frame(sock, cbor2.dumps("GetRandom"))
    assert recv_frame(sock) is not None  # accepted and served
    server.stop()
    assert not server.socket_path.exists()
    assert recv_frame(sock) is None
    sock.close()
    server.stop()  # idempotent


def test_stale_socket_is_replaced_but_a_live_one_or_a_file_is_refused(short_dir: Path, device: NsmDevice) -> None:
    path = short_dir / "nsm.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # leaves the file with nobody listening
    with NsmServer(path, device):
        with pytest.raises(NsmConfigError, match="already listening"):
            NsmServer(path, device).start()
    other = short_dir / "file"
    other.write_text("not a socket")
    with pytest.raises(NsmConfigError, match="not a socket"):
        NsmServer(other, device).start()
    with pytest.raises(NsmConfigError, match="107"):
        NsmServer(short_dir / ("x" * 120), device)


def test_client_finds_the_socket_through_the_environment(
    server: NsmServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SOCKET_ENV, str(server.socket_path))
    with NsmClient(SocketTransport()) as nsm:
        assert nsm.describe_pcr(0).data == MEASUREMENTS[0]
        assert nsm.extend_pcr(16, b"x") == extend(ZERO, b"x")
        with pytest.raises(ReadOnlyIndex):
            nsm.extend_pcr(0, b"x")
    monkeypatch.setenv(SOCKET_ENV, str(server.socket_path) + ".missing")
    with pytest.raises(NsmUnavailable, match="nsm serve"):
        SocketTransport()


# --- bad clients ------------------------------------------------------------------------------


def test_bad_cbor_gets_invalid_argument_and_the_connection_stays_usable(
    server: NsmServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="fake_nsm.server")
    invalid = codec.encode_response(codec.ErrorResponse(InvalidArgument.code))
    with raw_connect(server) as sock:
        for garbage in (b"\xff\xff", b"", cbor2.dumps({"Reboot": {}}), cbor2.dumps("GetRandom") + b"x"):
            send_frame(sock, garbage)
            assert recv_frame(sock) == invalid
        send_frame(sock, bytes(4097))  # within the framing slack: an NSM error, not a close
        assert recv_frame(sock) == codec.encode_response(codec.ErrorResponse(InputTooLarge.code))
        send_frame(sock, cbor2.dumps("GetRandom"))
        reply = codec.decode_response(recv_frame(sock) or b"")
        assert isinstance(reply, codec.GetRandomResponse) and len(reply.random) == 256
    assert sum("bad request" in r.message or "InputTooLarge" in r.message for r in caplog.records) == 5


@pytest.mark.parametrize(
    "broken",
    [
        struct.pack(">I", 4096 + 65) + bytes(10),  # length over 4096 + 64
        struct.pack(">I", 0xFFFFFFFF),
        struct.pack(">I", 100) + b"short",  # then EOF inside the frame
        b"\x00\x00",  # EOF inside the header
    ],
    ids=["over-slack", "huge", "eof-in-body", "eof-in-header"],
)
def test_broken_frame_closes_only_that_connection(
    server: NsmServer, broken: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="fake_nsm.server")
    with raw_connect(server) as bystander, raw_connect(server) as bad:
        bad.sendall(broken)
        bad.shutdown(socket.SHUT_WR)
        assert recv_frame(bad) is None
        send_frame(bystander, cbor2.dumps("DescribeNSM"))
        assert isinstance(codec.decode_response(recv_frame(bystander) or b""), codec.DescribeNSMResponse)
    with NsmClient(SocketTransport(server.socket_path)) as fresh:
        assert fresh.describe_nsm().max_pcrs == 32
    assert len([r for r in caplog.records if "closed a connection" in r.message]) == 1
    assert server.serving


def test_clean_hangup_between_frames_is_not_logged(server: NsmServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="fake_nsm.server")
    with raw_connect(server) as sock:
        send_frame(sock, cbor2.dumps("GetRandom"))
        assert recv_frame(sock) is not None
    with NsmClient(SocketTransport(server.socket_path)) as nsm:
        nsm.get_random()
    assert not caplog.records


# --- concurrency -----------------------------------------------------------------------------

CLIENTS = 32
REQUESTS = 500
SHARED_PCR = 31  # every client extends it with the same bytes: the result is order-independent


def _client_workload(path: Path, number: int, errors: list[BaseException], documents: list[bytes]) -> None:
    """500 mixed requests; client n < 15 owns PCR 16+n, every client extends PCR 31."""
    try:
        with NsmClient(SocketTransport(path, timeout=60)) as nsm:
            own = 16 + number if number < 15 else None
            for step in range(REQUESTS):
                kind = step % 10
                if kind == 0 and own is not None:
                    nsm.extend_pcr(own, f"{number}:{step}".encode())
                elif kind == 1:
                    nsm.extend_pcr(SHARED_PCR, b"shared")
                elif kind == 2:
                    assert nsm.describe_pcr(step % 32).data is not None
                elif kind == 3:
                    assert len(nsm.get_random()) == 256
                elif kind == 4:
                    assert nsm.describe_nsm().locked_pcrs >= frozenset(range(16))
                elif kind == 5:
                    try:
                        nsm.lock_pcr(step % 16)
                    except ReadOnlyIndex:
                        pass
                    else:
                        raise AssertionError("a boot-locked PCR accepted LockPCR")
                elif kind == 6:
                    try:
                        nsm.transport.exchange(b"\xa1")  # truncated CBOR on the same connection
                    except Exception as error:  # noqa: BLE001
                        raise AssertionError(f"bad CBOR broke the connection: {error}") from error
                elif kind == 7 and step % 100 == 7:
                    documents.append(nsm.get_attestation_doc(nonce=f"{number}:{step}".encode()))
                else:
                    assert nsm.describe_pcr(0).lock
    except BaseException as error:  # noqa: BLE001 - reported by the main thread
        errors.append(error)


def test_32_concurrent_clients_500_mixed_requests_leave_consistent_pcrs(
    server: NsmServer, device: NsmDevice, ca_dir: Path
) -> None:
    from fake_nsm.verifier import verify_attestation_document

    errors: list[BaseException] = []
    documents: list[bytes] = []
    threads = [
        threading.Thread(target=_client_workload, args=(server.socket_path, n, errors, documents))
        for n in range(CLIENTS)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=240)
    assert not any(thread.is_alive() for thread in threads)
    assert not errors, errors[:3]
    for number in range(15):
        chunks = [f"{number}:{step}".encode() for step in range(0, REQUESTS, 10)]
        assert device.pcr(16 + number) == fold_extend(ZERO, chunks), number
    assert device.pcr(SHARED_PCR) == fold_extend(ZERO, [b"shared"] * (CLIENTS * REQUESTS // 10))
    assert len(documents) == CLIENTS * (REQUESTS // 100)

    # Lock a user PCR: the next document from the server carries it, and verifies.
    with NsmClient(SocketTransport(server.socket_path)) as nsm:
        nsm.lock_pcr(SHARED_PCR)
        data = nsm.get_attestation_doc(nonce=b"n-1", user_data=b"hello")
    expected = {i: device.pcr(i) for i in [*range(16), SHARED_PCR]}
    document = verify_attestation_document(
        data, trusted_roots=[ca_root(ca_dir)], expected_pcrs=expected, nonce=b"n-1"
    )
    assert dict(document.pcrs) == expected
    assert document.module_id == MODULE_ID and document.user_data == b"hello"
    earlier = verify_attestation_document(documents[0], trusted_roots=[ca_root(ca_dir)])
    assert set(earlier.pcrs) == set(range(16))


def test_server_keeps_its_thread_count_bounded(short_dir: Path, device: NsmDevice) -> None:
    before = threading.active_count()
    with NsmServer(short_dir / "n.sock", device) as server:
        for _ in range(20):
            with NsmClient(SocketTransport(server.socket_path)) as nsm:
                nsm.get_random()
    assert threading.active_count() == before
    assert not os.path.exists(short_dir / "n.sock")


# --- nitro-emu nsm serve ------------------------------------------------------------------------


def test_nsm_serve_command_serves_until_sigterm(short_dir: Path) -> None:
    import signal
    import subprocess
    import sys
    import time

    from fake_nsm.device import instance_pcr
    from fake_nsm.verifier import verify_attestation_document

    home, path = short_dir / "home", short_dir / "cli" / "nsm.sock"
    pcr0 = "ab" * 48
    command = [
        sys.executable, "-m", "emulator.cli", "nsm", "serve", "--socket", str(path),
        "--pcr", f"0={pcr0}", "--instance-id", "i-0123456789abcdef0",
    ]  # fmt: skip
    env = {**os.environ, "NITRO_EMU_HOME": str(home)}
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not path.exists():
            assert process.poll() is None, process.communicate()[1]
            assert time.monotonic() < deadline, "nsm serve did not create its socket"
            time.sleep(0.05)
        with NsmClient(SocketTransport(path)) as nsm:
            assert nsm.describe_pcr(0).data.hex() == pcr0
            assert nsm.describe_pcr(4).data == instance_pcr("i-0123456789abcdef0")
            assert nsm.describe_nsm().module_id.startswith("i-0123456789abcdef0-enc")
            data = nsm.get_attestation_doc(nonce=b"cli")
        document = verify_attestation_document(data, trusted_roots=[ca_root(home / "ca")], nonce=b"cli")
        assert document.pcrs[0].hex() == pcr0
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        assert not path.exists()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stderr is not None:
            process.stderr.close()


def test_nsm_serve_rejects_bad_arguments(short_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from emulator.cli.app import main

    assert main(["nsm", "serve", "--socket", str(short_dir / "s"), "--pcr", "4=" + "00" * 48]) == 1
    assert "PCR4 comes from --instance-id" in capsys.readouterr().err
    assert main(["nsm", "serve", "--socket", str(short_dir / "s"), "--pcr", "0=abc"]) == 1
    assert "96 hex digits" in capsys.readouterr().err
