"""EIFs that AWS's own EifBuilder wrote, in nitro-cli's layout, run under nitro-emu (issue 12).

The customer ramdisk is written here the way nitro-cli's linuxkit writes it (nitro-facts §3.6):
``rootfs/`` = the base image's exported filesystem (hard links as relative symlinks, as
linuxkit makes them) + fake_nsm + a probe program, linuxkit's directories, ``cmd``, ``env``.
The crate builds the EIF and computes the PCRs; we check our describe-eif against them, run
the EIF, and verify the attestation document from inside against the test CA with the
crate's PCRs.
"""

from __future__ import annotations

import base64
import io
import json
import os
import posixpath
import stat
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import pytest

from emulator.eif.cpio import CpioWriter
from tests.conftest import _missing
from tests.integration.eif.aws_builder import (
    BuilderUnavailable,
    build_eif,
    describe_eif,
    ensure_builder,
    sign_existing,
)
from tests.integration.runtime_helpers import minimum_memory, wait_for_output
from tests.unit.eif.nitro_cli_ramdisks import LINUXKIT_MTIME, bootstrap_ramdisk, customer_ramdisk

pytestmark = [pytest.mark.docker, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[3]
CMDLINE = ("reboot=k panic=30 pci=off nomodules console=ttyS0 i8042.noaux i8042.nomux i8042.nopnp "
           "i8042.dumbkbd random.trust_cpu=on")
CMD = ["python3", "/app/probe.py", "two words", ""]
#: PATH points nowhere: init looks python3 up with its own PATH, so it must still start.
ENV = ["PATH=/nowhere", "PYTHONPATH=/opt/nitro-emu", "GREETING=hello world", "EMPTY="]
PROBE = r'''
import base64, json, os, sys
from fake_nsm.client import NsmClient
with NsmClient() as nsm:
    doc = nsm.get_attestation_doc(nonce=b"cli-nonce", user_data=b"nitro-cli layout")
# /proc/self/environ: the environment exec gave us, before Python's own locale coercion (PEP 538)
initial = open("/proc/self/environ", "rb").read().split(b"\0")[:-1]
print("PROBE " + json.dumps({
    "argv": sys.argv, "env": dict(line.decode().split("=", 1) for line in initial), "cwd": os.getcwd(), "uid": os.getuid(),
    "ppid": os.getppid(), "doc": base64.b64encode(doc).decode(),
}), flush=True)
import time
while True:
    time.sleep(1)
'''


@pytest.fixture(scope="session")
def aws_builder() -> Path:
    try:
        return ensure_builder()
    except BuilderUnavailable as error:
        _missing(str(error))
        raise


def _rootfs_cpio(docker_client: Any, base_image: str, out: Path, *, compress: bool) -> None:
    """The customer ramdisk: the base image's filesystem + fake_nsm + the probe, nitro-cli style."""
    container = docker_client.containers.create(base_image, entrypoint=["/none"], network_disabled=True)
    try:
        with tempfile.TemporaryFile() as spool:
            for chunk in container.export():
                spool.write(chunk)
            spool.seek(0)
            files: list[tuple[str, int, bytes, int, int, int]] = []
            with tarfile.open(fileobj=spool) as exported:
                for member in exported:
                    name = member.name.lstrip("./").rstrip("/")
                    if not name or name in (".dockerenv", "etc/hostname", "etc/hosts", "etc/resolv.conf"):
                        continue
                    if member.isdir():
                        mode, data = stat.S_IFDIR, b""
                    elif member.issym():
                        mode, data = stat.S_IFLNK, member.linkname.encode()
                    elif member.islnk():  # linuxkit: a hard link becomes a relative symlink
                        target = member.linkname.lstrip("./")
                        mode = stat.S_IFLNK
                        data = posixpath.relpath(target, posixpath.dirname(name) or ".").encode()
                    elif member.isreg():
                        stream = exported.extractfile(member)
                        mode, data = stat.S_IFREG, stream.read() if stream else b""
                    else:
                        continue  # docker export has no device nodes here
                    files.append((name, mode | member.mode, data, member.uid, member.gid, int(member.mtime)))
    finally:
        container.remove(force=True)
    staged = [("opt/nitro-emu", stat.S_IFDIR | 0o755, b""), ("opt/nitro-emu/fake_nsm", stat.S_IFDIR | 0o755, b""),
              ("app", stat.S_IFDIR | 0o755, b""), ("app/probe.py", stat.S_IFREG | 0o644, PROBE.encode())]
    staged += [(f"opt/nitro-emu/fake_nsm/{p.name}", stat.S_IFREG | 0o644, p.read_bytes())
               for p in sorted((ROOT / "fake_nsm").glob("*.py"))]
    buffer = io.BytesIO()
    writer = CpioWriter(buffer)
    writer.add("rootfs", stat.S_IFDIR | 0o755, mtime=LINUXKIT_MTIME)
    for name, mode, data, uid, gid, mtime in files:
        writer.add(f"rootfs/{name}", mode, data, uid=uid, gid=gid, mtime=mtime)
    for name, mode, data in staged:
        writer.add(f"rootfs/{name}", mode, data, mtime=LINUXKIT_MTIME)
    for name in ("dev", "run", "sys", "var", "proc", "tmp"):
        writer.add(f"rootfs/{name}", stat.S_IFDIR | 0o755, mtime=LINUXKIT_MTIME)
    writer.add("cmd", stat.S_IFREG | 0o644, "".join(f"{line}\n" for line in CMD).encode(), mtime=LINUXKIT_MTIME)
    writer.add("env", stat.S_IFREG | 0o644, "".join(f"{line}\n" for line in ENV).encode(), mtime=LINUXKIT_MTIME)
    writer.finish()
    data = buffer.getvalue()
    if compress:
        import gzip

        data = gzip.compress(data, mtime=0)
    out.write_bytes(data)


def _aws_eif(aws_builder: Path, directory: Path, customer: Path, name: str = "aws") -> tuple[Path, dict[str, str]]:
    kernel, cmdline, bootstrap = directory / "bzImage", directory / "cmdline", directory / "bootstrap.cpio"
    kernel.write_bytes(b"not a kernel: nitro-emu does not boot it\n" + bytes(range(256)) * 64)
    cmdline.write_text(CMDLINE)
    bootstrap.write_bytes(bootstrap_ramdisk())
    eif = directory / f"{name}.eif"
    return eif, build_eif(aws_builder, eif, kernel=kernel, cmdline=cmdline, ramdisks=[bootstrap, customer])


@pytest.fixture(scope="session")
def aws_eifs(aws_builder: Path, docker_client: Any, base_image: str,
             tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, dict[str, str]]]:
    """{"plain": (eif, crate PCRs), "gzip": ...}: the probe in nitro-cli's layout."""
    built = {}
    for variant, compress in (("plain", False), ("gzip", True)):
        directory = tmp_path_factory.mktemp(f"aws-eif-{variant}")
        customer = directory / "customer.cpio"
        _rootfs_cpio(docker_client, base_image, customer, compress=compress)
        built[variant] = _aws_eif(aws_builder, directory, customer)
    return built


