"""Injected KMS faults as unmodified boto3 meets them: retried throttling, AWS's errors, drops."""

from __future__ import annotations

import http.client
from typing import Any

import pytest

from emulator.kms.errors import ValidationException
from emulator.kms.faults import kms_fault_control
from emulator.kms.server import KmsServer

boto3 = pytest.importorskip("boto3")
from botocore.config import Config  # noqa: E402
from botocore.exceptions import ClientError, ConnectionClosedError, EndpointConnectionError  # noqa: E402


def client(server: KmsServer, attempts: int) -> Any:
    return boto3.client(
        "kms", endpoint_url=server.endpoint_url, region_name="us-east-1",
        aws_access_key_id="AKIDFAULTS", aws_secret_access_key="x",
        config=Config(retries={"mode": "standard", "total_max_attempts": attempts}),  # the first call included
    )


def test_boto3_retries_a_throttled_call_and_then_succeeds(kms_server: KmsServer) -> None:
    faults = kms_fault_control(kms_server.faults)
    kms = client(kms_server, attempts=3)
    key = kms.create_key()["KeyMetadata"]["KeyId"]
    faults.add("Encrypt", error="ThrottlingException", count=2)
    answer = kms.encrypt(KeyId=key, Plaintext=b"x")
    assert answer["CiphertextBlob"] and answer["ResponseMetadata"]["RetryAttempts"] == 2
    assert faults.armed() == []


@pytest.mark.parametrize(
    ("code", "status", "words"),
    [("ThrottlingException", 400, "Rate exceeded"), ("KMSInternalException", 500, "internal error"),
     ("DisabledException", 400, "is disabled."), ("KMSInvalidStateException", 400, "is pending deletion.")],
)
def test_each_injected_error_reads_as_aws_gives_it(kms_server: KmsServer, code: str, status: int, words: str) -> None:
    kms = client(kms_server, attempts=1)
    key = kms.create_key()["KeyMetadata"]["KeyId"]
    blob = kms.encrypt(KeyId=key, Plaintext=b"x")["CiphertextBlob"]
    kms_fault_control(kms_server.faults).add("Decrypt", error=code, count=1)
    with pytest.raises(ClientError) as refused:
        kms.decrypt(CiphertextBlob=blob, KeyId=key)
    error = refused.value.response
    assert error["Error"]["Code"] == code and words in error["Error"]["Message"]
    assert error["ResponseMetadata"]["HTTPStatusCode"] == status
    if code in ("DisabledException", "KMSInvalidStateException"):
        assert key in error["Error"]["Message"]
    assert kms.decrypt(CiphertextBlob=blob)["Plaintext"] == b"x"  # one call only


def test_a_dropped_answer_is_a_transport_error(kms_server: KmsServer) -> None:
    kms = client(kms_server, attempts=1)
    kms_fault_control(kms_server.faults).add("ListKeys", drop=True, count=1)
    with pytest.raises((ConnectionClosedError, EndpointConnectionError)):
        kms.list_keys()
    assert "Keys" in kms.list_keys()  # the next call is served


def test_a_truncated_answer_is_half_a_body(kms_server: KmsServer) -> None:
    """The server announces the whole body and sends half: an HTTP client sees IncompleteRead;
    boto3 (1.44) hands back a reply without its members, which code must not trust."""
    faults = kms_fault_control(kms_server.faults)
    faults.add("ListKeys", truncate=True, count=1)
    connection = http.client.HTTPConnection("127.0.0.1", kms_server.port, timeout=10)
    connection.request("POST", "/", body=b"{}", headers={
        "X-Amz-Target": "TrentService.ListKeys", "Content-Type": "application/x-amz-json-1.1",
        "Authorization": "AWS4-HMAC-SHA256 Credential=AKIDRAW/20261203/us-east-1/kms/aws4_request, "
                         "SignedHeaders=host, Signature=00"})
    response = connection.getresponse()
    with pytest.raises(http.client.IncompleteRead):
        response.read()
    connection.close()
    faults.add("ListKeys", truncate=True, count=1)
    kms = client(kms_server, attempts=1)
    assert "Keys" not in kms.list_keys()
    assert "Keys" in kms.list_keys()


def test_unknown_operations_and_codes_are_refused_with_the_choices(kms_server: KmsServer) -> None:
    faults = kms_fault_control(kms_server.faults)
    with pytest.raises(ValidationException, match="unknown KMS operation 'Decrypted'.*Decrypt"):
        faults.add("Decrypted", error="ThrottlingException")
    with pytest.raises(ValidationException, match="ThrottlingException"):
        faults.add("Decrypt", error="SlowDown")
    assert faults.armed() == []
