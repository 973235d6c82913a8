"""The LD_PRELOAD shim, on the host: a C program's ioctl on /dev/nsm and unmodified AF_VSOCK
Python programs, against the real fake-NSM server and the VSOCK mirror (no Docker)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cbor2
import pytest

from emulator import vsock
from emulator.settings import Settings
from emulator.shim.build import (
    ENCLAVE_LIB_DIR,
    ENCLAVE_PRELOAD,
    LIBRARY_NAME,
    ShimBuild,
    ShimBuildError,
    container_extras,
    ensure_shim,
    parent_environment,
)
from emulator.vsock.enclave import parse_peer
from fake_nsm.server import NsmServer
from fake_nsm.verifier import verify_attestation_document
from tests.unit.fake_nsm.nsm_helpers import MEASUREMENTS, MODULE_ID, ca_root, make_device

CID = 16
TIMEOUT = 20

# A C client of /dev/nsm, written as AWS's Rust driver uses it (nitro-facts §1.4):
#   probe MODE [HEX_REQUEST [CAPACITY [hold]]]  ->  one JSON line on stdout
PROBE_SOURCE = r"""
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

struct nsm_message { struct iovec request; struct iovec response; };
#define NSM_IOCTL _IOWR(0x0A, 0, struct nsm_message)

static size_t unhex(const char *text, unsigned char *out) {
    size_t n = strlen(text) / 2;
    for (size_t i = 0; i < n; i++) sscanf(text + 2 * i, "%2hhx", &out[i]);
    return n;
}

static int call(int fd, unsigned long cmd, const unsigned char *req, size_t len, size_t cap) {
    static unsigned char reply[0x3000];
    struct nsm_message msg = {{(void *)req, len}, {reply, cap}};
    if (ioctl(fd, cmd, &msg) != 0) { printf("{\"errno\": %d}\n", errno); return 1; }
    printf("{\"errno\": 0, \"len\": %zu, \"reply\": \"", msg.response.iov_len);
    for (size_t i = 0; i < msg.response.iov_len; i++) printf("%02x", reply[i]);
    printf("\"}\n");
    return 0;
}

