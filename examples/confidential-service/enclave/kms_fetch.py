"""Fetch a secret from AWS KMS the way an enclave does on Nitro (stdlib + cryptography).

1. make an RSA-2048 key pair that never leaves enclave memory;
2. ask the NSM for an attestation document carrying its public key (DER SPKI);
3. call KMS ``Decrypt`` with ``Recipient`` over VSOCK (3, 8000), where the parent runs
   ``vsock-proxy 8000 kms.<region>.amazonaws.com 443`` on Nitro (TLS inside the enclave) or
   nitro-emu's local KMS (plain HTTP), signed with SigV4 by the credentials the parent sent;
4. open ``CiphertextForRecipient`` (CMS EnvelopedData) with the private key.

KMS releases the plaintext only when the document verifies and the key policy's
``kms:RecipientAttestation:*`` conditions match its PCRs: the parent never sees it.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import http.client
import json
import ssl
import time
from collections.abc import Callable, Mapping
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from emulator.kms.cms import decrypt_enveloped_data
from emulator.vsock import enclave as vsock_enclave

KMS_VSOCK_PORT = 8000
SERVICE = "kms"


class KmsRefused(Exception):
    """KMS answered with an error: ``code`` is its ``__type`` (e.g. AccessDeniedException)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def sigv4_headers(
    target: str, body: bytes, *, region: str, credentials: Mapping[str, str], now: datetime.datetime
) -> dict[str, str]:
    """The headers of a SigV4-signed KMS JSON request (AWS "Signature Version 4" steps)."""
    amz_date = now.strftime("%Y%m%dT%H%M%SZ")
    day = amz_date[:8]
    headers = {
        "content-type": "application/x-amz-json-1.1",
        "host": f"kms.{region}.amazonaws.com",
        "x-amz-date": amz_date,
        "x-amz-target": target,
    }
    if credentials.get("session_token"):
        headers["x-amz-security-token"] = credentials["session_token"]
    signed = ";".join(sorted(headers))
    canonical = "\n".join([
        "POST", "/", "", "".join(f"{name}:{headers[name]}\n" for name in sorted(headers)), signed,
        hashlib.sha256(body).hexdigest(),
    ])
    scope = f"{day}/{region}/{SERVICE}/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = _hmac(("AWS4" + credentials["secret_access_key"]).encode(), day)
    for part in (region, SERVICE, "aws4_request"):
        key = _hmac(key, part)
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    headers["authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={credentials['access_key_id']}/{scope}, "
        f"SignedHeaders={signed}, Signature={signature}"
    )
    return headers


#: Errors an AWS SDK retries (its "standard" retry mode): throttling and the service's own.
RETRIED = ("ThrottlingException", "KMSInternalException")
ATTEMPTS = 3


def _post(target: str, payload: Mapping[str, Any], *, region: str, credentials: Mapping[str, str],
          tls: bool) -> dict[str, Any]:
    """One KMS call, retried with exponential backoff (0.1 s, 0.2 s) on throttling and internal
    errors as the AWS SDKs do; any other error at once."""
    for attempt in range(ATTEMPTS):
        try:
            return _post_once(target, payload, region=region, credentials=credentials, tls=tls)
        except KmsRefused as error:
            if error.code not in RETRIED or attempt == ATTEMPTS - 1:
                raise
            time.sleep(0.1 * 2**attempt)
    raise AssertionError("unreachable")


def _post_once(target: str, payload: Mapping[str, Any], *, region: str, credentials: Mapping[str, str],
               tls: bool) -> dict[str, Any]:
    body = json.dumps(payload).encode()
    headers = sigv4_headers(target, body, region=region, credentials=credentials,
                            now=datetime.datetime.now(datetime.timezone.utc))
    sock = vsock_enclave.connect_parent(KMS_VSOCK_PORT, timeout=30)
    if tls:  # on Nitro, vsock-proxy forwards raw TCP to kms.<region>.amazonaws.com:443
        sock = ssl.create_default_context().wrap_socket(sock, server_hostname=headers["host"])
    connection = http.client.HTTPConnection(headers["host"], timeout=30)
    connection.sock = sock
    try:
        connection.request("POST", "/", body=body, headers=headers)
        response = connection.getresponse()
        answer = json.loads(response.read() or b"{}")
    finally:
        connection.close()
    if response.status != 200:
        code = str(answer.get("__type", f"HTTP {response.status}")).rsplit("#", 1)[-1]
        raise KmsRefused(code, str(answer.get("message") or answer.get("Message") or ""))
    return dict(answer)


def fetch_secret(
    attest: Callable[[bytes], bytes],
    ciphertext_blob: bytes,
    *,
    region: str,
    credentials: Mapping[str, str],
    tls: bool = False,
) -> bytes:
    """Decrypt ``ciphertext_blob`` with KMS, released only to this attested enclave.

    ``attest(spki)`` returns an NSM attestation document whose ``public_key`` is ``spki``.
    """
    private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    spki = private_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    document = attest(spki)
    answer = _post(
        "TrentService.Decrypt",
        {
            "CiphertextBlob": base64.b64encode(ciphertext_blob).decode(),
            "Recipient": {
                "AttestationDocument": base64.b64encode(document).decode(),
                "KeyEncryptionAlgorithm": "RSAES_OAEP_SHA_256",
            },
        },
        region=region, credentials=credentials, tls=tls,
    )
    if answer.get("Plaintext"):
        raise KmsRefused("UnexpectedPlaintext", "KMS returned the plaintext itself, not CiphertextForRecipient")
    return decrypt_enveloped_data(base64.b64decode(answer["CiphertextForRecipient"]), private_key)
