"""EIF v4 files: layout byte by byte, CRC, PCRs, corrupt input, signing, and the CLI JSON."""

from __future__ import annotations

import gc
import hashlib
import io
import json
import re
import struct
import tarfile
import threading
import zlib
from datetime import datetime, timedelta, timezone
from pathlib import Path

import cbor2
import docker.errors
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from emulator.eif.boot_blobs import boot_blobs
from emulator.cli.app import main
from emulator.eif.file import EifFileError, read_eif, write_eif
from emulator.eif.format import EifFormatError, SectionType, crc32_combine
from emulator.eif.measurements import PcrHasher, ThreadedPcrHasher
from emulator.eif.signing import EifSigner, SigningError, pcr_info_payload
from emulator.eif.ramdisk import CONFIG_MEMBER, load_enclave_image, read_ramdisk_config, write_canonical_archive

KERNEL, CMDLINE, METADATA = b"K" * 1000, b"console=ttyS0", b'{"ImageName":"x"}'
BOOT, APP = b"boot-ramdisk" * 50, bytes(range(256)) * 40


def pcr(*parts: bytes) -> bytes:
    """nitro-facts §3.2, written independently of emulator.eif.measurements."""
    return hashlib.sha384(bytes(48) + hashlib.sha384(b"".join(parts)).digest()).digest()


def make_signer(tmp_path: Path, curve: ec.EllipticCurve = ec.SECP384R1(), name: str = "signer") -> tuple[Path, Path]:
    key = ec.generate_private_key(curve)
    subject = x509.Name(
        [x509.NameAttribute(NameOID.COUNTRY_NAME, "US"), x509.NameAttribute(NameOID.COMMON_NAME, name)]
    )
    now = datetime(2026, 1, 5, 3, 4, 5, tzinfo=timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(7)
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=30))
        .sign(key, hashes.SHA384())
    )
    cert_path, key_path = tmp_path / f"{name}.pem", tmp_path / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


def write_sample(path: Path, signer: EifSigner | None = None, ramdisks: tuple = (BOOT, APP)) -> None:
    write_eif(path, kernel=KERNEL, cmdline=CMDLINE, metadata=METADATA, ramdisks=ramdisks, signer=signer)


def test_header_and_sections_byte_by_byte(tmp_path: Path) -> None:
    path = tmp_path / "a.eif"
    write_sample(path)
    data = path.read_bytes()
    assert data[0:4] == b".eif"
    version, flags, memory, cpus, reserved, count = struct.unpack_from(">HHQQHH", data, 4)
    assert (version, flags, memory, cpus, reserved, count) == (4, 0, 1 << 30, 2, 0, 5)
    offsets = struct.unpack_from(">32Q", data, 28)
    sizes = struct.unpack_from(">32Q", data, 284)
    unused, crc = struct.unpack_from(">II", data, 540)
    assert unused == 0 and offsets[5:] == (0,) * 27 and sizes[5:] == (0,) * 27
    expected = [(SectionType.KERNEL, KERNEL), (SectionType.CMDLINE, CMDLINE),
                (SectionType.METADATA, METADATA), (SectionType.RAMDISK, BOOT), (SectionType.RAMDISK, APP)]
    position = 548
    for index, (kind, content) in enumerate(expected):
        assert offsets[index] == position and sizes[index] == len(content)
        assert struct.unpack_from(">HHQ", data, position) == (kind, 0, len(content))
        assert data[position + 12 : position + 12 + len(content)] == content
        position += 12 + len(content)
    assert position == len(data)
    assert crc == zlib.crc32(data[:544] + data[548:])


def test_read_round_trip_computes_aws_pcrs(tmp_path: Path) -> None:
    path = tmp_path / "a.eif"
    write_eif(path, kernel=KERNEL, cmdline=CMDLINE, metadata=METADATA,
              ramdisks=(BOOT, lambda out: out.write(APP), b"third"))
    eif = read_eif(path)
    assert eif.crc_ok and not eif.is_signed and eif.signature_ok is None
    assert eif.metadata == {"ImageName": "x"} and eif.cmdline == CMDLINE
    assert eif.measurements.pcr0 == pcr(KERNEL, CMDLINE, BOOT, APP, b"third")
    assert eif.measurements.pcr1 == pcr(KERNEL, CMDLINE, BOOT)
    assert eif.measurements.pcr2 == pcr(APP, b"third")
    assert eif.measurements.pcr8 is None
    assert [s.size for s in eif.ramdisks] == [len(BOOT), len(APP), 5]
    assert b"".join(eif.iter_section(eif.ramdisks[1], 10, chunk=7)) == APP[10:]


def test_app_pcr_without_app_ramdisk_is_the_empty_measurement(tmp_path: Path) -> None:
    write_sample(tmp_path / "a.eif", ramdisks=(BOOT,))
    pcr2 = read_eif(tmp_path / "a.eif").measurements.pcr2
    assert pcr2.hex().startswith("21b9efbc") and pcr2.hex().endswith("500a")  # nitro-facts §3.1


def test_flipped_data_byte_fails_crc_but_still_reads(tmp_path: Path) -> None:
    path = tmp_path / "a.eif"
    write_sample(path)
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    eif = read_eif(path)
    assert not eif.crc_ok
    assert eif.measurements.pcr2 != pcr(APP)


@pytest.mark.parametrize(
    ("mutate", "problem"),
    [
        (lambda d: b"ELF!" + d[4:], "bad magic"),
        (lambda d: d[:4] + b"\x00\x09" + d[6:], "unsupported EIF version 9"),
        (lambda d: d[:26] + b"\x00\x00" + d[28:], "num_sections is 0"),
        (lambda d: d[:100], "shorter than the 548-byte header"),
        (lambda d: d[:-10], "truncated"),
        (lambda d: d + b"junk", "unexpected bytes after the last section"),
        (lambda d: d[:548] + b"\x00\x00" + d[550:], "invalid type 0"),
        (lambda d: d[:284] + struct.pack(">Q", 999) + d[292:], "the header says 999"),
        (lambda d: d[:28] + struct.pack(">Q", 600) + d[36:], "declared at offset 600"),
    ],
)
def test_corrupt_files_raise_e35_naming_the_problem(tmp_path: Path, mutate, problem: str) -> None:
    path = tmp_path / "a.eif"
    write_sample(path)
    path.write_bytes(mutate(path.read_bytes()))
    with pytest.raises(EifFormatError) as caught:
        read_eif(path)
    assert caught.value.code == 35
    assert problem in str(caught.value) and str(path) in str(caught.value)


def test_missing_file_and_directory_raise_e19(tmp_path: Path) -> None:
    for target in (tmp_path / "none.eif", tmp_path):
        with pytest.raises(EifFileError) as caught:
            read_eif(target)
        assert caught.value.code == 19


def test_bad_metadata_json_is_a_parse_error(tmp_path: Path) -> None:
    path = tmp_path / "a.eif"
    write_eif(path, kernel=KERNEL, cmdline=CMDLINE, metadata=b"{not json", ramdisks=(BOOT,))
    with pytest.raises(EifFormatError, match="metadata section is not JSON"):
        read_eif(path)


def test_failed_write_leaves_no_file(tmp_path: Path) -> None:
    def broken(out) -> None:  # type: ignore[no-untyped-def]
        out.write(b"partial")
        raise RuntimeError("export died")

    with pytest.raises(RuntimeError):
        write_sample(tmp_path / "a.eif", ramdisks=(BOOT, broken))
    assert list(tmp_path.iterdir()) == []


def test_signed_image_carries_pcr8_and_a_verifying_cose_signature(tmp_path: Path) -> None:
    cert_path, key_path = make_signer(tmp_path)
    signer = EifSigner.from_files(cert_path, key_path)
    path = tmp_path / "signed.eif"
    write_sample(path, signer)
    eif = read_eif(path)
    der = x509.load_pem_x509_certificate(cert_path.read_bytes()).public_bytes(serialization.Encoding.DER)
    assert eif.is_signed and eif.signature_ok is True and eif.crc_ok
    assert eif.measurements.pcr8 == pcr(der)
    assert eif.measurements.pcr0 == pcr(KERNEL, CMDLINE, BOOT, APP)  # signing leaves PCR0 alone
    assert eif.sections[-1].section_type == SectionType.SIGNATURE
    # §3.4: CBOR arrays of uints, the PEM as given, an untagged COSE_Sign1 over PcrInfo
    section = cbor2.loads(eif.read_section(eif.sections[-1]))
    assert isinstance(section, list) and len(section) == 1
    assert list(section[0]) == ["signing_certificate", "signature"]
    assert bytes(section[0]["signing_certificate"]) == cert_path.read_bytes()
    protected, unprotected, payload, signature = cbor2.loads(bytes(section[0]["signature"]))
    assert cbor2.loads(protected) == {1: -35} and unprotected == {} and len(signature) == 96
    assert cbor2.loads(payload) == {"register_index": 0, "register_value": list(eif.measurements.pcr0)}
    assert payload == pcr_info_payload(eif.measurements.pcr0)


