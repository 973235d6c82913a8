"""``nitro-emu verify``: JSON on success, one line naming the failed check otherwise."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from tests.unit.fake_nsm.verifier_helpers import DEBUG_PCRS, NOW, PCRS, make_test_ca, signer

from emulator.cli.app import main

VALID = "evervault-beta-valid-attestation-doc.cbor"
DEBUG = "evervault-beta-debug-mode-attestation-doc.cbor"
AWS_ROOT = "aws-nitro-enclaves-root-G1.pem"
VALID_AT = "2022-10-13T08:58:02.136Z"
DEBUG_AT = "2022-10-12T13:50:06Z"
PCR0 = "f4d48b81a460c9916d1e685119074bf24660afd3e34fae9fca0a0d28d9d5599936332687e6f66fc890ac8cf150142d8b"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, list[str]]:
    status = main(["verify", *argv])
    out, err = capsys.readouterr()
    return status, out, err.splitlines()


def test_genuine_document_prints_its_json(aws_vectors: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    status, out, err = run(capsys, str(aws_vectors / VALID), "--aws-root", "--at", VALID_AT)
    assert (status, err) == (0, [])
    document = json.loads(out)
    assert document["module_id"] == "i-020b6af9246d90e92-enc0183d09086c24190"
    assert document["pcrs"]["0"] == PCR0 and len(document["pcrs"]) == 16
    assert document["public_key"] is None and len(bytes.fromhex(document["nonce"])) == 256


def test_base64_input_and_root_file(aws_vectors: Path, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    encoded = tmp_path / "doc.b64"
    text = base64.encodebytes((aws_vectors / VALID).read_bytes())  # wrapped lines, like base64(1)
    encoded.write_bytes(text)
    status, out, err = run(
        capsys, str(encoded), "--root", str(aws_vectors / AWS_ROOT), "--at", VALID_AT,
        "--pcr", f"0={PCR0}", "--max-age", "1",
    )
    assert (status, err) == (0, [])
    assert json.loads(out)["timestamp"] == 1665651482136
    urlsafe = tmp_path / "doc.b64url"
    urlsafe.write_bytes(base64.urlsafe_b64encode((aws_vectors / VALID).read_bytes()).rstrip(b"="))
    assert run(capsys, str(urlsafe), "--aws-root", "--at", VALID_AT)[0] == 0


def test_root_given_as_fingerprint(aws_vectors: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    fingerprint = "64:1A:03:21:A3:E2:44:EF:E4:56:46:31:95:D6:06:31:7E:D7:CD:CC:3C:17:56:E0:98:93:F3:C6:8F:79:BB:5B"
    assert run(capsys, str(aws_vectors / VALID), "--root", fingerprint, "--at", VALID_AT)[0] == 0


@pytest.mark.parametrize(
    "extra, check",
    [
        (["--at", "2022-10-13T11:58:03Z"], "CertificateExpiredError: leaf certificate expired at 2022-10-13T11:58:02Z"),
        (["--at", VALID_AT, "--pcr", "0=" + "00" * 48], "PcrMismatchError: PCR0 is f4d48b81"),
        (["--at", VALID_AT, "--nonce", "00" * 256], "NonceMismatchError"),
        (["--at", "2022-10-13T09:58:02Z", "--max-age", "60"], "StaleDocumentError"),
    ],
)
def test_a_failed_check_is_one_named_line(aws_vectors: Path, capsys, extra: list[str], check: str) -> None:  # type: ignore[no-untyped-def]
    status, out, err = run(capsys, str(aws_vectors / VALID), "--aws-root", *extra)
    assert status == 1 and out == ""
    assert len(err) == 1 and err[0].startswith(f"verification failed: {check}")


def test_debug_mode_needs_allow_debug(aws_vectors: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    status, _, err = run(capsys, str(aws_vectors / DEBUG), "--aws-root", "--at", DEBUG_AT)
    assert status == 1 and err[0].startswith("verification failed: DebugModeError")
    status, out, _ = run(capsys, str(aws_vectors / DEBUG), "--aws-root", "--at", DEBUG_AT, "--allow-debug")
    assert status == 0 and json.loads(out)["user_data"] == b"hello, world!".hex()


def test_our_documents_verify_with_the_test_root_only(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    ca = make_test_ca(tmp_path / "ca")
    root = tmp_path / "root.pem"
    root.write_bytes(ca.root_pem)
    document = tmp_path / "doc.cbor"
    document.write_bytes(signer(ca, definite=False).sign(PCRS, nonce=b"\xab\xcd"))
    at = NOW.isoformat()
    status, out, err = run(capsys, str(document), "--root", str(root), "--at", at, "--nonce", "abcd")
    assert (status, err) == (0, []) and json.loads(out)["nonce"] == "abcd"
    status, _, err = run(capsys, str(document), "--aws-root", "--at", at)
    assert status == 1 and err[0].startswith("verification failed: UntrustedRootError")
    document.write_bytes(signer(ca, definite=True).sign(DEBUG_PCRS))
    status, _, err = run(capsys, str(document), "--root", str(root), "--at", at)
    assert status == 1 and err[0].startswith("verification failed: DebugModeError")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["{doc}"], "no trusted root"),
        (["{missing}", "--aws-root"], "cannot read"),
        (["{garbage_b64}", "--aws-root"], "neither CBOR nor valid base64"),
        (["{doc}", "--root", "{not_a_cert}"], "not a PEM or DER certificate"),
        (["{doc}", "--root", "{missing}"], "cannot read"),
        (["{doc}", "--aws-root", "--at", "yesterday"], "not an ISO 8601 time"),
        (["{doc}", "--aws-root", "--pcr", "32=00"], "N=HEX with N in 0..31"),
        (["{doc}", "--aws-root", "--pcr", "0=xyz"], "not hex"),
        (["{doc}", "--aws-root", "--nonce", "xyz"], "not hex"),
        (["{doc}", "--aws-root", "--max-age", "-1"], "non-negative"),
        (["{empty}", "--aws-root"], "empty"),
    ],
)
def test_bad_input_is_one_line_without_traceback(  # type: ignore[no-untyped-def]
    aws_vectors: Path, tmp_path: Path, capsys, argv: list[str], message: str
) -> None:
    paths = {
        "doc": str(aws_vectors / VALID),
        "missing": str(tmp_path / "missing.cbor"),
        "garbage_b64": str(tmp_path / "garbage.b64"),
        "not_a_cert": str(tmp_path / "not-a-cert.pem"),
        "empty": str(tmp_path / "empty"),
    }
    (tmp_path / "garbage.b64").write_text("abcde\n")
    (tmp_path / "not-a-cert.pem").write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    (tmp_path / "empty").write_bytes(b"")
    status, out, err = run(capsys, *(arg.format(**paths) for arg in argv))
    assert status == 2 and out == ""
    assert len(err) == 1 and message in err[0] and "Traceback" not in err[0]


def test_garbage_document_is_a_malformed_document(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"\x84\x01\x02\xff\x00")
    status, _, err = run(capsys, str(garbage), "--aws-root")
    assert status == 1 and len(err) == 1
    assert err[0].startswith("verification failed: MalformedDocumentError")


def test_attest_then_verify_with_the_exported_root(nitro_home: Path, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    # The README's loop: a document from `nitro-emu attest`, the root from `ca export-root`.
    document = tmp_path / "doc.b64"
    assert main(["attest", "-o", str(document), "--base64", "--nonce", "00ff"]) == 0
    capsys.readouterr()  # attest's JSON summary
    assert main(["ca", "export-root"]) == 0
    root = tmp_path / "root.pem"
    root.write_text(capsys.readouterr().out)
    status, out, err = run(capsys, str(document), "--root", str(root), "--nonce", "00ff", "--max-age", "300")
    assert (status, err) == (0, [])
    assert json.loads(out)["nonce"] == "00ff"
    status, _, err = run(capsys, str(document), "--aws-root")
    assert status == 1 and err[0].startswith("verification failed: UntrustedRootError")


def test_pcr_index_in_other_digits_is_one_line_not_a_traceback(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    """'³' is a digit to str.isdigit() but not to int(): it must be refused, not crash."""
    from emulator.cli.app import main

    document = tmp_path / "doc.cbor"
    document.write_bytes(b"\x84")
    status = main(["verify", str(document), "--aws-root", "--pcr", "\u00b3=00"])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1 and "expected N=HEX with N in 0..31" in err