def _probe(enclave_id: str) -> dict[str, Any]:
    text = wait_for_output(enclave_id, "PROBE ", timeout=90)
    line = next(line for line in text.splitlines() if line.startswith("PROBE "))
    result: dict[str, Any] = json.loads(line[len("PROBE "):])
    return result


@pytest.mark.parametrize("variant", ["plain", "gzip"])
def test_our_describe_eif_agrees_with_the_crates_pcrs(aws_eifs: dict[str, Any], variant: str) -> None:
    from emulator.eif.file import read_eif
    from emulator.eif.nitro_cli_layout import LAYOUT_NITRO_CLI, ramdisk_layout

    path, crate = aws_eifs[variant]
    eif = read_eif(path)
    assert eif.crc_ok
    ours = eif.measurements.to_nitro_cli_json()
    assert {key: ours[key] for key in ("PCR0", "PCR1", "PCR2")} == {key: crate[key] for key in ("PCR0", "PCR1", "PCR2")}
    assert ramdisk_layout(eif) == LAYOUT_NITRO_CLI


def test_a_nitro_cli_eif_runs_its_cmd_with_exactly_its_env_and_attests_its_pcrs(
    aws_eifs: dict[str, Any], nitro_home: Path, run_test_enclave: Any, docker_client: Any,
) -> None:
    from ca import TestCA
    from fake_nsm.verifier import verify_attestation_document

    path, crate = aws_eifs["plain"]
    with run_test_enclave(path, memory_mib=minimum_memory(path), cpu_count=2) as info:
        probe = _probe(info.enclave_id)
        container = docker_client.containers.get(info.container_id)
        host = container.attrs["HostConfig"]
        assert host["ReadonlyRootfs"] is True and host["NetworkMode"] == "none" and host["CapDrop"] == ["ALL"]
    assert probe["argv"] == ["/app/probe.py", "two words", ""]  # python's sys.argv drops "python3"
    assert probe["cwd"] == "/" and probe["uid"] == 0 and probe["ppid"] == 1
    own = {key: value for key, value in probe["env"].items() if key.startswith("NITRO_EMU_") or key == "LD_PRELOAD"}
    image_env = {key: value for key, value in probe["env"].items() if key not in own}
    assert image_env == dict(line.split("=", 1) for line in ENV)  # no HOSTNAME, HOME, Docker's PATH
    assert set(own) <= {"NITRO_EMU_CID", "NITRO_EMU_ENCLAVE_ID", "NITRO_EMU_NSM_SOCKET", "LD_PRELOAD"}
    assert own["NITRO_EMU_ENCLAVE_ID"] == info.enclave_id

    root = TestCA.load_or_create(nitro_home / "ca").root_certificate
    document = verify_attestation_document(
        base64.b64decode(probe["doc"]), trusted_roots=[root], nonce=b"cli-nonce", allow_debug=False,
    )
    assert document.user_data == b"nitro-cli layout"
    assert {i: document.pcrs[i].hex() for i in (0, 1, 2)} == {i: crate[f"PCR{i}"] for i in (0, 1, 2)}
    assert document.pcrs[8] == bytes(48)


