"""An enclave that gets its secrets from KMS the AWS way, with tools nitro-emu did not write.

- its RSA-2048 key pair: `openssl genpkey`; the public key as DER SubjectPublicKeyInfo;
- its attestation document (with that public key): the NSM, through fake_nsm.client;
- KMS: unmodified boto3 from PyPI, over `socat TCP-LISTEN:8000 -> VSOCK 3:8000` (socat's
  AF_VSOCK through the LD_PRELOAD shim), as an enclave on Nitro reaches vsock-proxy;
- CiphertextForRecipient: opened by `openssl cms -decrypt`.

Requests arrive as one JSON line on VSOCK port 5000: {"op": "decrypt", "blob": B64} or
{"op": "generate_data_key", "key_id": ID}; the answer is one JSON line.
"""

import base64
import json
import socket
import subprocess
import time

import boto3
from botocore.exceptions import ClientError

import vsock_enclave
from fake_nsm.client import NsmClient

KEY = "/tmp/enclave-key.pem"


def run(*command: str, data: bytes | None = None) -> bytes:
    return subprocess.run(command, input=data, capture_output=True, check=True).stdout


def start_relay() -> subprocess.Popen:
    relay = subprocess.Popen(["socat", "TCP-LISTEN:8000,bind=127.0.0.1,fork,reuseaddr", "VSOCK-CONNECT:3:8000"])
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", 8000), timeout=1).close()
            return relay
        except OSError:
            time.sleep(0.05)
    raise SystemExit("socat never listened on 127.0.0.1:8000")


def recipient() -> dict:
    spki = run("openssl", "pkey", "-in", KEY, "-pubout", "-outform", "DER")
    document = NsmClient().get_attestation_doc(public_key=spki)
    return {"AttestationDocument": document, "KeyEncryptionAlgorithm": "RSAES_OAEP_SHA_256"}


def open_for_recipient(envelope: bytes) -> bytes:
    return run("openssl", "cms", "-decrypt", "-inform", "DER", "-inkey", KEY, "-binary", data=envelope)


def handle(kms, request: dict) -> dict:
    try:
        if request["op"] == "decrypt":
            answer = kms.decrypt(CiphertextBlob=base64.b64decode(request["blob"]), Recipient=recipient())
        else:
            answer = kms.generate_data_key(KeyId=request["key_id"], KeySpec="AES_256", Recipient=recipient())
    except ClientError as error:
        return {"error": error.response["Error"]["Code"], "message": error.response["Error"].get("Message", "")}
    reply = {
        "plaintext_field": base64.b64encode(answer.get("Plaintext") or b"").decode(),
        "plaintext": base64.b64encode(open_for_recipient(answer["CiphertextForRecipient"])).decode(),
    }
    if "CiphertextBlob" in answer:
        reply["blob"] = base64.b64encode(answer["CiphertextBlob"]).decode()
    return reply


def main() -> None:
    run("openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", KEY)
    start_relay()
    kms = boto3.client("kms", endpoint_url="http://127.0.0.1:8000", region_name="us-east-1")
    with vsock_enclave.listen(5000) as listener:
        print("kms-client: listening on 5000", flush=True)
        while True:
            conn, _ = listener.accept()
            with conn, conn.makefile("rwb") as stream:
                for line in stream:
                    stream.write(json.dumps(handle(kms, json.loads(line))).encode() + b"\n")
                    stream.flush()


main()
