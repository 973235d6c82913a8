"""``nitro-emu kms serve`` as a user runs it: boto3 against it, SIGTERM, a restart that keeps
the keys (and ``--memory`` that keeps none), Recipient documents from ``nitro-emu attest``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from emulator.kms.cms import decrypt_enveloped_data

boto3 = pytest.importorskip("boto3")
from botocore.exceptions import ClientError  # noqa: E402

ROOT = Path(__file__).resolve().parents[3]


@contextmanager
def kms_serve(*args: str) -> Iterator[str]:
    """Run ``nitro-emu kms serve --port 0 ARGS``; yield its endpoint URL; SIGTERM it after."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "emulator.cli", "kms", "serve", "--port", "0", *args],
        env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        line = proc.stdout.readline()
        assert line.startswith("nitro-emu KMS at http://127.0.0.1:"), (line, proc.stderr.read() if not line else "")
        yield line.split()[3]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        log = proc.stderr.read()
        assert "Traceback" not in log, log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream:
                stream.close()


def client(url: str) -> object:
    return boto3.client("kms", endpoint_url=url, region_name="us-east-1",
                        aws_access_key_id="AKIDCLI", aws_secret_access_key="x")


def test_keys_survive_a_restart_and_memory_keeps_nothing(nitro_home: Path) -> None:
    with kms_serve() as url:
        kms = client(url)
        key_id = kms.create_key(Description="cli")["KeyMetadata"]["KeyId"]  # type: ignore[attr-defined]
        kms.create_alias(AliasName="alias/cli", TargetKeyId=key_id)  # type: ignore[attr-defined]
        blob = kms.encrypt(KeyId="alias/cli", Plaintext=b"kept")["CiphertextBlob"]  # type: ignore[attr-defined]
    state = nitro_home / "kms"
    assert state.is_dir() and oct(state.stat().st_mode & 0o777) == "0o700"
    assert all(oct(path.stat().st_mode & 0o777) == "0o600" for path in state.iterdir() if path.is_file())
    with kms_serve() as url:
        kms = client(url)
        assert kms.decrypt(CiphertextBlob=blob)["Plaintext"] == b"kept"  # type: ignore[attr-defined]
        assert [a["AliasName"] for a in kms.list_aliases()["Aliases"]] == ["alias/cli"]  # type: ignore[attr-defined]
    with kms_serve("--memory") as url:
        with pytest.raises(ClientError) as refused:
            client(url).decrypt(CiphertextBlob=blob)  # type: ignore[attr-defined]
        assert refused.value.response["Error"]["Code"] in {"NotFoundException", "InvalidCiphertextException"}


def test_recipient_documents_of_this_home_are_trusted(nitro_home: Path, tmp_path: Path) -> None:
    """A document from ``nitro-emu attest`` (the home's CA) gets a CiphertextForRecipient."""
    private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    spki = private_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (tmp_path / "pub.der").write_bytes(spki)
    with kms_serve() as url:
        document_path = tmp_path / "doc.cbor"
        attest = subprocess.run(
            [sys.executable, "-m", "emulator.cli", "attest", "-o", str(document_path),
             "--public-key", str(tmp_path / "pub.der")],
            env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=60,
        )
        assert attest.returncode == 0, attest.stderr
        kms = client(url)
        key_id = kms.create_key()["KeyMetadata"]["KeyId"]  # type: ignore[attr-defined]
        blob = kms.encrypt(KeyId=key_id, Plaintext=b"for the enclave")["CiphertextBlob"]  # type: ignore[attr-defined]
        answer = kms.decrypt(  # type: ignore[attr-defined]
            CiphertextBlob=blob,
            Recipient={"AttestationDocument": document_path.read_bytes(), "KeyEncryptionAlgorithm": "RSAES_OAEP_SHA_256"},
        )
        assert "Plaintext" not in answer or not answer["Plaintext"]
        assert decrypt_enveloped_data(answer["CiphertextForRecipient"], private_key) == b"for the enclave"
    assert json.loads(attest.stdout)["module_id"]


def test_a_bad_root_is_refused_at_start(nitro_home: Path, tmp_path: Path) -> None:
    not_a_certificate = tmp_path / "root.pem"
    not_a_certificate.write_text("hello")
    for root, words in ((not_a_certificate, f"--root {not_a_certificate}: is not an X.509 certificate"),
                        (tmp_path / "absent.pem", "cannot read the --root certificate")):
        done = subprocess.run(
            [sys.executable, "-m", "emulator.cli", "kms", "serve", "--port", "0", "--root", str(root)],
            env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=60,
        )
        assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
        assert words in done.stderr, done.stderr


def test_with_a_given_root_the_home_cas_documents_are_refused(nitro_home: Path, tmp_path: Path) -> None:
    from ca import TestCA

    foreign = tmp_path / "foreign.pem"
    foreign.write_bytes(TestCA.load_or_create(tmp_path / "foreign-ca").root_pem)
    document_path = tmp_path / "doc.cbor"
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (tmp_path / "pub.der").write_bytes(key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))
    attest = subprocess.run(
        [sys.executable, "-m", "emulator.cli", "attest", "-o", str(document_path), "--public-key", str(tmp_path / "pub.der")],
        env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=60,
    )
    assert attest.returncode == 0, attest.stderr
    with kms_serve("--memory", "--root", str(foreign)) as url:
        kms = client(url)
        key_id = kms.create_key()["KeyMetadata"]["KeyId"]  # type: ignore[attr-defined]
        blob = kms.encrypt(KeyId=key_id, Plaintext=b"x")["CiphertextBlob"]  # type: ignore[attr-defined]
        with pytest.raises(ClientError) as refused:
            kms.decrypt(CiphertextBlob=blob, Recipient={  # type: ignore[attr-defined]
                "AttestationDocument": document_path.read_bytes(), "KeyEncryptionAlgorithm": "RSAES_OAEP_SHA_256"})
        assert refused.value.response["Error"]["Code"] == "ValidationException"
        assert "CiphertextForRecipient" not in refused.value.response
