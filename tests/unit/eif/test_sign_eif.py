"""``sign-eif``: signing an existing EIF in place as nitro-cli 1.4 does (image-format 0.5's
``EifSigner::sign_image``), its output, its E60 failures, and re-signing."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from emulator.eif.file import read_eif, sign_eif_file, write_eif
from emulator.eif.format import EifFormatError, SectionType
from emulator.eif.signing import EifSigner
from tests.unit.eif.test_eif import APP, BOOT, CMDLINE, KERNEL, METADATA, make_signer, pcr, run_cli, write_sample

HEADER = 548


def file_crc(data: bytes) -> int:
    """nitro-facts §3.3, independently: zlib's CRC-32 of the file minus the header's CRC field."""
    return zlib.crc32(data[: HEADER - 4] + data[HEADER:])


def cert_pcr8(cert_path: Path) -> bytes:
    der = x509.load_pem_x509_certificate(cert_path.read_bytes()).public_bytes(serialization.Encoding.DER)
    return pcr(der)


def test_signing_in_place_adds_the_section_header_entry_crc_and_pcr8(tmp_path: Path) -> None:
    cert_path, key_path = make_signer(tmp_path)
    path = tmp_path / "app.eif"
    write_sample(path)
    before = path.read_bytes()
    unsigned = read_eif(path)

    measurements = sign_eif_file(path, EifSigner.from_files(cert_path, key_path))

    after = path.read_bytes()
    eif = read_eif(path)
    assert eif.is_signed and eif.signature_ok is True and eif.crc_ok
    assert struct.unpack(">I", after[HEADER - 4 : HEADER])[0] == file_crc(after)
    assert measurements == eif.measurements
    assert eif.measurements.pcr8 == cert_pcr8(cert_path)
    assert eif.measurements.pcr0 == unsigned.measurements.pcr0 == pcr(KERNEL, CMDLINE, BOOT, APP)
    # the sections already there are untouched; the signature is appended after them
    assert after[HEADER : len(before)] == before[HEADER:]
    signature = eif.sections[-1]
    assert signature.section_type == SectionType.SIGNATURE and signature.offset == len(before)
    assert len(eif.sections) == len(unsigned.sections) + 1 == eif.header.num_sections
    assert len(after) == len(before) + 12 + signature.size
    # header fields other than the section table and CRC are kept
    assert after[:26] == before[:26]
    assert eif.header.section_offsets[:-1] == unsigned.header.section_offsets
    assert eif.header.section_sizes == (*unsigned.header.section_sizes, signature.size)


def test_signed_in_place_equals_signed_at_build_time_but_for_the_signature(tmp_path: Path) -> None:
    cert_path, key_path = make_signer(tmp_path)
    signer = EifSigner.from_files(cert_path, key_path)
    later, built = tmp_path / "later.eif", tmp_path / "built.eif"
    write_sample(later)
    sign_eif_file(later, signer)
    write_sample(built, signer)
    a, b = read_eif(later), read_eif(built)
    assert a.measurements == b.measurements
    assert [(s.section_type, s.offset) for s in a.sections] == [(s.section_type, s.offset) for s in b.sections]
    start = a.sections[-1].offset
    assert later.read_bytes()[HEADER:start] == built.read_bytes()[HEADER:start]
    # ECDSA is randomised: the COSE signatures differ, the signed payload does not
    assert a.signature is not None and b.signature is not None
    assert a.signature.certificate_pem == b.signature.certificate_pem == cert_path.read_bytes()


def test_an_arm64_image_keeps_its_header_fields(tmp_path: Path) -> None:
    cert_path, key_path = make_signer(tmp_path, ec.SECP256R1())
    path = tmp_path / "arm.eif"
    write_eif(path, kernel=KERNEL, cmdline=CMDLINE, metadata=METADATA, ramdisks=(BOOT, APP),
              arm64=True, default_memory=3 << 30, default_cpus=4)
    sign_eif_file(path, EifSigner.from_files(cert_path, key_path))
    eif = read_eif(path)
    assert eif.header.is_arm64 and eif.header.default_memory == 3 << 30 and eif.header.default_cpus == 4
    assert eif.crc_ok and eif.signature_ok is True


def test_resigning_replaces_the_signature_as_nitro_cli_does(tmp_path: Path) -> None:
    first_cert, first_key = make_signer(tmp_path, name="first")
    second_cert, second_key = make_signer(tmp_path, ec.SECP521R1(), name="second-signer-with-a-longer-name")
    path = tmp_path / "app.eif"
    write_sample(path)
    size = path.stat().st_size
    sign_eif_file(path, EifSigner.from_files(first_cert, first_key))
    sign_eif_file(path, EifSigner.from_files(second_cert, second_key))
    eif = read_eif(path)
    assert [s.section_type for s in eif.sections].count(SectionType.SIGNATURE) == 1
    assert eif.measurements.pcr8 == cert_pcr8(second_cert) != cert_pcr8(first_cert)
    assert eif.crc_ok and eif.signature_ok is True
    assert path.stat().st_size == size + 12 + eif.sections[-1].size  # the old section is gone
    assert eif.header.section_sizes[-1] == eif.sections[-1].size


def test_a_corrupt_eif_is_refused_and_left_unchanged(tmp_path: Path) -> None:
    cert_path, key_path = make_signer(tmp_path)
    path = tmp_path / "app.eif"
    write_sample(path)
    data = bytearray(path.read_bytes())
    data[read_eif(path).ramdisks[1].data_offset] ^= 1  # CRC no longer matches
    path.write_bytes(bytes(data))
    with pytest.raises(EifFormatError, match="does not match the content"):
        sign_eif_file(path, EifSigner.from_files(cert_path, key_path))
    assert path.read_bytes() == bytes(data)


def test_a_stale_header_size_of_the_last_signature_reads_as_aws_reads_it(tmp_path: Path) -> None:
    # nitro-cli 1.4 re-signing (image-format 0.5 write_signature) updates the section but not
    # the header's size entry; AWS's EifReader follows the section headers.
    cert_path, key_path = make_signer(tmp_path)
    path = tmp_path / "app.eif"
    write_sample(path, EifSigner.from_files(cert_path, key_path))
    eif = read_eif(path)
    data = bytearray(path.read_bytes())
    entry = 284 + 8 * (len(eif.sections) - 1)
    data[entry : entry + 8] = struct.pack(">Q", eif.sections[-1].size - 7)
    data[HEADER - 4 : HEADER] = struct.pack(">I", file_crc(bytes(data)))
    path.write_bytes(bytes(data))
    stale = read_eif(path)
    assert stale.crc_ok and stale.signature_ok is True and stale.measurements == eif.measurements
    sign_eif_file(path, EifSigner.from_files(cert_path, key_path))  # re-signing repairs the entry
    assert read_eif(path).header.section_sizes[-1] == read_eif(path).sections[-1].size
    # any other section's size must still agree
    data[284 : 284 + 8] = struct.pack(">Q", eif.sections[0].size + 1)
    path.write_bytes(bytes(data))
    with pytest.raises(EifFormatError, match="section 0 holds"):
        read_eif(path)


def sign_cli(capsys: pytest.CaptureFixture[str], eif: Path, cert: Path, key: Path) -> tuple[int, str, str]:
    return run_cli(capsys, "sign-eif", "--eif-path", str(eif), "--signing-certificate", str(cert),
                   "--private-key", str(key))


def test_cli_prints_as_nitro_cli_and_describe_eif_reports_a_valid_signature(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    cert_path, key_path = make_signer(tmp_path)
    path = tmp_path / "app.eif"
    write_sample(path)
    status, out, err = sign_cli(capsys, path, cert_path, key_path)
    assert status == 0 and err == "Enclave Image successfully signed.\n"
    printed = json.loads(out)
    assert list(printed) == ["Measurements"]
    assert list(printed["Measurements"]) == ["HashAlgorithm", "PCR0", "PCR1", "PCR2", "PCR8"]
    assert out == json.dumps(printed, indent=2) + "\n"

    status, out, _ = run_cli(capsys, "pcr", "--signing-certificate", str(cert_path))
    assert status == 0 and printed["Measurements"]["PCR8"] == json.loads(out)["PCR8"]

    status, out, _ = run_cli(capsys, "describe-eif", "--eif-path", str(path))
    described = json.loads(out)
    assert status == 0 and described["IsSigned"] is True
    assert described["CheckCRC"] is True and described["SignatureCheck"] is True
    assert described["Measurements"] == printed["Measurements"]
    assert described["SigningCertificate"]["IssuerName"]["commonName"] == "signer"


def test_cli_failures_are_e60_and_leave_the_eif_unchanged(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cert_path, key_path = make_signer(tmp_path, name="one")
    _, other_key = make_signer(tmp_path, name="two")
    path = tmp_path / "app.eif"
    write_sample(path)
    original = path.read_bytes()
    garbage = tmp_path / "garbage.eif"
    garbage.write_bytes(b"not an eif" * 100)
    cases = [
        (path, cert_path, other_key, "is not the private key of"),
        (path, tmp_path / "missing.pem", key_path, "cannot read"),
        (path, key_path, key_path, "not a PEM X.509 certificate"),
        (garbage, cert_path, key_path, "EIF file parsing error"),
        (tmp_path / "missing.eif", cert_path, key_path, "File operation failure"),
    ]
    for eif, cert, key, problem in cases:
        status, out, err = sign_cli(capsys, eif, cert, key)
        assert status == 60 and out == ""
        assert err.startswith("[ E60 ] Signing error. ") and "Failed to sign image: " in err and problem in err
    assert path.read_bytes() == original
    assert garbage.read_bytes() == b"not an eif" * 100


@pytest.mark.parametrize(
    ("argv", "code", "text"),
    [
        (("--signing-certificate", "c.pem", "--private-key", "k.pem"), 1, "`eif-path`"),
        (("--eif-path", "x.eif", "--signing-certificate", "c.pem"), 1, "`private-key`"),
        (("--eif-path", "x.eif", "--private-key", "k.pem"), 1, "`signing-certificate`"),
        (("--eif-path", "x.eif"), 60, "Failed to create EifSigner"),
    ],
)
def test_cli_missing_arguments(capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], code: int, text: str) -> None:
    status, out, err = run_cli(capsys, "sign-eif", *argv)
    assert status == code and out == "" and text in err