def test_signature_over_another_pcr0_fails_the_check(tmp_path: Path) -> None:
    cert_path, key_path = make_signer(tmp_path)
    signer = EifSigner.from_files(cert_path, key_path)

    class WrongPcr0:
        pcr8 = signer.pcr8

        def signature_section(self, pcr0: bytes) -> bytes:
            return signer.signature_section(bytes(48))

    write_sample(tmp_path / "a.eif", WrongPcr0())  # type: ignore[arg-type]
    eif = read_eif(tmp_path / "a.eif")
    assert eif.crc_ok and eif.is_signed and eif.signature_ok is False


def test_tampered_ramdisk_fails_crc_and_signature(tmp_path: Path) -> None:
    cert_path, key_path = make_signer(tmp_path)
    path = tmp_path / "a.eif"
    write_sample(path, EifSigner.from_files(cert_path, key_path))
    data = bytearray(path.read_bytes())
    app_offset = read_eif(path).ramdisks[1].data_offset
    data[app_offset] ^= 1
    path.write_bytes(bytes(data))
    eif = read_eif(path)
    assert eif.crc_ok is False and eif.signature_ok is False


@pytest.mark.parametrize("curve", [ec.SECP256R1(), ec.SECP521R1()])
def test_other_ecdsa_curves_sign_and_verify(tmp_path: Path, curve: ec.EllipticCurve) -> None:
    cert_path, key_path = make_signer(tmp_path, curve)
    write_sample(tmp_path / "a.eif", EifSigner.from_files(cert_path, key_path))
    assert read_eif(tmp_path / "a.eif").signature_ok is True


def test_signing_refuses_rsa_and_mismatched_keys(tmp_path: Path) -> None:
    cert_path, _ = make_signer(tmp_path, name="one")
    _, other_key = make_signer(tmp_path, name="two")
    rsa_key = tmp_path / "rsa.key"
    rsa_key.write_bytes(
        rsa.generate_private_key(65537, 2048).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    for key, problem in [(rsa_key, "ECDSA only"), (other_key, "is not the private key of"),
                         (tmp_path / "missing.key", "cannot read")]:
        with pytest.raises(SigningError, match=problem) as caught:
            EifSigner.from_files(cert_path, key)
        assert caught.value.code == 48
    with pytest.raises(SigningError, match="not a PEM X.509 certificate"):
        EifSigner.from_files(rsa_key, other_key)


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_pcr_command_outputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blob = tmp_path / "blob"
    blob.write_bytes(b"hello")
    status, out, _ = run_cli(capsys, "pcr", "--input", str(blob))
    assert status == 0 and out == '{\n  "PCR": "%s"\n}\n' % pcr(b"hello").hex()
    cert_path, _ = make_signer(tmp_path)
    der = x509.load_pem_x509_certificate(cert_path.read_bytes()).public_bytes(serialization.Encoding.DER)
    status, out, _ = run_cli(capsys, "pcr", "--signing-certificate", str(cert_path))
    assert status == 0 and json.loads(out) == {"PCR8": pcr(der).hex()}


@pytest.mark.parametrize(
    ("argv", "code"),
    [((), 1), (("--input", "a", "--signing-certificate", "b"), 2), (("--input", "/nonexistent/x"), 19)],
)
def test_pcr_command_errors(capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], code: int) -> None:
    status, out, err = run_cli(capsys, "pcr", *argv)
    assert status == code and out == ""
    assert err.startswith(f"[ E{code:02d} ] ")
    assert f"cli-errors.html#E{code:02d}" in err


