"""The JSON 1.1 wire protocol with a raw HTTP client: errors, auth, robustness, logging."""

from __future__ import annotations

import base64
import http.client
import json
import logging
import subprocess
import sys
from typing import Any

import pytest

import emulator.kms
from emulator.kms.server import KmsServer

SIGNED = ("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20260101/us-east-1/kms/aws4_request, "
          "SignedHeaders=host;x-amz-date;x-amz-target, Signature=00")


def call(server: KmsServer, target: str | None, body: bytes | str, *,
         authorization: str | None = SIGNED, method: str = "POST",
         connection: http.client.HTTPConnection | None = None) -> tuple[int, dict[str, Any]]:
    conn = connection or http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    headers = {"Content-Type": "application/x-amz-json-1.1"}
    if target is not None:
        headers["X-Amz-Target"] = target
    if authorization is not None:
        headers["Authorization"] = authorization
    conn.request(method, "/", body=body, headers=headers)
    response = conn.getresponse()
    payload = json.loads(response.read() or b"{}")
    assert response.getheader("Content-Type") == "application/x-amz-json-1.1"
    if connection is None:
        conn.close()
    return response.status, payload


def test_protocol_errors_are_aws_shaped_and_the_server_keeps_serving(kms_server: KmsServer) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", kms_server.port, timeout=10)  # one keep-alive connection
    cases = [
        ("TrentService.ListKeys", b"{not json", "SerializationException"),
        ("TrentService.ListKeys", b"[1, 2]", "SerializationException"),
        ("TrentService.NoSuchOperation", b"{}", "UnknownOperationException"),
        ("DynamoDB_20120810.ListTables", b"{}", "UnknownOperationException"),
        ("TrentService.GenerateRandom", b'{"NumberOfBytes": "12"}', "SerializationException"),
        ("TrentService.GenerateRandom", b'{"NumberOfBytes": true}', "SerializationException"),
        ("TrentService.Encrypt", b'{"KeyId": 5, "Plaintext": "eA=="}', "SerializationException"),
        ("TrentService.Encrypt", b'{"KeyId": "k", "Plaintext": "***"}', "SerializationException"),
        ("TrentService.Decrypt", b'{"CiphertextBlob": "eA==", "EncryptionContext": {"a": 1}}', "SerializationException"),
        ("TrentService.Decrypt", b'{"CiphertextBlob": "eA==", "Recipient": "doc"}', "SerializationException"),
        ("TrentService.GenerateRandom", b'{"NumberOfBytes": 5000}', "ValidationException"),
        ("TrentService.Decrypt", b'{"CiphertextBlob": "eA=="}', "InvalidCiphertextException"),
    ]
    for target, body, expected in cases:
        status, payload = call(kms_server, target, body, connection=conn)
        assert (status, payload["__type"]) == (400, expected), (target, body, payload)
        assert set(payload) <= {"__type", "message"}
    status, payload = call(kms_server, "TrentService.GenerateRandom", b'{"NumberOfBytes": "12"}', connection=conn)
    assert "NumberOfBytes" in payload["message"]
    status, payload = call(kms_server, "TrentService.GenerateRandom", b'{"NumberOfBytes": 16}', connection=conn)
    assert status == 200 and len(base64.b64decode(payload["Plaintext"])) == 16
    conn.close()


def test_authentication(kms_server: KmsServer) -> None:
    status, payload = call(kms_server, "TrentService.ListKeys", b"{}", authorization=None)
    assert (status, payload) == (400, {"__type": "MissingAuthenticationTokenException", "message": "Missing Authentication Token"})
    for header in ("Basic dXNlcjpwYXNz", "AWS4-HMAC-SHA256 Signature=00"):
        status, payload = call(kms_server, "TrentService.ListKeys", b"{}", authorization=header)
        assert (status, payload["__type"]) == (400, "IncompleteSignatureException")
    status, payload = call(kms_server, "TrentService.CreateKey", b"{}")
    assert status == 200 and payload["KeyMetadata"]["KeyState"] == "Enabled"


def test_unexpected_exceptions_are_internal_errors_and_logged_without_secrets(
    kms_server: KmsServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    assert kms_server.backend is not None
    caplog.set_level(logging.INFO, logger="emulator.kms")
    status, payload = call(kms_server, "TrentService.CreateKey", b"{}")
    key_id = payload["KeyMetadata"]["KeyId"]
    secret = base64.b64encode(b"TOP-SECRET-PLAINTEXT").decode()
    status, payload = call(kms_server, "TrentService.Encrypt", json.dumps({"KeyId": key_id, "Plaintext": secret}))
    blob = payload["CiphertextBlob"]
    status, payload = call(kms_server, "TrentService.Decrypt", json.dumps({"CiphertextBlob": blob}))
    assert base64.b64decode(payload["Plaintext"]) == b"TOP-SECRET-PLAINTEXT"

    def boom(*args: object) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr(kms_server.backend, "dispatch", boom)
    status, payload = call(kms_server, "TrentService.ListKeys", b"{}")
    assert (status, payload["__type"]) == (500, "KMSInternalException")
    monkeypatch.undo()
    status, _ = call(kms_server, "TrentService.ListKeys", b"{}")
    assert status == 200

    text = caplog.text
    material = kms_server.backend.resolve(key_id, allow_alias=False).material
    assert "TOP-SECRET" not in text and secret not in text and blob not in text
    assert material.hex() not in text and base64.b64encode(material).decode() not in text
    assert "Decrypt 200" in text and "ListKeys 500 KMSInternalException" in text


def test_get_is_an_unknown_operation(kms_server: KmsServer) -> None:
    status, payload = call(kms_server, "TrentService.ListKeys", b"", method="GET")
    assert (status, payload["__type"]) == (400, "UnknownOperationException")


def test_server_lifecycle() -> None:
    server = KmsServer()
    with pytest.raises(emulator.kms.KmsServerError):
        server.port  # noqa: B018 - not started
    with server:
        port = server.port
        assert server.endpoint_url == f"http://127.0.0.1:{port}"
        with pytest.raises(emulator.kms.KmsServerError, match="cannot listen"):
            KmsServer(port=port).start()
    server.stop()  # twice is fine


def test_stop_ends_keep_alive_connections() -> None:
    with KmsServer() as server:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
        assert call(server, "TrentService.ListKeys", b"{}", connection=conn)[0] == 200
    with pytest.raises((http.client.HTTPException, OSError)):
        call(server, "TrentService.ListKeys", b"{}", connection=conn)
    conn.close()


def test_public_api_is_sorted_lazy_and_resolves() -> None:
    assert list(emulator.kms.__all__) == sorted(emulator.kms.__all__)
    for name in emulator.kms.__all__:
        assert getattr(emulator.kms, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        emulator.kms.nope  # noqa: B018
    code = "import sys, emulator.kms; print(any(m.startswith('emulator.kms.') for m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