def test_a_gzipd_nitro_cli_eif_in_debug_mode_via_the_cli(
    aws_eifs: dict[str, Any], nitro_home: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    from emulator.cli.app import main
    from emulator.cli.enclaves import NITRO_CLI_NOTE
    from emulator.enclave.runtime import terminate_all

    path, _ = aws_eifs["gzip"]
    try:
        status = main(["run-enclave", "--eif-path", str(path), "--memory", str(minimum_memory(path)),
                       "--cpu-count", "2", "--debug-mode"])
        out, err = capsys.readouterr()
        assert status == 0, err
        assert NITRO_CLI_NOTE in err.splitlines()
        probe = _probe(json.loads(out)["EnclaveID"])
    finally:
        terminate_all()
    assert probe["argv"][1:] == ["two words", ""] and probe["env"]["GREETING"] == "hello world"
    from fake_nsm.verifier import verify_attestation_document
    from ca import TestCA

    document = verify_attestation_document(
        base64.b64decode(probe["doc"]), trusted_roots=[TestCA.load_or_create(nitro_home / "ca").root_certificate],
        nonce=b"cli-nonce", allow_debug=True,
    )
    assert all(document.pcrs[i] == bytes(48) for i in (0, 1, 2))  # debug mode zeroes them, as on Nitro


@pytest.mark.parametrize(
    ("files", "match"),
    [
        ([("../../escape", 0o100644, b"x")], r"E35.*rootfs/\.\./\.\./escape.*'\.\.'"),
        ([("etc", 0o120777, b"/tmp"), ("etc/pwned", 0o100644, b"x")], r"E35.*rootfs/etc/pwned.*symlink"),
    ],
)
def test_a_hostile_aws_built_eif_is_refused_and_leaves_nothing(
    aws_builder: Path, tmp_path: Path, nitro_home: Path, docker_client: Any, files: Any, match: str,
) -> None:
    from emulator.eif.file import read_eif
    from emulator.eif.ramdisk import enclave_image_tag
    from emulator.enclave.runtime import run_enclave
    from emulator.errors import NitroCliError
    from emulator.engine.client import image_exists

    customer = tmp_path / "customer.cpio"
    customer.write_bytes(customer_ramdisk(files))
    path, _ = _aws_eif(aws_builder, tmp_path, customer, name="hostile")
    before = sorted(os.listdir(tempfile.gettempdir()))
    with pytest.raises(NitroCliError, match=match) as caught:
        run_enclave(path, memory_mib=64, cpu_count=1)
    assert caught.value.code == 35
    assert not image_exists(docker_client, enclave_image_tag(read_eif(path)))
    assert [name for name in sorted(os.listdir(tempfile.gettempdir())) if name not in before
            and name.startswith("nitro-emu-rootfs-")] == []


def _copy(source: Path, target: Path) -> Path:
    target.write_bytes(source.read_bytes())
    return target


def test_our_sign_eif_of_an_aws_built_eif_verifies_under_the_crate(
    aws_eifs: dict[str, Any], aws_builder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    from emulator.cli.app import main
    from tests.unit.eif.test_eif import make_signer

    cert, key = make_signer(tmp_path)
    path = _copy(aws_eifs["plain"][0], tmp_path / "signed.eif")
    crate_unsigned = describe_eif(aws_builder, path)
    assert main(["sign-eif", "--eif-path", str(path), "--signing-certificate", str(cert), "--private-key", str(key)]) == 0
    ours = json.loads(capsys.readouterr().out)["Measurements"]
    assert main(["pcr", "--signing-certificate", str(cert)]) == 0
    pcr8 = json.loads(capsys.readouterr().out)["PCR8"]
    crate = describe_eif(aws_builder, path)
    assert crate["IsSigned"] is True and crate["CheckCRC"] is True and crate["SignatureCheck"] is True
    assert crate["Measurements"] == ours and ours["PCR8"] == pcr8
    assert isinstance(crate_unsigned["Measurements"], dict)
    assert {k: ours[k] for k in ("PCR0", "PCR1", "PCR2")} == {
        k: crate_unsigned["Measurements"][k] for k in ("PCR0", "PCR1", "PCR2")
    }


def test_the_crates_sign_eif_and_resign_read_back_under_ours(
    aws_eifs: dict[str, Any], aws_builder: Path, tmp_path: Path,
) -> None:
    from emulator.eif.file import read_eif
    from emulator.eif.signing import pem_to_der
    from emulator.eif.measurements import pcr_of
    from tests.unit.eif.test_eif import make_signer

    path = _copy(aws_eifs["plain"][0], tmp_path / "crate-signed.eif")
    for name in ("first", "second-signer-with-a-longer-name"):  # the second replaces the first
        cert, key = make_signer(tmp_path, name=name)
        crate = sign_existing(aws_builder, path, cert, key)
        assert crate["SignatureCheck"] is True and crate["CheckCRC"] is True
        eif = read_eif(path)  # after re-signing, the crate leaves the header's signature size stale
        assert eif.crc_ok and eif.signature_ok is True
        assert eif.measurements.to_nitro_cli_json() == crate["Measurements"]
        assert eif.measurements.pcr8 == pcr_of(pem_to_der(cert.read_bytes()))


def test_a_signed_aws_built_eif_attests_its_pcr8(
    aws_eifs: dict[str, Any], nitro_home: Path, run_test_enclave: Any, tmp_path: Path,
) -> None:
    from ca import TestCA
    from emulator.eif.file import sign_eif_file
    from emulator.eif.signing import EifSigner
    from fake_nsm.verifier import verify_attestation_document
    from tests.unit.eif.test_eif import make_signer

    cert, key = make_signer(tmp_path)
    path = _copy(aws_eifs["plain"][0], tmp_path / "signed.eif")
    measurements = sign_eif_file(path, EifSigner.from_files(cert, key))
    assert measurements.pcr8 is not None
    with run_test_enclave(path, memory_mib=minimum_memory(path), cpu_count=2) as info:
        probe = _probe(info.enclave_id)
    root = TestCA.load_or_create(nitro_home / "ca").root_certificate
    document = verify_attestation_document(
        base64.b64decode(probe["doc"]), trusted_roots=[root], nonce=b"cli-nonce", allow_debug=False,
    )
    assert {i: document.pcrs[i] for i in (0, 1, 2, 8)} == measurements.pcrs()


def test_build_enclave_format_nitro_cli_runs_like_nitro_cli_and_the_crate_agrees(
    build_app_image: Any, build_app_eif: Any, docker_client: Any, aws_builder: Path, nitro_home: Path,
    run_test_enclave: Any, tmp_path: Path,
) -> None:
    from ca import TestCA
    from emulator.eif.file import read_eif
    from emulator.eif.nitro_cli_layout import LAYOUT_NITRO_CLI, ramdisk_layout
    from fake_nsm.verifier import verify_attestation_document

    image = build_app_image({"/app/probe.py": PROBE}, cmd=["python3", "/app/probe.py", "two words", ""])
    path, measurements = build_app_eif(image, tmp_path, name="nitro-cli-format", ramdisk_format="nitro-cli")
    eif = read_eif(path)
    assert ramdisk_layout(eif) == LAYOUT_NITRO_CLI and eif.measurements == measurements
    crate = describe_eif(aws_builder, path)
    assert crate["CheckCRC"] is True and crate["Measurements"] == measurements.to_nitro_cli_json()
    with run_test_enclave(path, memory_mib=minimum_memory(path), cpu_count=2) as info:
        probe = _probe(info.enclave_id)
    assert probe["argv"] == ["/app/probe.py", "two words", ""] and probe["cwd"] == "/"
    image_env = docker_client.images.get(image).attrs["Config"]["Env"]
    own = ("NITRO_EMU_", "LD_PRELOAD")
    assert sorted(f"{k}={v}" for k, v in probe["env"].items() if not k.startswith(own)) == sorted(image_env)
    root = TestCA.load_or_create(nitro_home / "ca").root_certificate
    document = verify_attestation_document(
        base64.b64decode(probe["doc"]), trusted_roots=[root], nonce=b"cli-nonce", allow_debug=False,
    )
    assert {i: document.pcrs[i] for i in (0, 1, 2)} == measurements.pcrs()


def test_names_and_links_past_ustar_land_where_the_cpio_put_them(docker_client: Any, tmp_path: Path) -> None:
    """The engine's tar reader, given our headers: a ustar prefix split, PAX path/linkpath/uid."""
    from emulator.eif.file import read_eif, write_eif
    from emulator.eif.nitro_cli_layout import load_nitro_cli_image
    from emulator.eif.ramdisk import EnclaveImageLoadError

    split = "a" * 90 + "/" + "b" * 60 + "/" + "c" * 80  # 232 bytes: prefix "a.../b...", name "c..."
    single = "d" * 200  # one component over 100 bytes: a PAX path
    target = "/" + "t" * 250 + "/x"  # a symlink target over 100 bytes: a PAX linkpath
    out = io.BytesIO()
    writer = CpioWriter(out)
    writer.add("rootfs", 0o040755)
    for directory in ("a" * 90, "a" * 90 + "/" + "b" * 60):
        writer.add(f"rootfs/{directory}", 0o040755, mtime=1700000000)
    writer.add(f"rootfs/{split}", 0o100640, b"split\n", uid=3_000_000, gid=7, mtime=1700000001)
    writer.add(f"rootfs/{single}", 0o100644, b"single\n", mtime=1700000002)
    writer.add("rootfs/far", 0o120777, target.encode(), mtime=1700000003)
    writer.add("cmd", 0o100644, b"/bin/true\n")
    writer.add("env", 0o100644, b"")
    writer.finish()
    path = tmp_path / "long.eif"
    write_eif(path, kernel=b"kernel", cmdline=CMDLINE.encode(), metadata=b"{}",
              ramdisks=[bootstrap_ramdisk(), out.getvalue()])
    tag = "nitro-emu-test/long-names:" + os.urandom(6).hex()
    load_nitro_cli_image(docker_client, read_eif(path), tag, {"org.nitro-emu.test": "long-names"},
                         error=EnclaveImageLoadError)
    container = docker_client.containers.create(tag, labels={"org.nitro-emu.test": "long-names"})
    try:
        for name, body, uid, mtime in ((split, b"split\n", 3_000_000, 1700000001),
                                       (single, b"single\n", 0, 1700000002)):
            chunks, found = container.get_archive(f"/{name}")  # from the container's filesystem
            with tarfile.open(fileobj=io.BytesIO(b"".join(chunks))) as archive:
                (member,) = archive.getmembers()
                assert archive.extractfile(member).read() == body  # type: ignore[union-attr]
            assert (member.uid, member.mtime) == (uid, mtime)
            assert found["name"] == posixpath.basename(name) and found["size"] == len(body)
        _, link = container.get_archive("/far")
        assert link["linkTarget"] == target and link["mode"] & (1 << 27)  # Go's os.ModeSymlink
    finally:
        container.remove(force=True)
        docker_client.images.remove(tag, force=True)
