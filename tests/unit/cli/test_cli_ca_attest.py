"""``nitro-emu ca init|show|export-root`` and ``nitro-emu attest``."""

from __future__ import annotations

import base64
import hashlib
import json
import stat
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from emulator.cli.app import main

ZERO = bytes(48)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def read_document(path: Path, *, b64: bool = False) -> tuple[bytes, dict]:
    data = path.read_bytes()
    if b64:
        data = base64.b64decode(data)
    protected, _, payload, signature = cbor2.loads(data)
    fields = cbor2.loads(payload)
    leaf = x509.load_der_x509_certificate(fields["certificate"]).public_key()
    assert isinstance(leaf, ec.EllipticCurvePublicKey)
    der = encode_dss_signature(int.from_bytes(signature[:48], "big"), int.from_bytes(signature[48:], "big"))
    leaf.verify(der, cbor2.dumps(["Signature1", protected, b"", payload]), ec.ECDSA(hashes.SHA384()))
    return payload, fields


def test_init_creates_then_loads(nitro_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "ca", "init")
    assert status == 0 and out.startswith(f"Created a test CA in {nitro_home / 'ca'}")
    assert "Re-issued" not in out
    assert stat.S_IMODE((nitro_home / "ca").stat().st_mode) == 0o700
    status, again, _ = run(capsys, "ca", "init")
    assert status == 0 and again.startswith("Loaded the test CA")
    root_line = [line for line in out.splitlines() if "SHA-256" in line]
    assert root_line and root_line == [line for line in again.splitlines() if "SHA-256" in line]
    root = x509.load_pem_x509_certificate((nitro_home / "ca" / "root.crt").read_bytes())
    assert hashlib.sha256(root.public_bytes(Encoding.DER)).hexdigest() in root_line[0]


