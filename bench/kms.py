"""Decrypt with Recipient: the local KMS over HTTP against the same work in-process.

Measured in one run, each scenario repeated (median reported):
- baseline: ``KmsBackend.dispatch("Decrypt", ...)`` in-process, one thread: verify the
  attestation document (chain + COSE), evaluate the PCR0 key policy, open the blob
  (AES-GCM), build CiphertextForRecipient (RSA-OAEP-SHA256 + AES-256-CBC);
- HTTP, 1 client / 8 clients: the same request as JSON 1.1 over keep-alive HTTP/1.1 (one
  connection per client, a SigV4-shaped Authorization header), clients in a separate process
  so they do not share the server's GIL;
- boto3, 1 client: unmodified boto3 (signing, retries, parsing) for scale.

Target (issue 11): 8 clients >= 0.5x the in-process rate; p99 reported.

    .venv/bin/python bench/kms.py [--requests 200] [--runs 3]
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import logging
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import _machine  # noqa: E402  # bench/ is on sys.path when run as a script
from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: E402

from ca import TestCA  # noqa: E402
from emulator.kms.models import Caller  # noqa: E402
from emulator.kms.server import KmsServer  # noqa: E402
from fake_nsm.document_signer import DocumentSigner  # noqa: E402

MODULE_ID = "i-0123456789abcdef0-enc0183d09086c24190"
PCRS = {index: bytes([index + 1]) * 48 for index in (0, 1, 2, 3, 4, 8)}
ACCESS_KEY = "AKIDBENCH"
HEADERS = {
    "Content-Type": "application/x-amz-json-1.1",
    "X-Amz-Target": "TrentService.Decrypt",
    "Authorization": f"AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/20260101/us-east-1/kms/aws4_request, "
    "SignedHeaders=content-type;host;x-amz-target, Signature=" + "0" * 64,
}


def _policy(account: str) -> str:
    root = f"arn:aws:iam::{account}:root"
    return json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"AWS": root}, "Action": ["kms:Encrypt", "kms:DescribeKey", "kms:PutKeyPolicy"], "Resource": "*"},
        {"Effect": "Allow", "Principal": {"AWS": root}, "Action": "kms:Decrypt", "Resource": "*",
         "Condition": {"StringEqualsIgnoreCase": {"kms:RecipientAttestation:ImageSha384": PCRS[0].hex()}}},
    ]})


def _setup(server: KmsServer, document: bytes) -> dict[str, Any]:
    """A PCR0-pinned key, a blob under it, and the Decrypt request body (as JSON values)."""
    assert server.backend is not None
    caller = Caller.from_access_key(ACCESS_KEY, server.account)
    key = server.backend.dispatch("CreateKey", caller, {"Policy": _policy(server.account)})["KeyMetadata"]["KeyId"]
    blob = server.backend.dispatch("Encrypt", caller, {"KeyId": key, "Plaintext": b"s" * 32})["CiphertextBlob"]
    return {
        "CiphertextBlob": base64.b64encode(blob).decode(),
        "Recipient": {"AttestationDocument": base64.b64encode(document).decode(),
                      "KeyEncryptionAlgorithm": "RSAES_OAEP_SHA_256"},
    }


def in_process(server: KmsServer, body: dict[str, Any], requests: int) -> float:
    assert server.backend is not None
    caller = Caller.from_access_key(ACCESS_KEY, server.account)
    params = {
        "CiphertextBlob": base64.b64decode(body["CiphertextBlob"]),
        "Recipient": {"AttestationDocument": base64.b64decode(body["Recipient"]["AttestationDocument"]),
                      "KeyEncryptionAlgorithm": "RSAES_OAEP_SHA_256"},
    }
    start = time.perf_counter()
    for _ in range(requests):
        reply = server.backend.dispatch("Decrypt", caller, params)
        assert reply["CiphertextForRecipient"]
    return requests / (time.perf_counter() - start)


def client_main(port: int, clients: int, requests: int, body_path: str) -> None:
    """The separate client process: ``clients`` threads, one keep-alive connection each."""
    body = Path(body_path).read_bytes()
    latencies: list[float] = []
    lock = threading.Lock()
    per_client = requests // clients

    def run() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        mine = []
        for _ in range(per_client):
            began = time.perf_counter()
            connection.request("POST", "/", body=body, headers=HEADERS)
            response = connection.getresponse()
            payload = response.read()
            if response.status != 200:
                raise SystemExit(f"HTTP {response.status}: {payload[:200]!r}")
            mine.append(time.perf_counter() - began)
        connection.close()
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=run) for _ in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    print(json.dumps({"rate": len(latencies) / elapsed, "latencies": latencies}))


def over_http(port: int, clients: int, requests: int, body_path: Path) -> tuple[float, list[float]]:
    command = [sys.executable, __file__, "--client", str(port), str(clients), str(requests), str(body_path)]
    result = subprocess.run(command, capture_output=True, text=True, check=True, timeout=900)
    measured = json.loads(result.stdout)
    return measured["rate"], measured["latencies"]


def with_boto3(server: KmsServer, body: dict[str, Any], requests: int) -> float | None:
    try:
        import boto3
    except ImportError:
        return None
    kms = boto3.client("kms", endpoint_url=server.endpoint_url, region_name="us-east-1",
                       aws_access_key_id=ACCESS_KEY, aws_secret_access_key="x")
    blob = base64.b64decode(body["CiphertextBlob"])
    recipient = {"AttestationDocument": base64.b64decode(body["Recipient"]["AttestationDocument"]),
                 "KeyEncryptionAlgorithm": "RSAES_OAEP_SHA_256"}
    kms.decrypt(CiphertextBlob=blob, Recipient=recipient)  # warm up: endpoint resolution
    start = time.perf_counter()
    for _ in range(requests):
        kms.decrypt(CiphertextBlob=blob, Recipient=recipient)
    return requests / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200, help="requests per scenario and run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--client", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        port, clients, requests, body_path = args.client
        client_main(int(port), int(clients), int(requests), body_path)
        return
    logging.disable(logging.INFO)  # one log line per request would be measured too
    print("machine:", _machine.machine(("cryptography",), load=True))
    with tempfile.TemporaryDirectory(prefix="kms-bench-") as work:
        ca = TestCA.load_or_create(Path(work) / "ca")
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        spki = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        document = DocumentSigner(ca, MODULE_ID).sign(PCRS, public_key=spki)
        # The freshness window is 5 minutes: long enough for every run below.
        with KmsServer(trusted_roots=[ca.root_der]) as server:
            body = _setup(server, document)
            body_path = Path(work) / "body.json"
            body_path.write_text(json.dumps(body))
            base, one, eight, sdk = [], [], [], []
            latencies_1: list[float] = []
            latencies_8: list[float] = []
            for _ in range(args.runs):
                base.append(in_process(server, body, args.requests))
                rate, lat = over_http(server.port, 1, args.requests, body_path)
                one.append(rate)
                latencies_1 += lat
                rate, lat = over_http(server.port, 8, args.requests, body_path)
                eight.append(rate)
                latencies_8 += lat
                boto = with_boto3(server, body, max(20, args.requests // 4))
                if boto is not None:
                    sdk.append(boto)
    b, r1, r8 = statistics.median(base), statistics.median(one), statistics.median(eight)
    print(f"Decrypt with Recipient, {args.requests} requests x {args.runs} runs (medians)")
    print(f"  in-process backend      {b:8.1f} req/s")
    print(f"  HTTP, 1 client          {r1:8.1f} req/s  = {r1 / b:.2f}x  p50 {_machine.percentile(latencies_1, 0.5) * 1e3:.2f} ms"
          f"  p99 {_machine.percentile(latencies_1, 0.99) * 1e3:.2f} ms")
    print(f"  HTTP, 8 clients         {r8:8.1f} req/s  = {r8 / b:.2f}x  p50 {_machine.percentile(latencies_8, 0.5) * 1e3:.2f} ms"
          f"  p99 {_machine.percentile(latencies_8, 0.99) * 1e3:.2f} ms   (target >= 0.5x)")
    if sdk:
        s = statistics.median(sdk)
        print(f"  boto3, 1 client         {s:8.1f} req/s  = {s / b:.2f}x")


if __name__ == "__main__":
    main()