def test_describe_eif_json_follows_nitro_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cert_path, key_path = make_signer(tmp_path)
    identity = {
        "ImageName": "app", "ImageVersion": "2.0",
        "BuildMetadata": {"BuildTime": "t", "BuildTool": "nitro-emu", "BuildToolVersion": "0.1.0",
                          "OperatingSystem": "Linux", "KernelVersion": "k"},
        "DockerInfo": {"b": 1, "a": {"z": 0, "y": 1}}, "CustomMetadata": {"zeta": 1, "alpha": [2]},
    }
    path = tmp_path / "a.eif"
    write_eif(path, kernel=KERNEL, cmdline=CMDLINE, metadata=json.dumps(identity).encode(),
              ramdisks=(BOOT, APP), signer=EifSigner.from_files(cert_path, key_path))
    status, out, _ = run_cli(capsys, "describe-eif", "--eif-path", str(path))
    assert status == 0
    described = json.loads(out)
    assert list(described) == ["EifVersion", "Measurements", "IsSigned", "SigningCertificate",
                               "CheckCRC", "SignatureCheck", "ImageName", "ImageVersion", "Metadata"]
    assert described["EifVersion"] == 4 and described["IsSigned"] is True
    assert described["CheckCRC"] is True and described["SignatureCheck"] is True
    assert list(described["Measurements"]) == ["HashAlgorithm", "PCR0", "PCR1", "PCR2", "PCR8"]
    assert described["Measurements"]["HashAlgorithm"] == "Sha384 { ... }"
    certificate = described["SigningCertificate"]
    assert list(certificate) == ["IssuerName", "Algorithm", "NotBefore", "NotAfter", "Signature"]
    assert certificate["IssuerName"] == {"commonName": "signer", "countryName": "US"}
    assert certificate["Algorithm"] == "ecdsa-with-SHA384"
    assert certificate["NotBefore"] == "Jan  5 03:04:05 2026 GMT"
    assert re.fullmatch(r"([0-9A-F]{2}:)+[0-9A-F]{2}", certificate["Signature"])
    assert (described["ImageName"], described["ImageVersion"]) == ("app", "2.0")
    assert list(described["Metadata"]) == ["BuildTime", "BuildTool", "BuildToolVersion", "OperatingSystem",
                                           "KernelVersion", "DockerInfo", "alpha", "zeta"]
    assert list(described["Metadata"]["DockerInfo"]) == ["a", "b"]
    assert out.startswith('{\n  "EifVersion": 4,\n  "Measurements": {\n    "HashAlgorithm"')


