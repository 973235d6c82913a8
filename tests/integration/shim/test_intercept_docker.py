"""The syscall interceptor in emulated enclaves (Docker), against the LD_PRELOAD shim.

- One conformance suite (``programs/probe.c conform``) runs through each mechanism: the shim
  alone (a dynamically linked build, ``docker exec``'d: outside PID 1's filter), the
  interceptor alone (the static musl build, and the dynamic build without ``LD_PRELOAD``), and
  both at once (the dynamic build under PID 1's filter with the shim preloaded: every call
  must be handled exactly once). All must give the same answers, and the expected ones.
- Programs we did not write the libc of: a static C binary making raw ``syscall(2)`` calls in
  a ``FROM scratch`` image, and a Go program (``syscall`` and ``golang.org/x/sys/unix``,
  CGO_ENABLED=0). Each serves its attestation document over AF_VSOCK to the host, where it
  verifies with build-enclave's PCRs.
- Faults: a program killed in the middle of an NSM ioctl, thousands of opens and sockets in a
  loop (the handler's fd count is back where it was), the program's other calls unaffected.

Commands run under PID 1's filter through a small agent in the enclave (``AGENT``): a
``docker exec``'d process is not a descendant of the enclave's PID 1.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import socket
import struct
import tarfile
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from emulator import vsock
from emulator.shim.intercept import ENCLAVE_LAUNCHER
from tests.integration.runtime_helpers import wait_for_output
from tests.integration.shim import toolchains

pytestmark = [pytest.mark.docker, pytest.mark.timeout(900)]


@pytest.fixture(scope="module", autouse=True)
def _kernel_has_the_features(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The engine's kernel is this one (a local engine): skip where it lacks the features."""
    from emulator.settings import Settings
    from emulator.shim.intercept import check_kernel, ensure_interceptor

    found = check_kernel(ensure_interceptor(Settings(home=tmp_path_factory.mktemp("kcheck"))))
    if not found.available:
        pytest.skip(f"this kernel cannot run the syscall interceptor: {found.detail}")

AGENT_PORT = 7000
PARENT_PORT = 8100

AGENT = r'''
import json, os, signal, socket, subprocess, time

def handler_fds():
    return len(os.listdir("/proc/1/fd"))

server = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
server.bind((socket.VMADDR_CID_ANY, 7000))
server.listen(8)
print("AGENT", open("/proc/1/cmdline", "rb").read().split(b"\0")[0].decode(), flush=True)
while True:
    conn, _ = server.accept()
    with conn:
        data = b""
        while not data.endswith(b"\n"):
            chunk = conn.recv(65536)
            if not chunk:
                break
            data += chunk
        request = json.loads(data)
        env = dict(os.environ)
        env.update(request.get("env", {}))
        before = handler_fds()
        child = subprocess.Popen(request["argv"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        if request.get("kill_after_line"):
            first = child.stdout.readline()
            time.sleep(request.get("kill_delay", 0.5))
            child.kill()
            out, err = child.communicate()
            out = first + out
        else:
            out, err = child.communicate(timeout=request.get("timeout", 300))
        time.sleep(request.get("settle", 0))
        reply = {"rc": child.returncode, "out": out.decode(errors="replace"), "err": err.decode(errors="replace"),
                 "fds_before": before, "fds_after": handler_fds(),
                 "handler_fd_targets": sorted(os.readlink("/proc/1/fd/" + n) for n in os.listdir("/proc/1/fd"))}
        conn.sendall(json.dumps(reply).encode())
'''

