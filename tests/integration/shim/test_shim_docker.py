"""Unmodified enclave code in an emulated enclave (Docker), through the LD_PRELOAD shim.

One enclave image holds the unmodified PyPI package ``aws-nsm-interface-verifiably`` (its
wheel and ``ioctl-opt`` downloaded on the host with pip, copied into dist-packages: the
enclave has no network), a plain ``socket.AF_VSOCK`` server and client, and a C program
compiled on the host that does the NSM ioctl itself.
"""

from __future__ import annotations

import base64
import errno
import json
import os
import re
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from emulator import vsock
from tests.integration.conftest import wait_for_output
from tests.unit.shim.test_shim import PROBE_SOURCE

pytestmark = [pytest.mark.docker, pytest.mark.timeout(600)]

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
WHEELS = ("aws-nsm-interface-verifiably==1.0.1", "ioctl-opt==1.3.1")
SITE = "/usr/lib/python3/dist-packages"
#: The base image is Debian bookworm: glibc 2.36. A host binary built against a newer glibc
#: may not run there.
IMAGE_GLIBC = (2, 36)

ENCLAVE_APP = r'''
import base64, json, os, socket, subprocess, threading
import aws_nsm_interface_verifiably as nsm  # unmodified, from PyPI

def report(tag, value):
    print(tag + " " + json.dumps(value), flush=True)

handle = nsm.open_nsm_device()
document = nsm.get_attestation_doc(handle, user_data=b"shim-user", nonce=b"shim-nonce")["document"]
random = nsm.get_random(handle, 64)
pcr0 = nsm.describe_pcr(handle, 0)
nsm.close_nsm_device(handle)
report("NSM", {"document": base64.b64encode(document).decode(), "random": len(random),
               "pcr0": pcr0["data"].hex(), "pcr0_locked": pcr0["lock"]})

# the image's files are 0644 and /tmp is noexec: start the probe through the dynamic loader
loader = open("/app/nsm_probe.interp").read()
probe = subprocess.run([loader, "/app/nsm_probe", "ioctl", "6b44657363726962654e534d"],
                       capture_output=True, text=True)
report("CPROBE", {"rc": probe.returncode, "out": probe.stdout, "err": probe.stderr})

server = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
server.bind((socket.VMADDR_CID_ANY, 5000))
server.listen()

def serve():
    conn, peer = server.accept()
    data = conn.recv(100)
    conn.sendall(json.dumps({"peer": peer, "data": data.decode()}).encode())
    conn.close()

threading.Thread(target=serve, daemon=True).start()
client = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
client.connect((3, 8000))
client.sendall(json.dumps({"sockname": client.getsockname(), "peername": client.getpeername()}).encode())
client.close()
report("LISTENING", {"port": 5000})
threading.Event().wait()
'''


def _missing(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: this must be present in CI)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def package_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """The pure-Python packages, {path in the image: bytes}, from wheels pip downloads here."""
    directory = tmp_path_factory.mktemp("wheels")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
         "--disable-pip-version-check", "-d", str(directory), *WHEELS],
        capture_output=True, text=True, timeout=300,
    )
    if result.returncode != 0:
        _missing(f"pip could not download {WHEELS} from PyPI: {result.stderr.strip()[-300:]}")
    files: dict[str, bytes] = {}
    for wheel in sorted(directory.glob("*.whl")):
        with zipfile.ZipFile(wheel) as archive:
            for name in archive.namelist():
                if name.endswith(".py"):
                    files[f"{SITE}/{name}"] = archive.read(name)
    return files