def test_describe_unsigned_eif_omits_signature_fields(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_sample(tmp_path / "a.eif")
    described = json.loads(run_cli(capsys, "describe-eif", "--eif-path", str(tmp_path / "a.eif"))[1])
    assert "SigningCertificate" not in described and "SignatureCheck" not in described
    assert list(described["Measurements"]) == ["HashAlgorithm", "PCR0", "PCR1", "PCR2"]


def test_describe_corrupt_eif_exits_35(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "bad.eif").write_bytes(b"nope" * 200)
    status, out, err = run_cli(capsys, "describe-eif", "--eif-path", str(tmp_path / "bad.eif"))
    assert status == 35 and out == "" and "bad magic" in err and "Traceback" not in err


def test_boot_blobs_are_deterministic_and_version_stamped() -> None:
    current, again, other = boot_blobs("9.9.9"), boot_blobs.__wrapped__("9.9.9"), boot_blobs("9.9.10")
    assert current == again
    assert b"9.9.9" in current.cmdline and b"9.9.9" in current.kernel[:100]
    assert current.pcr1 == pcr(current.kernel, current.cmdline, current.boot_ramdisk)
    assert current.pcr1 != other.pcr1


def _tar(entries: list[tuple[tarfile.TarInfo, bytes | None]]) -> io.BytesIO:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for info, data in entries:
            archive.addfile(info, io.BytesIO(data) if data is not None else None)
    buffer.seek(0)
    return buffer


def _entry(name: str, kind: bytes = tarfile.REGTYPE, data: bytes | None = None, mtime: int = 0,
           owner: str = "", link: str = "", pax: dict[str, str] | None = None) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type, info.mtime, info.uname, info.gname = kind, mtime, owner, owner
    info.uid = info.gid = 1000 if name.startswith("home") else 0
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    info.linkname = link
    info.pax_headers = pax or {}
    if data is not None:
        info.size = len(data)
    return info, data


def _export(order: list[int], mtime: int, owner: str) -> io.BytesIO:
    entries = [
        _entry("etc", tarfile.DIRTYPE, mtime=mtime, owner=owner),
        _entry("etc/zz.conf", data=b"zz", mtime=mtime, owner=owner,
               pax={"atime": str(mtime), "SCHILY.xattr.user.k": "v"}),
        _entry("home", tarfile.DIRTYPE, mtime=mtime, owner=owner),
        _entry("home/app.py", data=b"print(1)\n", mtime=mtime, owner=owner),
        _entry("etc/aa", tarfile.LNKTYPE, link="etc/zz.conf", mtime=mtime, owner=owner),
        _entry("bin", tarfile.SYMTYPE, link="usr/bin", mtime=mtime, owner=owner),
    ]
    # hard links refer to an earlier member in any real tar
    ordered = [entries[i] for i in order]
    return _tar(ordered)


CONFIG = {"Cmd": ["python3", "/home/app.py"], "Entrypoint": None, "Env": ["A=1"], "User": "1000", "WorkingDir": "/home"}


def _canonical(export: io.BytesIO) -> bytes:
    out = io.BytesIO()
    write_canonical_archive(export, CONFIG, out)
    return out.getvalue()


def test_canonical_archive_ignores_order_mtimes_and_owner_names() -> None:
    first = _canonical(_export([0, 1, 2, 3, 4, 5], mtime=1_700_000_000, owner="root"))
    second = _canonical(_export([5, 3, 2, 0, 1, 4], mtime=1_800_000_000, owner="builder"))
    assert first == second
    with tarfile.open(fileobj=io.BytesIO(first)) as archive:
        members = archive.getmembers()
        assert [m.name for m in members] == [CONFIG_MEMBER, "bin", "etc", "etc/aa", "etc/zz.conf", "home", "home/app.py"]
        assert json.loads(archive.extractfile(members[0]).read()) == CONFIG
        assert all(m.mtime == 0 and m.uname == "" and m.gname == "" for m in members)
        by_name = {m.name: m for m in members}
        # the group's first path in sorted order carries the data; the other links to it
        assert by_name["etc/aa"].isreg() and archive.extractfile("etc/aa").read() == b"zz"
        assert by_name["etc/zz.conf"].islnk() and by_name["etc/zz.conf"].linkname == "etc/aa"
        assert by_name["etc/aa"].pax_headers == {"SCHILY.xattr.user.k": "v"}
        assert by_name["home/app.py"].uid == 1000 and by_name["bin"].linkname == "usr/bin"


def test_ramdisk_config_and_rootfs_offset_read_back(tmp_path: Path) -> None:
    ramdisk = _canonical(_export([0, 1, 2, 3, 4, 5], 5, "root"))
    write_sample(tmp_path / "a.eif", ramdisks=(BOOT, ramdisk))
    eif = read_eif(tmp_path / "a.eif")
    config, offset = read_ramdisk_config(eif, eif.ramdisks[1])
    assert config == CONFIG
    rootfs = b"".join(eif.iter_section(eif.ramdisks[1], offset))
    with tarfile.open(fileobj=io.BytesIO(rootfs)) as archive:
        assert archive.getnames()[0] == "bin" and CONFIG_MEMBER not in archive.getnames()


def test_ramdisk_without_config_member_is_refused(tmp_path: Path) -> None:
    write_sample(tmp_path / "a.eif")
    eif = read_eif(tmp_path / "a.eif")
    with pytest.raises(EifFormatError):
        read_ramdisk_config(eif, eif.ramdisks[1])


@settings(max_examples=50, deadline=None)
@given(st.binary(max_size=300), st.binary(max_size=3000))
def test_crc32_combine_matches_zlib(first: bytes, second: bytes) -> None:
    assert crc32_combine(zlib.crc32(first), zlib.crc32(second), len(second)) == zlib.crc32(first + second)


def test_build_enclave_without_engine_is_e50(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    status, out, err = run_cli(capsys, "build-enclave", "--docker-uri", "app", "--output-file", str(tmp_path / "a.eif"))
    gc.collect()
    assert status == 50 and out == "" and "no Docker engine answers" in err
    assert not (tmp_path / "a.eif").exists()


def test_build_enclave_with_bad_metadata_file_is_e48(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "meta.json").write_text("{oops")
    status, _, err = run_cli(capsys, "build-enclave", "--docker-uri", "app", "--output-file",
                             str(tmp_path / "a.eif"), "--metadata", str(tmp_path / "meta.json"))
    assert status == 48 and "is not valid JSON" in err


def test_oversized_small_section_is_refused_not_loaded(tmp_path: Path) -> None:
    path = tmp_path / "a.eif"
    write_eif(path, kernel=KERNEL, cmdline=b"x" * ((16 << 20) + 1), metadata=METADATA, ramdisks=(BOOT,))
    with pytest.raises(EifFormatError, match=r"section 1 \(CMDLINE\) has 16777217 bytes, too large"):
        read_eif(path)


def _pyc(flags: int, mtime: int, size: int) -> bytes:
    return struct.pack("<4sIII", b"\xa7\r\r\n", flags, mtime, size) + b"\xe3code"


def _stamped(entries: list[tuple[tarfile.TarInfo, bytes | None]]) -> dict[str, int]:
    with tarfile.open(fileobj=io.BytesIO(_canonical(_tar(entries)))) as archive:
        return {member.name: member.mtime for member in archive.getmembers()}


def test_sources_with_a_matching_timestamp_pyc_keep_its_recorded_mtime() -> None:
    source = b"import os\n"
    mtimes = _stamped([
        _entry("lib", tarfile.DIRTYPE, mtime=5),
        _entry("lib/good.py", data=source, mtime=1_700_000_123),
        _entry("lib/__pycache__", tarfile.DIRTYPE, mtime=5),
        # two tags disagree: the lexicographically first one (cpython-310) decides
        _entry("lib/__pycache__/good.cpython-311.pyc", data=_pyc(0, 1_600_000_000, len(source))),
        _entry("lib/__pycache__/good.cpython-310.pyc", data=_pyc(0, 1_700_000_000, len(source))),
        _entry("lib/hashed.py", data=source),
        _entry("lib/__pycache__/hashed.cpython-311.pyc", data=_pyc(1, 1_700_000_000, len(source))),
        _entry("lib/resized.py", data=source + b"#\n"),
        _entry("lib/__pycache__/resized.cpython-311.pyc", data=_pyc(0, 1_700_000_000, len(source))),
        _entry("lib/optimized.py", data=source),
        _entry("lib/__pycache__/optimized.cpython-311.opt-1.pyc", data=_pyc(0, 1_700_000_000, len(source))),
        _entry("lib/twin.py", tarfile.LNKTYPE, link="lib/good.py"),
        _entry("lib/__pycache__/short.cpython-311.pyc", data=b"\xa7\r"),
        _entry("lib/short.py", data=source),
    ])
    assert mtimes["lib/good.py"] == 1_700_000_000
    # a hard link is the same inode: it carries the same stamp so extraction keeps it
    assert mtimes["lib/twin.py"] == 1_700_000_000
    stamped = {name for name, mtime in mtimes.items() if mtime}
    assert stamped == {"lib/good.py", "lib/twin.py"}  # hash-based, size mismatch, opt-1, short: 0


def test_pyc_stamps_are_a_function_of_content_not_export_order() -> None:
    source = b"x = 1\n"
    entries = [
        _entry("m.py", data=source, mtime=99),
        _entry("__pycache__", tarfile.DIRTYPE),
        _entry("__pycache__/m.cpython-311.pyc", data=_pyc(0, 1_234_567_890, len(source))),
    ]
    forward, backward = _canonical(_tar(entries)), _canonical(_tar(entries[::-1]))
    assert forward == backward
    assert _stamped(entries)["m.py"] == 1_234_567_890


def test_a_threaded_pcr_hasher_measures_what_a_plain_one_does() -> None:
    blocks = [bytes([i]) * (3000 + i * 977) for i in range(20)]  # past hashlib's GIL-free size
    plain = PcrHasher()
    before = threading.active_count()
    with ThreadedPcrHasher() as threaded:
        for index, block in enumerate(blocks):
            plain.update(block)
            changing = bytearray(block)
            threaded.update(changing)
            changing[:] = b"\xff" * len(changing)  # the queued block was copied
            if index == 9:
                assert threaded.copy().pcr() == plain.copy().pcr()
        assert threaded.pcr() == plain.pcr()
    assert threading.active_count() == before  # close() ended its thread


class _NoImages:
    """A Docker client whose engine has no images and must never be asked to load one."""

    class images:  # noqa: N801 - the SDK's attribute name
        @staticmethod
        def get(name: str) -> None:
            raise docker.errors.ImageNotFound(name)

        @staticmethod
        def load(data: object) -> None:
            raise AssertionError("the engine was sent an archive")


def test_a_config_member_claiming_more_than_its_ramdisk_is_refused_before_loading(tmp_path: Path) -> None:
    header = tarfile.TarInfo(CONFIG_MEMBER)
    header.size = 1 << 20  # the JSON below is complete, but the member claims 1 MiB
    ramdisk = header.tobuf(format=tarfile.PAX_FORMAT) + b"{}"
    write_sample(tmp_path / "a.eif", ramdisks=(BOOT, ramdisk))
    eif = read_eif(tmp_path / "a.eif")
    with pytest.raises(EifFormatError, match="claims more bytes than the application ramdisk holds"):
        load_enclave_image(_NoImages(), eif)  # type: ignore[arg-type]