#: The answers of ``probe conform`` (errno values are Linux x86-64's), the same through the
#: shim and through the interceptor. docs/shim.md lists the fidelity of each.
EXPECTED: dict[str, str] = {
    "open": "ok", "fstat_chr": "1", "describe": "ok", "describe_module_id": "1", "truncated_len": "8",
    "too_long": f"errno:{errno.EMSGSIZE}", "null_arg": f"errno:{errno.EFAULT}",
    "null_request": f"errno:{errno.EFAULT}", "read": "0", "dup_after_close": "ok", "fdupfd": "ok",
    "closed": f"errno:{errno.EBADF}",
    "socket_dgram": f"errno:{errno.ESOCKTNOSUPPORT}", "socket_protocol": f"errno:{errno.EPROTONOSUPPORT}",
    "socket": "ok", "sockname_unbound": "ANY:ANY", "peername_unbound": f"errno:{errno.ENOTCONN}",
    "listen_unbound": f"errno:{errno.EINVAL}", "bind_other_cid": f"errno:{errno.EADDRNOTAVAIL}",
    "bind_short": f"errno:{errno.EINVAL}", "bind_family": f"errno:{errno.EAFNOSUPPORT}", "bind": "ok",
    "bind_again": f"errno:{errno.EINVAL}", "sockname_bound": "ANY:6000", "listen": "ok",
    "bind_in_use": f"errno:{errno.EADDRINUSE}", "connect": "ok", "connect_again": f"errno:{errno.EISCONN}",
    "client_sockname": "OWN:eph", "client_peername": "OWN:6000", "accept": "ok", "accept_peer": "OWN:eph",
    "accept_len": "16", "accept_peer_is_client": "1", "accepted_sockname": "OWN:6000",
    "accepted_peername": "OWN:eph", "send": "4", "recv": "4", "data": "ping", "eof_after_close": "0",
    "connect_on_listener": f"errno:{errno.EINVAL}", "connect_unknown_cid": f"errno:{errno.ENODEV}",
    "connect_refused": f"errno:{errno.ECONNREFUSED}", "connect_port_any": f"errno:{errno.EINVAL}",
    "accept_not_listening": f"errno:{errno.EINVAL}", "parent_connect": "ok", "parent_send": "7",
    "parent_peername": f"3:{PARENT_PORT}", "bind_any_port": "ok", "bind_any_port_name": "ANY:eph",
    "sockname_short_buffer": "ok", "sockname_short_len": "16", "sockname_short_family": "40",
    "sockname_short_port_untouched": "1", "accept_nonblocking_empty": f"errno:{errno.EAGAIN}",
    "connect_local_cid": "ok", "accept_nonblocking": "ok", "accepted_nonblocking_flag": "1",
    "connect_after_listener_closed": f"errno:{errno.ECONNREFUSED}", "done": "1",
}


def _image(docker_client: Any, name: str, files: Mapping[str, bytes], cmd: list[str], base: str = "scratch") -> str:
    """A local image with executable ``files`` (path -> bytes), tagged by its content."""
    import hashlib

    lines = [f"FROM {base}"]
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for index, (path, data) in enumerate(sorted(files.items())):
            info = tarfile.TarInfo(f"f{index}")
            info.size, info.mode, info.mtime = len(data), 0o755, 0
            archive.addfile(info, io.BytesIO(data))
            lines.append(f"COPY f{index} {path}")
        lines.append(f"CMD {json.dumps(cmd)}")
        dockerfile = ("\n".join(lines) + "\n").encode()
        info = tarfile.TarInfo("Dockerfile")
        info.size, info.mtime = len(dockerfile), 0
        archive.addfile(info, io.BytesIO(dockerfile))
    context = buffer.getvalue()
    tag = f"nitro-emu-test/intercept-{name}:{hashlib.sha256(context).hexdigest()[:20]}"
    with contextlib.suppress(Exception):
        docker_client.images.get(tag)
        return tag
    docker_client.images.build(fileobj=io.BytesIO(context), custom_context=True, tag=tag, rm=True, forcerm=True)
    return tag


@contextlib.contextmanager
def _private_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    home = tmp_path_factory.mktemp("ihome")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NITRO_EMU_HOME", str(home))
        patch.delenv("NITRO_EMU_INTERCEPT", raising=False)
        patch.delenv("NITRO_EMU_SHIM", raising=False)
        yield home


def _container(enclave_id: str) -> Any:
    import docker

    client = docker.from_env()
    (container,) = client.containers.list(filters={"label": f"org.nitro-emu.enclave-id={enclave_id}"})
    return container