int main(int argc, char **argv) {
    static unsigned char req[8192];
    size_t len = argc > 2 ? unhex(argv[2], req) : 0;
    size_t cap = argc > 3 ? strtoul(argv[3], NULL, 10) : 0x3000;
    int fd = open("/dev/nsm", O_RDWR | O_CLOEXEC);
    if (fd < 0) { printf("{\"open_errno\": %d}\n", errno); return 0; }
    const char *mode = argv[1];
    if (!strcmp(mode, "ioctl")) {
        call(fd, NSM_IOCTL, req, len, cap);
        if (argc > 4) { fflush(stdout); for (;;) pause(); }  /* "hold": an enclave's main */
        return 0;
    }
    if (!strcmp(mode, "other")) return call(fd, _IOWR(0x0A, 1, struct nsm_message), req, len, cap), 0;
    if (!strcmp(mode, "big")) { memset(req, 0xf6, 4097); return call(fd, NSM_IOCTL, req, 4097, cap), 0; }
    if (!strcmp(mode, "null")) {
        int rc = ioctl(fd, NSM_IOCTL, NULL);
        printf("{\"rc\": %d, \"errno\": %d}\n", rc, rc ? errno : 0);
        return 0;
    }
    if (!strcmp(mode, "lseek")) {
        off_t rc = lseek(fd, 0, SEEK_CUR);
        struct stat st; fstat(fd, &st);
        printf("{\"rc\": %ld, \"errno\": %d, \"chr\": %d}\n", (long)rc, errno, S_ISCHR(st.st_mode));
        return 0;
    }
    if (!strcmp(mode, "dup")) {  /* the ioctl works on a dup; a closed number is plain again */
        int copy = dup(fd), moved = fcntl(fd, F_DUPFD_CLOEXEC, 50);
        close(fd);
        int plain = open("/dev/null", O_RDONLY);  /* takes fd's number back */
        off_t seek = lseek(plain, 0, SEEK_CUR);
        printf("{\"reused\": %d, \"plain_seek\": %ld}\n", plain == fd, (long)seek);
        call(copy, NSM_IOCTL, req, len, cap);
        return call(moved, NSM_IOCTL, req, len, cap), 0;
    }
    if (!strcmp(mode, "fopen")) {  /* stdio users: fopen, then fclose forgets the fd */
        close(fd);
        FILE *stream = fopen("/dev/nsm", "re");
        int number = fileno(stream);
        call(number, NSM_IOCTL, req, len, cap);
        fclose(stream);
        int plain = open("/dev/null", O_RDONLY);
        printf("{\"reused\": %d, \"plain_seek\": %ld}\n", plain == number, (long)lseek(plain, 0, SEEK_CUR));
        return 0;
    }
    return 2;
}
"""


# --- fixtures --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> ShimBuild:
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler on this machine")
    return ensure_shim(Settings(home=tmp_path_factory.mktemp("shimhome")))


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory, build: ShimBuild) -> Path:
    directory = tmp_path_factory.mktemp("probe")
    (directory / "probe.c").write_text(PROBE_SOURCE)
    subprocess.run(
        ["cc", "-O1", "-o", str(directory / "probe"), str(directory / "probe.c")],
        check=True, capture_output=True, timeout=60,
    )
    return directory / "probe"


@pytest.fixture(scope="module")
def nsm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Any]]:
    """A real NsmServer (test CA, known measurements) on a short temp socket."""
    directory = tmp_path_factory.mktemp("nsm")
    device = make_device(directory / "ca")
    with NsmServer(directory / "nsm.sock", device):
        yield directory / "nsm.sock", ca_root(directory / "ca")


def run_probe(
    build: ShimBuild, probe: Path, socket_path: Path, mode: str, request: bytes = b"",
    capacity: int | None = None, library: Path | None = None,
) -> dict[str, Any]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin"), "LD_PRELOAD": str(library or build.library),
           "NITRO_EMU_NSM_SOCKET": str(socket_path)}
    argv = [str(probe), mode, request.hex()] + ([str(capacity)] if capacity is not None else [])
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    return lines[0] if len(lines) == 1 else {"lines": lines}


def reply(result: dict[str, Any]) -> Any:
    assert result["errno"] == 0, result
    return cbor2.loads(bytes.fromhex(result["reply"]))


# --- /dev/nsm ----------------------------------------------------------------------------


def test_describe_nsm_through_the_ioctl(build: ShimBuild, probe: Path, nsm: tuple[Path, Any]) -> None:
    answer = reply(run_probe(build, probe, nsm[0], "ioctl", cbor2.dumps("DescribeNSM")))
    described = answer["DescribeNSM"]
    assert described["module_id"] == MODULE_ID
    assert described["max_pcrs"] == 32 and described["digest"] == "SHA384"


def test_get_random_differs_each_call(build: ShimBuild, probe: Path, nsm: tuple[Path, Any]) -> None:
    first = reply(run_probe(build, probe, nsm[0], "ioctl", cbor2.dumps("GetRandom")))
    second = reply(run_probe(build, probe, nsm[0], "ioctl", cbor2.dumps("GetRandom")))
    assert len(first["GetRandom"]["random"]) >= 32
    assert first["GetRandom"]["random"] != second["GetRandom"]["random"]


def test_attestation_document_verifies(build: ShimBuild, probe: Path, nsm: tuple[Path, Any]) -> None:
    request = cbor2.dumps(
        {"Attestation": {"user_data": b"hello", "nonce": b"n0nce", "public_key": None}}
    )
    document = reply(run_probe(build, probe, nsm[0], "ioctl", request))["Attestation"]["document"]
    verified = verify_attestation_document(
        document, trusted_roots=[nsm[1]], expected_pcrs=MEASUREMENTS, nonce=b"n0nce"
    )
    assert verified.module_id == MODULE_ID and verified.user_data == b"hello"


def test_small_buffer_truncates_and_writes_the_length(
    build: ShimBuild, probe: Path, nsm: tuple[Path, Any]
) -> None:
    full = run_probe(build, probe, nsm[0], "ioctl", cbor2.dumps("DescribeNSM"))
    short = run_probe(build, probe, nsm[0], "ioctl", cbor2.dumps("DescribeNSM"), capacity=10)
    assert short["errno"] == 0 and short["len"] == 10
    assert short["reply"] == full["reply"][:20]  # the first 10 bytes, silently cut (nsm.c)


@pytest.mark.parametrize(
    ("mode", "expected"),
    [("other", errno.EINVAL), ("big", errno.EMSGSIZE), ("null", errno.EFAULT)],
)
def test_bad_ioctls_give_the_kernel_errno(
    build: ShimBuild, probe: Path, nsm: tuple[Path, Any], mode: str, expected: int
) -> None:
    assert run_probe(build, probe, nsm[0], mode, cbor2.dumps("DescribeNSM"))["errno"] == expected


def test_unreachable_nsm_socket_is_eio_not_a_crash(
    build: ShimBuild, probe: Path, tmp_path: Path
) -> None:
    result = run_probe(build, probe, tmp_path / "nobody.sock", "ioctl", cbor2.dumps("DescribeNSM"))
    assert result == {"errno": errno.EIO}


def test_server_that_hangs_up_is_eio(build: ShimBuild, probe: Path, tmp_path: Path) -> None:
    path = tmp_path / "rude.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen()

    def hang_up() -> None:
        conn, _ = listener.accept()
        conn.recv(10)
        conn.close()  # mid-exchange: the client must see EIO, not SIGPIPE

    thread = threading.Thread(target=hang_up, daemon=True)
    thread.start()
    try:
        assert run_probe(build, probe, path, "ioctl", cbor2.dumps("DescribeNSM")) == {"errno": errno.EIO}
    finally:
        thread.join(TIMEOUT)
        listener.close()


def test_device_is_a_char_device_that_does_not_seek(
    build: ShimBuild, probe: Path, nsm: tuple[Path, Any]
) -> None:
    assert run_probe(build, probe, nsm[0], "lseek") == {"rc": -1, "errno": errno.ESPIPE, "chr": 1}


def test_dup_and_close_keep_the_tracking_right(
    build: ShimBuild, probe: Path, nsm: tuple[Path, Any]
) -> None:
    lines = run_probe(build, probe, nsm[0], "dup", cbor2.dumps("DescribeNSM"))["lines"]
    assert lines[0] == {"reused": 1, "plain_seek": 0}
    assert reply(lines[1])["DescribeNSM"]["module_id"] == MODULE_ID
    assert reply(lines[2])["DescribeNSM"]["module_id"] == MODULE_ID


def test_fopen_and_fclose(build: ShimBuild, probe: Path, nsm: tuple[Path, Any]) -> None:
    lines = run_probe(build, probe, nsm[0], "fopen", cbor2.dumps("DescribeNSM"))["lines"]
    assert reply(lines[0])["DescribeNSM"]["module_id"] == MODULE_ID
    assert lines[1] == {"reused": 1, "plain_seek": 0}


def test_python_sees_the_device_like_real_hardware(build: ShimBuild, nsm: tuple[Path, Any]) -> None:
    """os.stat/os.open work; text-mode 'r+' fails as on Nitro (the device does not seek)."""
    code = textwrap.dedent("""
        import json, os, stat
        out = {"chr": stat.S_ISCHR(os.stat("/dev/nsm").st_mode), "access": os.access("/dev/nsm", os.R_OK | os.W_OK)}
        try:
            open("/dev/nsm", "r+")
        except OSError as error:
            out["text_mode"] = type(error).__name__
        fd = os.open("/dev/nsm", os.O_RDONLY)
        os.close(fd)
        print(json.dumps(out))
    """)
    env = dict(os.environ, LD_PRELOAD=str(build.library), NITRO_EMU_NSM_SOCKET=str(nsm[0]))
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"chr": True, "access": True, "text_mode": "UnsupportedOperation"}


def test_threads_share_the_device(build: ShimBuild, nsm: tuple[Path, Any]) -> None:
    """fake_nsm's own /dev/nsm transport, 8 threads at once: every reply is whole and distinct."""
    code = textwrap.dedent("""
        import json
        from concurrent.futures import ThreadPoolExecutor
        from fake_nsm.client import DevNsmTransport, NsmClient
        client = NsmClient(transport=DevNsmTransport())
        with ThreadPoolExecutor(8) as pool:
            randoms = list(pool.map(lambda _: client.get_random().hex(), range(80)))
        print(json.dumps({"distinct": len(set(randoms)), "module_id": client.describe_nsm().module_id}))
    """)
    env = dict(os.environ, LD_PRELOAD=str(build.library), NITRO_EMU_NSM_SOCKET=str(nsm[0]),
               PYTHONPATH=str(Path(__file__).resolve().parents[3]))
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"distinct": 80, "module_id": MODULE_ID}