@pytest.fixture(scope="module")
def nsm_probe(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The C ioctl client, dynamically linked against the host glibc (== the image's)."""
    version = os.confstr("CS_GNU_LIBC_VERSION") or ""
    parts = version.split()[-1].split(".") if version.startswith("glibc") else []
    if len(parts) < 2 or tuple(int(p) for p in parts[:2]) > IMAGE_GLIBC:
        pytest.skip(f"host {version or 'libc'} is newer than the enclave image's glibc 2.36")
    directory = tmp_path_factory.mktemp("cprobe")
    (directory / "probe.c").write_text(PROBE_SOURCE)
    subprocess.run(["cc", "-O1", "-o", str(directory / "probe"), str(directory / "probe.c")],
                   check=True, capture_output=True, timeout=60)
    return (directory / "probe").read_bytes()


@pytest.fixture(scope="module")
def shim_eif(build_app_image: Callable[..., str], build_app_eif: Callable[..., Any],
             package_files: dict[str, bytes], nsm_probe: bytes,
             tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    interpreter = re.search(rb"/lib[^\0]*/ld-linux[^\0]*\.so\.\d", nsm_probe)
    assert interpreter is not None, "the probe is not a dynamically linked glibc program"
    files: dict[str, str | bytes] = {"/app/main.py": ENCLAVE_APP, "/app/nsm_probe": nsm_probe,
                                     "/app/nsm_probe.interp": interpreter.group()}
    files.update(package_files)
    image = build_app_image(files, cmd=["python3", "-u", "/app/main.py"], include_fake_nsm=False)
    return build_app_eif(image, tmp_path_factory.mktemp("shimeif"), name="shim")  # type: ignore[no-any-return]


def _report(text: str, tag: str) -> Any:
    for line in text.splitlines():
        if line.startswith(tag + " "):
            return json.loads(line[len(tag) + 1 :])
    raise AssertionError(f"no {tag} line in the enclave output:\n{text[-2000:]}")


def test_unmodified_enclave_code_through_the_shim(
    nitro_home: Path, shim_eif: tuple[Path, Any], run_test_enclave: Callable[..., Any]
) -> None:
    from ca import TestCA
    from emulator.settings import get_settings
    from fake_nsm.verifier import verify_attestation_document

    eif, measurements = shim_eif
    with vsock.listen(8000) as parent_server:
        parent_server.settimeout(60)
        with run_test_enclave(eif, memory_mib=1024, cpu_count=1) as enclave:
            # an unmodified enclave client connecting to (3, 8000) reaches the parent's server
            try:
                conn, peer = parent_server.accept()
            except OSError as error:
                from emulator.enclave.runtime import enclave_logs

                raise AssertionError(f"no connection from the enclave ({error}); its output:\n"
                                     f"{enclave_logs(enclave.enclave_id)[-3000:]}") from error
            with conn:
                hello = json.loads(conn.recv(1000))
            assert peer[0] == enclave.cid
            assert hello == {"sockname": list(peer), "peername": [3, 8000]}

            output = wait_for_output(enclave.enclave_id, "LISTENING", timeout=120)

            # aws-nsm-interface-verifiably's attestation document verifies, with build-enclave's PCRs
            facts = _report(output, "NSM")
            root = TestCA.load_or_create(get_settings().ca_dir).root_certificate
            document = verify_attestation_document(
                base64.b64decode(facts["document"]), trusted_roots=[root],
                expected_pcrs=measurements.pcrs(), nonce=b"shim-nonce",
            )
            assert document.user_data == b"shim-user"
            assert facts["pcr0"] == measurements.pcr0.hex() and facts["pcr0_locked"] is True
            assert facts["random"] == 64

            # the C program's own ioctl
            probe = _report(output, "CPROBE")
            assert probe["rc"] == 0, probe
            reply = json.loads(probe["out"])
            assert reply["errno"] == 0
            import cbor2

            assert cbor2.loads(bytes.fromhex(reply["reply"]))["DescribeNSM"]["module_id"] == document.module_id

            # the unmodified AF_VSOCK server bound to (VMADDR_CID_ANY, 5000) answers the host
            with vsock.connect(enclave.cid, 5000, timeout=60) as sock:
                sock.sendall(b"from-the-host")
                answer = json.loads(sock.recv(1000))
            assert answer["data"] == "from-the-host" and answer["peer"][0] == 3

            _injected_faults_through_the_shim(enclave)


def _injected_faults_through_the_shim(enclave: Any) -> None:
    """The C program's ioctl under injected NSM faults (issue 15): an error code is the
    ioctl's answer, as the NSM's own errors are; a dropped answer is EIO."""
    import docker

    from emulator.enclave.faults import nsm_fault_control
    from emulator.settings import get_settings

    client = docker.from_env()
    try:
        (container,) = client.containers.list(filters={"label": f"org.nitro-emu.enclave-id={enclave.enclave_id}"})

        def probe() -> dict[str, Any]:
            # exec'd processes get the container's environment: LD_PRELOAD names the shim
            command = "exec $(cat /app/nsm_probe.interp) /app/nsm_probe ioctl 6b44657363726962654e534d"
            code, out = container.exec_run(["sh", "-c", command])
            assert code == 0, out
            return dict(json.loads(out))

        faults = nsm_fault_control(get_settings(), enclave.enclave_id)
        faults.add("DescribeNSM", error="InternalError", count=1)
        import cbor2

        answer = probe()
        assert answer["errno"] == 0 and cbor2.loads(bytes.fromhex(answer["reply"])) == {"Error": "InternalError"}
        faults.add("DescribeNSM", drop=True, count=1)
        assert probe()["errno"] == errno.EIO
        assert "DescribeNSM" in cbor2.loads(bytes.fromhex(probe()["reply"]))  # served again
    finally:
        client.close()


MUSL_LOADER = Path("/lib/ld-musl-x86_64.so.1")


@pytest.fixture(scope="module")
def musl_eif(docker_client: Any, build_app_eif: Callable[..., Any],
             tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    """An Alpine-style image: nothing but musl's loader and a musl-linked C ioctl client."""
    import io
    import shutil
    import tarfile

    if shutil.which("musl-gcc") is None or not MUSL_LOADER.exists():
        pytest.skip("musl-gcc (Debian's musl-tools) is not installed")
    directory = tmp_path_factory.mktemp("muslprobe")
    (directory / "probe.c").write_text(PROBE_SOURCE)
    subprocess.run(["musl-gcc", "-O1", "-o", str(directory / "probe"), str(directory / "probe.c")],
                   check=True, capture_output=True, timeout=60)
    command = ["/app/probe", "ioctl", "6b44657363726962654e534d", "12288", "hold"]
    dockerfile = ("FROM scratch\nCOPY ld-musl-x86_64.so.1 /lib/\nCOPY probe /app/probe\n"
                  f"CMD {json.dumps(command)}\n").encode()
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as archive:
        for name, data, mode in (("Dockerfile", dockerfile, 0o644),
                                 ("ld-musl-x86_64.so.1", MUSL_LOADER.resolve().read_bytes(), 0o755),
                                 ("probe", (directory / "probe").read_bytes(), 0o755)):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            archive.addfile(info, io.BytesIO(data))
    context.seek(0)
    tag = "nitro-emu-test/shim-musl:latest"
    docker_client.images.build(fileobj=context, custom_context=True, tag=tag, rm=True, forcerm=True)
    return build_app_eif(tag, tmp_path_factory.mktemp("musleif"), name="musl")  # type: ignore[no-any-return]


def test_musl_program_in_a_musl_image(
    nitro_home: Path, musl_eif: tuple[Path, Any], run_test_enclave: Callable[..., Any]
) -> None:
    import cbor2

    eif, _ = musl_eif
    with run_test_enclave(eif, memory_mib=256, cpu_count=1) as enclave:
        output = wait_for_output(enclave.enclave_id, '{"errno"', timeout=60)
    line = next(line for line in output.splitlines() if line.startswith('{"errno"'))
    reply = json.loads(line)
    assert reply["errno"] == 0, output
    described = cbor2.loads(bytes.fromhex(reply["reply"]))["DescribeNSM"]
    assert described["module_id"].startswith("i-") and described["max_pcrs"] == 32