@pytest.fixture(scope="module")
def agent_enclave(docker_client: Any, base_image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """An enclave (bookworm: the shim preloaded, the interceptor as PID 1) with the agent."""
    from emulator.eif import build_eif
    from emulator.enclave.runtime import running_enclave

    dynamic = toolchains.c_probe(static=False).read_bytes()
    static = toolchains.c_probe(static=True).read_bytes()
    image = _image(docker_client, "agent", {"/app/agent.py": AGENT.encode(), "/app/probe": dynamic,
                                            "/app/probe-static": static},
                   ["python3", "-u", "/app/agent.py"], base=base_image)
    with _private_home(tmp_path_factory) as home:
        eif = home / "agent.eif"
        build_eif(docker_client, image, eif)
        with running_enclave(eif, memory_mib=1024, cpu_count=1) as enclave:
            output = wait_for_output(enclave.enclave_id, "AGENT", timeout=120)
            assert f"AGENT {ENCLAVE_LAUNCHER}" in output, output  # the interceptor is PID 1
            yield enclave


def _agent(enclave: Any, argv: list[str], **options: Any) -> dict[str, Any]:
    with vsock.connect(enclave.cid, AGENT_PORT, timeout=300) as sock:
        sock.sendall(json.dumps({"argv": argv, **options}).encode() + b"\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return dict(json.loads(data))


def _results(out: str) -> dict[str, str]:
    results = {}
    for line in out.splitlines():
        if line.startswith("{"):
            item = json.loads(line)
            results[item["k"]] = item["v"]
    return results


@contextlib.contextmanager
def _parent_listener() -> Iterator[list[bytes]]:
    """The parent's VSOCK server on PARENT_PORT; yields what each connection sent."""
    received: list[bytes] = []
    with vsock.listen(PARENT_PORT) as server:
        server.settimeout(0.5)
        stop = threading.Event()

        def serve() -> None:
            while not stop.is_set():
                try:
                    conn, _ = server.accept()
                except OSError:
                    continue
                with conn:
                    conn.settimeout(10)
                    received.append(conn.recv(100))

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        try:
            yield received
        finally:
            stop.set()
            thread.join(5)


MECHANISMS = ("shim", "interceptor", "interceptor-dynamic", "both")


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_conformance(agent_enclave: Any, mechanism: str) -> None:
    """The same calls give the same answers through each mechanism (docs/shim.md)."""
    argv = ["/app/probe", "conform", str(PARENT_PORT)]
    with _parent_listener() as received:
        if mechanism == "shim":  # docker exec: not under PID 1's filter; LD_PRELOAD from the env
            code, out = _container(agent_enclave.enclave_id).exec_run(argv)
            text = out.decode()
            assert code == 0, text
        else:
            env = {"LD_PRELOAD": ""} if mechanism == "interceptor-dynamic" else {}
            if mechanism == "interceptor":
                argv[0] = "/app/probe-static"
            reply = _agent(agent_enclave, argv, env=env)
            assert reply["rc"] == 0, reply
            text = reply["out"]
        results = _results(text)
        deadline = time.monotonic() + 10
        while not received and time.monotonic() < deadline:
            time.sleep(0.1)
    differences = {key: (results.get(key), want) for key, want in EXPECTED.items() if results.get(key) != want}
    assert not differences, f"{mechanism}: (got, expected) {differences}\n{text[-3000:]}"
    assert received == [b"conform"]


def test_other_calls_are_unaffected(agent_enclave: Any) -> None:
    """openat, ioctl, AF_INET and AF_UNIX calls answer the same with and without the filter."""
    argv = ["/app/probe-static", "other"]
    code, out = _container(agent_enclave.enclave_id).exec_run(argv)
    assert code == 0, out
    without = _results(out.decode())
    reply = _agent(agent_enclave, argv)
    assert reply["rc"] == 0, reply
    assert _results(reply["out"]) == without
    assert without["ioctl_nsm_number_on_a_file"] == f"errno:{errno.ENOTTY}"
    assert without["inet_connect"] == "ok" and without["unix_family"] == str(socket.AF_UNIX)


def test_thousands_of_opens_and_sockets_leak_nothing(agent_enclave: Any) -> None:
    reply = _agent(agent_enclave, ["/app/probe-static", "stress", "3000"], settle=1.5)
    assert reply["rc"] == 0 and "STRESS 3000 failures 0" in reply["out"], reply
    assert reply["fds_after"] == reply["fds_before"], reply["handler_fd_targets"]


def test_killed_in_the_middle_of_an_ioctl(agent_enclave: Any) -> None:
    """SIGKILL while the handler waits on a (delayed) NSM answer: nothing stuck, nothing kept."""
    from emulator.enclave.faults import nsm_fault_control
    from emulator.settings import get_settings

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NITRO_EMU_HOME", str(Path(agent_enclave.eif_path).parent))
        faults = nsm_fault_control(get_settings(), agent_enclave.enclave_id)
        faults.add("DescribeNSM", delay=2.0, count=1)
        started = time.monotonic()
        reply = _agent(agent_enclave, ["/app/probe-static", "hold"], kill_after_line=True, kill_delay=0.5,
                       settle=3.0)
    assert reply["rc"] == -9 and reply["out"].startswith("HOLD"), reply
    assert time.monotonic() - started < 20
    assert reply["fds_after"] == reply["fds_before"], reply["handler_fd_targets"]
    after = _agent(agent_enclave, ["/app/probe-static", "conform", str(PARENT_PORT)])
    assert _results(after["out"])["describe"] == "ok", after


def _fetch(cid: int, port: int) -> bytes:
    """What the enclave's server sends: a 4-byte big-endian length and that many bytes."""
    deadline = time.monotonic() + 60
    while True:
        try:
            with vsock.connect(cid, port, timeout=30) as sock:
                data = b""
                while chunk := sock.recv(65536):
                    data += chunk
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    (size,) = struct.unpack(">I", data[:4])
    assert len(data) == 4 + size
    return data[4:]


def _attested_over_vsock(docker_client: Any, tmp_path_factory: pytest.TempPathFactory, name: str,
                         binary: Path, argv: list[str], port: int, user: bytes, nonce: bytes,
                         *, raw_document: bool = False, ramdisk_format: str = "nitro-emu") -> None:
    """Run ``binary`` alone in a FROM-scratch enclave; the document it serves on ``port``
    (the NSM's CBOR reply, or with ``raw_document`` the COSE document itself) verifies."""
    import cbor2

    from ca import TestCA
    from emulator.eif import build_eif
    from emulator.enclave.runtime import enclave_logs, running_enclave
    from emulator.settings import get_settings
    from fake_nsm.verifier import verify_attestation_document

    image = _image(docker_client, name, {"/program": binary.read_bytes()}, ["/program", *argv])
    with _private_home(tmp_path_factory) as home:
        eif = home / f"{name}.eif"
        measurements = build_eif(docker_client, image, eif, ramdisk_format=ramdisk_format)
        with running_enclave(eif, memory_mib=256, cpu_count=1) as enclave:
            wait_for_output(enclave.enclave_id, "LISTENING", timeout=120)
            entrypoint = _container(enclave.enclave_id).attrs["Config"]["Entrypoint"]
            if ramdisk_format == "nitro-cli":  # init is PID 1 and serves the calls itself
                assert entrypoint[0].endswith("/nitro-emu-init") and ENCLAVE_LAUNCHER not in entrypoint
            else:
                assert entrypoint[:2] == [ENCLAVE_LAUNCHER, "--"]
            payload = _fetch(enclave.cid, port)
            cose = payload if raw_document else cbor2.loads(payload)["Attestation"]["document"]
            root = TestCA.load_or_create(get_settings().ca_dir).root_certificate
            document = verify_attestation_document(
                cose, trusted_roots=[root], expected_pcrs=measurements.pcrs(),
                nonce=nonce,
            )
            assert document.user_data == user
            output = wait_for_output(enclave.enclave_id, "SERVED", timeout=30)
            served = next(line for line in output.splitlines() if line.startswith("SERVED"))
            assert served.split()[1].split(":")[0] == "3", output  # the host is the parent, CID 3
            assert "without the syscall interceptor" not in enclave_logs(enclave.enclave_id)


def test_static_binary_with_raw_syscalls_in_a_scratch_image(
    docker_client: Any, tmp_path_factory: pytest.TempPathFactory
) -> None:
    binary = toolchains.c_probe(static=True)
    _attested_over_vsock(docker_client, tmp_path_factory, "static", binary,
                         ["attest", "5005", "static-user", "static-nonce"], 5005, b"static-user", b"static-nonce")


def test_static_binary_in_a_nitro_cli_eif_is_served_by_init(
    docker_client: Any, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """nitro-cli's layout: nitro-emu's init is PID 1 and serves the interceptor itself."""
    binary = toolchains.c_probe(static=True)
    _attested_over_vsock(docker_client, tmp_path_factory, "static", binary,
                         ["attest", "5005", "cli-user", "cli-nonce"], 5005, b"cli-user", b"cli-nonce",
                         ramdisk_format="nitro-cli")


def test_go_program_syscall_and_x_sys_unix(docker_client: Any, tmp_path_factory: pytest.TempPathFactory) -> None:
    binary = toolchains.go_attest()
    _attested_over_vsock(docker_client, tmp_path_factory, "go", binary, ["5006", "go-user", "go-nonce"], 5006, b"go-user", b"go-nonce")


def test_rust_program_on_aws_nsm_api_crate(docker_client: Any, tmp_path_factory: pytest.TempPathFactory) -> None:
    binary = toolchains.rust_attest()
    _attested_over_vsock(docker_client, tmp_path_factory, "rust", binary, ["5007", "rust-user", "rust-nonce"], 5007,
                         b"rust-user", b"rust-nonce", raw_document=True)


def test_interceptor_off_by_switch(docker_client: Any, tmp_path_factory: pytest.TempPathFactory) -> None:
    """NITRO_EMU_INTERCEPT=0: the static program sees no /dev/nsm (no launcher, no node)."""
    from emulator.eif import build_eif
    from emulator.enclave.runtime import enclave_logs, running_enclave

    binary = toolchains.c_probe(static=True)
    image = _image(docker_client, "static", {"/program": binary.read_bytes()},
                   ["/program", "attest", "5005", "static-user", "static-nonce"])
    with _private_home(tmp_path_factory) as home:
        eif = home / "off.eif"
        build_eif(docker_client, image, eif)
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("NITRO_EMU_INTERCEPT", "0")
            with running_enclave(eif, memory_mib=256, cpu_count=1) as enclave:
                deadline = time.monotonic() + 60
                while "OPEN-FAILED" not in enclave_logs(enclave.enclave_id) and time.monotonic() < deadline:
                    time.sleep(0.2)
                assert f"OPEN-FAILED {errno.ENOENT}" in enclave_logs(enclave.enclave_id)