def test_show_lists_the_chain(nitro_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run(capsys, "ca", "show")
    assert status == 1 and "nitro-emu ca init" in err and len(err.strip().splitlines()) == 1
    run(capsys, "ca", "init")
    status, out, _ = run(capsys, "ca", "show")
    assert status == 0
    report = json.loads(out)
    levels = report["certificates"]
    assert [c["level"] for c in levels] == ["root", "regional", "zonal", "instance"]
    root_der = x509.load_pem_x509_certificate((nitro_home / "ca" / "root.crt").read_bytes()).public_bytes(Encoding.DER)
    assert levels[0]["sha256_fingerprint"] == hashlib.sha256(root_der).hexdigest()
    assert "OU=TEST" in levels[0]["subject"]
    for cert in levels:
        assert datetime.fromisoformat(cert["not_before"]) < datetime.fromisoformat(cert["not_after"])
        assert datetime.fromisoformat(cert["not_after"]).tzinfo is not None
    assert levels[3]["subject"].startswith(f"CN={report['instance_id']}.")


def test_export_root_pem_and_der(nitro_home: Path, capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    assert main(["ca", "export-root"]) == 0
    pem = capsysbinary.readouterr().out
    assert main(["ca", "export-root", "--der"]) == 0
    der = capsysbinary.readouterr().out
    assert x509.load_pem_x509_certificate(pem) == x509.load_der_x509_certificate(der)
    assert pem == (nitro_home / "ca" / "root.crt").read_bytes()


def test_attest_defaults(nitro_home: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    output = tmp_path / "doc.cbor"
    status, out, _ = run(capsys, "attest", "--output", str(output))
    assert status == 0
    summary = json.loads(out)
    payload, fields = read_document(output)
    assert payload[0] == 0xBF  # indefinite map by default
    assert fields["module_id"] == summary["module_id"]
    instance_id = summary["module_id"].split("-enc")[0]
    assert list(fields["pcrs"]) == list(range(16))
    for index in (0, 1, 2):
        assert fields["pcrs"][index] == hashlib.sha384(f"nitro-emu attest PCR{index}".encode()).digest()
    assert fields["pcrs"][4] == hashlib.sha384(ZERO + instance_id.encode()).digest()
    assert all(fields["pcrs"][i] == ZERO for i in (3, *range(5, 16)))
    assert fields["user_data"] is None and fields["nonce"] is None and fields["public_key"] is None
    assert fields["cabundle"][0] == x509.load_pem_x509_certificate(
        (nitro_home / "ca" / "root.crt").read_bytes()
    ).public_bytes(Encoding.DER)
    # the CA is named after the same parent instance run-enclave uses (PCR4 agrees)
    assert (nitro_home / "instance-id").read_text().strip() == instance_id


def test_attest_all_options(nitro_home: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP384R1()).public_key()
    (tmp_path / "key.pem").write_bytes(key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    output = tmp_path / "doc.b64"
    module_id = "i-0123456789abcdef0-enc0123456789abcdef"
    run(capsys, "ca", "init")
    status, _, err = run(
        capsys, "attest", "--output", str(output), "--base64", "--definite-map", "--debug-mode",
        "--pcr", "3=" + "ab" * 48, "--pcr", "16=" + "cd" * 48, "--user-data", "68656c6c6f",
        "--nonce", "00ff", "--public-key", str(tmp_path / "key.pem"), "--module-id", module_id,
        "--at", "2027-02-03T04:05:06.789Z",
    )
    assert status == 0, err
    payload, fields = read_document(output, b64=True)
    assert payload[0] == 0xA9
    assert fields["module_id"] == module_id
    assert fields["timestamp"] == int(datetime(2027, 2, 3, 4, 5, 6, 789000, tzinfo=timezone.utc).timestamp() * 1000)
    assert [fields["pcrs"][i] for i in (0, 1, 2, 8)] == [ZERO] * 4
    assert fields["pcrs"][3] == b"\xab" * 48 and fields["pcrs"][16] == b"\xcd" * 48
    assert fields["pcrs"][4] == hashlib.sha384(ZERO + b"i-0123456789abcdef0").digest()
    assert fields["user_data"] == b"hello" and fields["nonce"] == b"\x00\xff"
    assert fields["public_key"] == key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    leaf = x509.load_der_x509_certificate(fields["certificate"])
    assert leaf.not_valid_before_utc == datetime(2027, 2, 3, 4, 5, 3, tzinfo=timezone.utc)
    assert leaf.serial_number.to_bytes(16, "big")[:8] == bytes.fromhex("0123456789abcdef")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--pcr", "3=zz"], "--pcr 3: the value is not hexadecimal"),
        (["--pcr", "32=" + "00" * 48], "N in 0..31"),
        (["--pcr", "x"], "expected N=HEX"),
        (["--pcr", "5=00"], "1 bytes, a PCR is 48 bytes"),
        (["--debug-mode", "--pcr", "1=" + "00" * 48], "conflicts with --debug-mode"),
        (["--user-data", "0g"], "--user-data: '0g' is not hexadecimal"),
        (["--nonce", "00" * 1025], "--nonce: 1025 bytes"),
        (["--module-id", "enclave"], "--module-id: 'enclave' is not"),
        (["--at", "yesterday"], "--at: 'yesterday' is not ISO 8601"),
        (["--at", "2001-01-01T00:00:00Z"], "the test root is valid from"),
        (["--public-key", "/nonexistent/key"], "--public-key: cannot read"),
    ],
)
def test_attest_bad_input_is_one_line_exit_1(
    nitro_home: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path, argv: list[str], message: str
) -> None:
    output = tmp_path / "doc"
    status, out, err = run(capsys, "attest", "--output", str(output), *argv)
    assert status == 1
    assert err.startswith("nitro-emu: error: ") and message in err, err
    assert len(err.strip().splitlines()) == 1 and out == ""
    assert not output.exists()


def test_oversize_public_key_file(nitro_home: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "big").write_bytes(b"k" * 1025)
    status, _, err = run(capsys, "attest", "-o", str(tmp_path / "doc"), "--public-key", str(tmp_path / "big"))
    assert status == 1 and "--public-key: 1025 bytes" in err


def test_subprocess_round_trip(nitro_home: Path, tmp_path: Path) -> None:
    """The installed entry point end to end: init, attest, export-root, then verify."""
    command = [sys.executable, "-m", "emulator.cli"]
    init = subprocess.run([*command, "ca", "init"], capture_output=True, text=True, timeout=60)
    assert init.returncode == 0 and "Created a test CA" in init.stdout, init.stderr
    output = tmp_path / "doc.cbor"
    attest = subprocess.run(
        [*command, "attest", "-o", str(output), "--nonce", "abcd"], capture_output=True, text=True, timeout=60
    )
    assert attest.returncode == 0, attest.stderr
    root = subprocess.run([*command, "ca", "export-root", "--der"], capture_output=True, timeout=60)
    assert root.returncode == 0
    from fake_nsm.verifier import verify_attestation_document

    document = verify_attestation_document(output.read_bytes(), trusted_roots=[root.stdout], nonce=b"\xab\xcd")
    assert document.module_id == json.loads(attest.stdout)["module_id"]
    bad = subprocess.run([*command, "attest", "-o", str(output), "--pcr", "99=00"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr
