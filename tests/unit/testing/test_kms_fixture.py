"""The ``nitro_kms`` fixture as a user's test suite meets it (pytester, its own session)."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]
pytest.importorskip("boto3")

USER_TESTS = r'''
import json, pytest
from botocore.exceptions import ClientError
from emulator.vsock import host as vsock

def test_boto3_round_trip(nitro_kms):
    kms = nitro_kms.client()
    key = nitro_kms.create_key(Description="user")
    blob = kms.encrypt(KeyId=key, Plaintext=b"s3cret", EncryptionContext={"app": "a"})["CiphertextBlob"]
    assert kms.decrypt(CiphertextBlob=blob, EncryptionContext={"app": "a"})["Plaintext"] == b"s3cret"
    with pytest.raises(ClientError) as refused:
        kms.decrypt(CiphertextBlob=blob, EncryptionContext={"app": "b"})
    assert refused.value.response["Error"]["Code"] == "InvalidCiphertextException"

def test_attested_key_refuses_without_a_recipient(nitro_kms):
    kms = nitro_kms.client()
    key = nitro_kms.create_key(policy=nitro_kms.attested_policy({0: "ab" * 48}))
    blob = kms.encrypt(KeyId=key, Plaintext=b"only for the enclave")["CiphertextBlob"]
    with pytest.raises(ClientError) as refused:
        kms.decrypt(CiphertextBlob=blob)
    assert refused.value.response["Error"]["Code"] == "AccessDeniedException"

def test_a_fault_hits_its_test_only_a(nitro_kms):
    nitro_kms.faults.add("ListKeys", error="ThrottlingException")   # until cleared...
    assert nitro_kms.faults.armed() == ["ListKeys: error ThrottlingException (until cleared)"]

def test_a_fault_hits_its_test_only_b(nitro_kms):                   # ...which is this test's start
    assert nitro_kms.faults.armed() == []
    assert "Keys" in nitro_kms.client().list_keys()

def test_enclaves_reach_it_on_vsock_8000(nitro_kms, nitro_enclave_factory, monkeypatch):
    monkeypatch.setenv("NITRO_EMU_HOME", str(nitro_enclave_factory.home))
    body = b"{}"
    request = (b"POST / HTTP/1.1\r\nHost: kms\r\nContent-Type: application/x-amz-json-1.1\r\n"
               b"X-Amz-Target: TrentService.ListKeys\r\nConnection: close\r\n"
               b"Authorization: AWS4-HMAC-SHA256 Credential=AKIDVSOCK/20260101/us-east-1/kms/aws4_request, "
               b"SignedHeaders=host, Signature=00\r\n"
               b"Content-Length: 2\r\n\r\n" + body)
    with vsock.connect(3, 8000, timeout=10) as sock:   # CID 3 from the parent loops back
        sock.sendall(request)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    head, _, payload = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert "Keys" in json.loads(payload)
'''


def test_nitro_kms_serves_boto3_and_the_vsock_port(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_user=USER_TESTS)
    home = pytester.path / "h"
    result = pytester.runpytest_subprocess(f"--nitro-state-dir={home}", "-p", "no:cacheprovider", timeout=120)
    result.assert_outcomes(passed=5)
    # the session's KMS is gone with the session: no VSOCK listener left behind
    assert not (home / "run" / "parent" / "8000").exists()