@pytest.mark.skipif(shutil.which("musl-gcc") is None, reason="musl-gcc (musl-tools) not installed")
def test_musl_program_with_both_builds(
    build: ShimBuild, nsm: tuple[Path, Any], tmp_path: Path
) -> None:
    assert build.musl_library is not None and build.musl_library.is_file()
    (tmp_path / "probe.c").write_text(PROBE_SOURCE)
    subprocess.run(["musl-gcc", "-o", str(tmp_path / "probe"), str(tmp_path / "probe.c")],
                   check=True, capture_output=True, timeout=60)
    for library in (build.musl_library, build.library):
        result = run_probe(build, tmp_path / "probe", nsm[0], "ioctl", cbor2.dumps("DescribeNSM"),
                           library=library)
        assert reply(result)["DescribeNSM"]["module_id"] == MODULE_ID
        assert run_probe(build, tmp_path / "probe", nsm[0], "big", library=library)["errno"] == errno.EMSGSIZE


# --- AF_VSOCK ----------------------------------------------------------------------------

ENCLAVE_SERVER = """
import json, socket, sys
s = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
s.bind((socket.VMADDR_CID_ANY, 5000))
s.listen()
print(json.dumps({"sockname": s.getsockname()}), flush=True)
for _ in range(int(sys.argv[1])):
    conn, peer = s.accept()
    data = conn.recv(100)
    conn.sendall(json.dumps({"peer": peer, "conn_sockname": conn.getsockname(),
                             "conn_peername": conn.getpeername(), "data": data.decode()}).encode())
    conn.close()
"""

VSOCK_CLIENT = """
import json, socket, sys
s = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
s.connect((int(sys.argv[1]), int(sys.argv[2])))
s.sendall(b"ping")
answer = s.recv(1000).decode()
print(json.dumps({"sockname": s.getsockname(), "peername": s.getpeername(), "answer": answer}))
"""


@pytest.fixture
def mirror(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A state dir with enclave 16's run dir, its parent/ standing in for the ro mount."""
    home = tmp_path_factory.mktemp("vs")
    monkeypatch.setenv("NITRO_EMU_HOME", str(home))
    (home / "run" / str(CID) / "vsock").mkdir(parents=True)
    (home / "run" / "parent").mkdir()
    (home / "run" / str(CID) / "parent").symlink_to(home / "run" / "parent")
    return home


def enclave_env(build: ShimBuild, home: Path) -> dict[str, str]:
    return dict(os.environ, LD_PRELOAD=str(build.library), NITRO_EMU_CID=str(CID),
                NITRO_EMU_VSOCK_ROOT=str(home / "run" / str(CID)), NITRO_EMU_HOME="/nonexistent")


def parent_env(build: ShimBuild, home: Path) -> dict[str, str]:
    return parent_environment(build, dict(os.environ), settings=Settings(home=home))


def start(code: str, env: dict[str, str], *args: object) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture
def enclave_server(build: ShimBuild, mirror: Path) -> Iterator[subprocess.Popen[str]]:
    """The unmodified AF_VSOCK server inside 'enclave 16', serving two connections."""
    server = start(ENCLAVE_SERVER, enclave_env(build, mirror), 2)
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        assert line, server.stderr.read() if server.stderr else ""
        assert json.loads(line) == {"sockname": [0xFFFFFFFF, 5000]}  # bound to CID_ANY
        assert (mirror / "run" / str(CID) / "vsock" / "5000").exists()
        yield server
    finally:
        server.kill()
        server.communicate(timeout=TIMEOUT)


def test_enclave_af_vsock_server_answers_host_clients(
    build: ShimBuild, mirror: Path, enclave_server: subprocess.Popen[str]
) -> None:
    # the host's Python side (emulator.vsock.host, no shim) ...
    with vsock.connect(CID, 5000, timeout=TIMEOUT) as sock:
        own = parse_peer(sock.getsockname())
        sock.sendall(b"from-python")
        seen = json.loads(sock.recv(1000))
    assert own[0] == 3
    assert seen == {"peer": list(own), "conn_sockname": [CID, 5000], "conn_peername": list(own),
                    "data": "from-python"}
    # ... and an unmodified AF_VSOCK program on the parent side, through the shim
    client = subprocess.run([sys.executable, "-c", VSOCK_CLIENT, str(CID), "5000"], env=parent_env(build, mirror),
                            capture_output=True, text=True, timeout=TIMEOUT)
    assert client.returncode == 0, client.stderr
    out = json.loads(client.stdout)
    answer = json.loads(out["answer"])
    assert out["peername"] == [CID, 5000]
    assert out["sockname"][0] == 3 and answer["peer"] == out["sockname"]
    assert answer["data"] == "ping"


def test_enclave_af_vsock_client_reaches_a_parent_server(build: ShimBuild, mirror: Path) -> None:
    with vsock.listen(8000) as listener:
        listener.settimeout(TIMEOUT)
        client = start(VSOCK_CLIENT, enclave_env(build, mirror), 3, 8000)
        try:
            conn, peer = listener.accept()
            with conn:
                assert conn.recv(4) == b"ping"
                conn.sendall(b"pong")
            stdout, stderr = client.communicate(timeout=TIMEOUT)
        finally:
            client.kill()
            client.wait()
    assert client.returncode == 0, stderr
    out = json.loads(stdout)
    assert out["peername"] == [3, 8000] and out["answer"] == "pong"
    assert list(peer) == out["sockname"] and peer[0] == CID


ERRORS_PROGRAM = """
import errno, json, socket, sys
out = {}
def attempt(name, call):
    try:
        call()
        out[name] = 0
    except OSError as error:
        out[name] = errno.errorcode.get(error.errno, error.errno)
def fresh():
    return socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
attempt("unknown_cid", lambda: fresh().connect((99, 1)))
attempt("nobody_on_port", lambda: fresh().connect((int(sys.argv[1]), 4999)))
attempt("dgram", lambda: socket.socket(socket.AF_VSOCK, socket.SOCK_DGRAM))
attempt("listen_unbound", lambda: fresh().listen())
s = fresh(); s.bind((socket.VMADDR_CID_ANY, 6000))
attempt("bind_twice", lambda: s.bind((socket.VMADDR_CID_ANY, 6001)))
s.listen()
attempt("port_in_use", lambda: fresh().bind((socket.VMADDR_CID_ANY, 6000)))
attempt("protocol", lambda: socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM, 6))
attempt("foreign_cid", lambda: fresh().bind((1234, 1)))
attempt("peer_unconnected", lambda: fresh().getpeername())
attempt("connect_listener", lambda: s.connect((1, 6000)))
c = fresh(); c.connect((1, 6000))  # loopback to our own listener
attempt("connect_twice", lambda: c.connect((1, 6000)))
out["so_domain"] = c.getsockopt(socket.SOL_SOCKET, socket.SO_DOMAIN)
print(json.dumps(out))
"""


@pytest.mark.parametrize("side", ["parent", "enclave"])
def test_vsock_errors_are_the_kernel_errnos(build: ShimBuild, mirror: Path, side: str) -> None:
    env = parent_env(build, mirror) if side == "parent" else enclave_env(build, mirror)
    target = CID if side == "parent" else 3
    result = subprocess.run([sys.executable, "-c", ERRORS_PROGRAM, str(target)], env=env,
                            capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "unknown_cid": "ENODEV", "nobody_on_port": "ECONNREFUSED", "dgram": "ESOCKTNOSUPPORT",
        "listen_unbound": "EINVAL", "bind_twice": "EINVAL",
        "port_in_use": "EADDRINUSE", "protocol": "EPROTONOSUPPORT",
        "foreign_cid": "EADDRNOTAVAIL", "peer_unconnected": "ENOTCONN",
        "connect_listener": "EINVAL", "connect_twice": "EISCONN", "so_domain": socket.AF_VSOCK,
    }


LOCAL_CID_PROGRAM = """
import array, errno, fcntl, json
buf = array.array("I", [0])
with open("/dev/vsock", "rb") as device:  # how programs learn their CID on Nitro
    fcntl.ioctl(device, 0x7B9, buf, True)
    try:
        fcntl.ioctl(device, 0x7BA, buf, True)
        other = 0
    except OSError as error:
        other = errno.errorcode[error.errno]
print(json.dumps({"cid": buf[0], "other": other}))
"""


@pytest.mark.parametrize(("side", "cid"), [("parent", 3), ("enclave", CID)])
def test_dev_vsock_tells_the_local_cid(build: ShimBuild, mirror: Path, side: str, cid: int) -> None:
    env = parent_env(build, mirror) if side == "parent" else enclave_env(build, mirror)
    result = subprocess.run([sys.executable, "-c", LOCAL_CID_PROGRAM], env=env,
                            capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"cid": cid, "other": "ENOTTY"}


# --- build, CLI and the enclave hook -----------------------------------------------------


def test_build_is_cached_by_source_hash(build: ShimBuild) -> None:
    settings = Settings(home=build.directory.parents[2])
    before = build.library.stat().st_mtime_ns
    again = ensure_shim(settings)
    assert again == build and again.library.stat().st_mtime_ns == before
    assert not [p for p in build.directory.parent.iterdir() if p.name.startswith(".build-")]


def test_concurrent_builders_agree(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    results: list[Any] = []
    threads = [threading.Thread(target=lambda: results.append(ensure_shim(settings, musl=False)))
               for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert len(results) == 2 and len(set(results)) == 1
    assert results[0].library.is_file()
    assert [p.name for p in (tmp_path / "cache" / "shim").iterdir()] == [results[0].directory.name]


def test_no_compiler_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CC", raising=False)
    with pytest.raises(ShimBuildError, match="no C compiler"):
        ensure_shim(Settings(home=tmp_path), musl=False)


def test_exec_print_env_and_exec(build: ShimBuild) -> None:
    cli = [sys.executable, "-m", "emulator.cli", "exec"]
    home = build.directory.parents[2]  # its cache already holds the build
    env = dict(os.environ, NITRO_EMU_HOME=str(home), NITRO_EMU_CID="7")
    printed = subprocess.run([*cli, "--print-env"], env=env, capture_output=True, text=True, timeout=60)
    assert printed.returncode == 0, printed.stderr
    assert f"NITRO_EMU_HOME={home}" in printed.stdout and LIBRARY_NAME in printed.stdout
    code = ("import socket; s = socket.socket(socket.AF_VSOCK); s.bind((socket.VMADDR_CID_ANY, 7001)); "
            "s.listen(); import os; print(sorted(os.listdir(os.environ['NITRO_EMU_HOME'] + '/run/parent')))")
    ran = subprocess.run([*cli, "--", sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=60)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == "['7001']"  # the parent's role, although NITRO_EMU_CID was set
    assert not (home / "run" / "parent" / "7001").exists()  # removed on close


def test_exec_of_a_missing_program_is_one_line(build: ShimBuild) -> None:
    env = dict(os.environ, NITRO_EMU_HOME=str(build.directory.parents[2]))
    ran = subprocess.run([sys.executable, "-m", "emulator.cli", "exec", "--", "no-such-program-x"],
                         env=env, capture_output=True, text=True, timeout=60)
    assert ran.returncode == 1
    assert ran.stderr.strip().startswith("nitro-emu: error: cannot run 'no-such-program-x'")


def test_container_extras_mount_the_library(build: ShimBuild, tmp_path: Path) -> None:
    from emulator.enclave.container import ContainerContext

    settings = Settings(home=build.directory.parents[2])
    context = ContainerContext(settings=settings, enclave=None, run_dir=tmp_path / "run16")  # type: ignore[arg-type]
    extras = container_extras(context)
    assert extras.mounts == {str(build.directory): (ENCLAVE_LIB_DIR, True)}
    assert extras.environment == {"LD_PRELOAD": ENCLAVE_PRELOAD}
    assert ENCLAVE_PRELOAD == f"{ENCLAVE_LIB_DIR}/{LIBRARY_NAME}"
    assert (tmp_path / "run16" / "lib").is_dir()


@pytest.mark.skipif(shutil.which("readelf") is None, reason="readelf (binutils) not installed")
def test_library_loads_on_any_libc(build: ShimBuild) -> None:
    """No libc dependency nor glibc symbol versions: older images (glibc 2.26) can load it."""
    dynamic = subprocess.run(["readelf", "-dV", str(build.library)], capture_output=True,
                             text=True, check=True).stdout
    needed = [line.split("[")[1].rstrip("]") for line in dynamic.splitlines() if "(NEEDED)" in line]
    assert needed in (["libdl.so.2"], [])
    assert "GLIBC_" not in dynamic


def test_programs_that_never_touch_nsm_or_vsock_are_unaffected(build: ShimBuild, tmp_path: Path) -> None:
    script = "echo hello > f && cat f && ls -a . && python3 -c 'import socket; socket.socket().close()'"
    env = dict(os.environ, LD_PRELOAD=str(build.library))
    result = subprocess.run(["sh", "-c", script], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=TIMEOUT)
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.split() == ["hello", ".", "..", "f"]


def test_liveness_probes_are_not_accepted_as_peers(
    build: ShimBuild, mirror: Path, enclave_server: subprocess.Popen[str]
) -> None:
    """A second listener on a live port probes it; the shim's accept must skip that probe."""
    from emulator.vsock.enclave import bind_listener

    with pytest.raises(OSError) as taken:
        bind_listener(str(mirror / "run" / str(CID) / "vsock"), 5000)
    assert taken.value.errno == errno.EADDRINUSE
    with vsock.connect(CID, 5000, timeout=TIMEOUT) as sock:
        own = parse_peer(sock.getsockname())
        sock.sendall(b"after-probe")
        seen = json.loads(sock.recv(1000))
    assert seen["peer"] == list(own) and seen["data"] == "after-probe"
