"""The confidential service: the parent side.

Connects to the enclave over VSOCK, asks for an attestation document bound to a fresh nonce,
and sends a secret only when the document

1. verifies against the trusted root (the test CA's in nitro-emu, AWS's on real Nitro) and
   carries our nonce,
2. does not come from a debug-mode enclave (PCR0-2 all zero: anyone could read its memory),
3. shows exactly the PCRs that ``build-enclave`` printed for the image we reviewed.

Otherwise it refuses, with a message that says which check failed. Usage::

    python client.py --cid 16 --root root.pem --pcrs measurements.json --secret "s3cr3t"

``--pcrs`` takes build-enclave's JSON output (``{"Measurements": {"PCR0": ...}}``);
``--eif`` reads the measurements from the EIF instead. Exit status: 0 served, 2 refused,
1 any other failure.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import secrets
import socket
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import protocol  # noqa: E402  (beside this file; shared with the enclave)

REFUSED_STATUS = 2


class Refused(Exception):
    """The client refused to send its secret; the message names the failed check."""


@dataclass(frozen=True)
class Transcript:
    """What one session established."""

    module_id: str
    pcrs: Mapping[int, bytes]
    key_fingerprint: str
    stored_size: int
    digest_matches: bool


def load_expected_pcrs(*, pcrs_json: Path | None = None, eif: Path | None = None) -> dict[int, bytes]:
    """PCR index -> value from build-enclave's JSON output or from an EIF."""
    if eif is not None:
        from emulator.eif import read_eif

        return read_eif(eif).measurements.pcrs()
    if pcrs_json is None:
        raise ValueError("give the expected PCRs: pcrs_json= (build-enclave output) or eif=")
    try:
        data = json.loads(Path(pcrs_json).read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot read the expected PCRs from {pcrs_json}: {error}") from error
    return _pcrs_from_json(data)


def _pcrs_from_json(data: Any) -> dict[int, bytes]:
    measurements = data.get("Measurements", data) if isinstance(data, Mapping) else None
    if not isinstance(measurements, Mapping):
        raise ValueError("expected a JSON object like build-enclave's {\"Measurements\": {\"PCR0\": ...}}")
    pcrs = {}
    for key, value in measurements.items():
        if key.startswith("PCR") and key[3:].isdigit():
            pcrs[int(key[3:])] = bytes.fromhex(value)
    if not {0, 1, 2} <= pcrs.keys():
        raise ValueError(f"the measurements lack PCR0, PCR1 or PCR2: {sorted(pcrs)}")
    return pcrs


def check_document(
    document_bytes: bytes, *, trusted_root: bytes, expected_pcrs: Mapping[int, bytes], nonce: bytes
) -> Any:
    """Verify the document and apply the client's policy; return the AttestationDocument."""
    from fake_nsm.errors import VerificationError
    from fake_nsm.verifier import verify_attestation_document

    try:
        # Debug mode is refused below with its own message, so let the verifier pass it.
        document = verify_attestation_document(
            document_bytes, trusted_roots=[trusted_root], nonce=nonce, allow_debug=True
        )
    except VerificationError as error:
        raise Refused(f"the attestation document failed verification: {error}") from error
    if document.is_debug_mode:
        raise Refused(
            "the enclave runs in debug mode (PCR0-2 are zero): its memory and console are "
            "readable from the parent, so no secret is sent; run it without --debug-mode"
        )
    for index, expected in sorted(expected_pcrs.items()):
        actual = document.pcrs.get(index)
        if actual is None or not hmac.compare_digest(actual, expected):
            shown = actual.hex() if actual is not None else "absent"
            raise Refused(
                f"PCR{index} differs from the reviewed build: expected {expected.hex()}, the "
                f"enclave reports {shown}; it does not run the image you built, so no secret is sent"
            )
    if document.public_key is None:
        raise Refused("the attestation document binds no public_key to encrypt to")
    return document


@dataclass(frozen=True)
class Session:
    """An attested connection: the verified document and a sealed request/reply call."""

    document: Any
    fingerprint: str
    call: Callable[[dict[str, Any]], dict[str, Any]]


def attest_session(
    sock: socket.socket,
    *,
    trusted_root: bytes,
    expected_pcrs: Mapping[int, bytes],
    say: Callable[[str], None] = print,
) -> Session:
    """Attest the enclave on this connection; sealed requests then go to its key only."""
    nonce = secrets.token_bytes(protocol.NONCE_SIZE)
    protocol.send_message(sock, {"type": "attest", "nonce": nonce})
    reply = protocol.expect(protocol.recv_message(sock), "attestation", "document")
    document = check_document(reply["document"], trusted_root=trusted_root, expected_pcrs=expected_pcrs, nonce=nonce)
    fingerprint = hashlib.sha256(document.public_key).hexdigest()[:16]
    say(f"verified: signature chain to the trusted root, nonce {nonce.hex()[:16]}..., not debug mode")
    for index in sorted(expected_pcrs):
        say(f"  PCR{index} {document.pcrs[index].hex()} matches the build")
    say(f"enclave {document.module_id} holds key {fingerprint}")
    enclave_key = protocol.load_public_key(document.public_key)

    def call(request: dict[str, Any]) -> dict[str, Any]:
        message, session = protocol.seal_request(enclave_key, request)
        protocol.send_message(sock, message)
        sealed = protocol.expect(protocol.recv_message(sock), "sealed-reply", "iv", "ciphertext")
        answer = protocol.cbor2.loads(session.open(sealed["iv"], sealed["ciphertext"], protocol.REPLY_AAD))
        if not isinstance(answer, dict) or not answer.get("ok"):
            error = answer.get("error") if isinstance(answer, dict) else answer
            raise protocol.ProtocolError(f"the enclave refused the request: {error}")
        return answer

    return Session(document, fingerprint, call)


def run_session(
    sock: socket.socket,
    *,
    trusted_root: bytes,
    expected_pcrs: Mapping[int, bytes],
    secret: bytes,
    name: str = "demo",
    say: Callable[[str], None] = print,
) -> Transcript:
    """Attest the enclave on this connection, then store the secret and check its digest."""
    session = attest_session(sock, trusted_root=trusted_root, expected_pcrs=expected_pcrs, say=say)
    stored = session.call({"op": "store", "name": name, "secret": secret})
    say(f"sent secret {name!r} sealed to that key; the enclave stored {stored['size']} bytes")
    return _check_digest(session, name, hashlib.sha256(secret).digest(), stored["size"], say)


def run_kms_session(
    sock: socket.socket,
    *,
    trusted_root: bytes,
    expected_pcrs: Mapping[int, bytes],
    blob: bytes,
    credentials: Mapping[str, str],
    expected_sha256: bytes,
    region: str = "us-east-1",
    name: str = "kms",
    say: Callable[[str], None] = print,
) -> Transcript:
    """Attest the enclave, then have it fetch ``blob``'s plaintext from KMS itself.

    The parent holds only the ciphertext blob (and credentials); KMS releases the plaintext
    to the enclave alone, as CiphertextForRecipient, when the key policy's PCR conditions
    match the enclave's document. ``expected_sha256`` checks what the enclave got.
    """
    session = attest_session(sock, trusted_root=trusted_root, expected_pcrs=expected_pcrs, say=say)
    stored = session.call(
        {"op": "kms-fetch", "name": name, "blob": blob, "credentials": dict(credentials), "region": region}
    )
    say(f"the enclave fetched {name!r} from KMS itself (Decrypt with Recipient): {stored['size']} bytes")
    return _check_digest(session, name, expected_sha256, stored["size"], say)


def _check_digest(session: Session, name: str, expected: bytes, size: int, say: Callable[[str], None]) -> Transcript:
    digest = session.call({"op": "digest", "name": name})
    matches = hmac.compare_digest(digest["sha256"], expected)
    say(f"round trip: the enclave's SHA-256 of the secret {'matches' if matches else 'DIFFERS'}")
    document = session.document
    return Transcript(document.module_id, dict(document.pcrs), session.fingerprint, size, matches)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cid", type=int, required=True, help="the enclave's CID")
    parser.add_argument("--port", type=int, default=protocol.DEFAULT_PORT)
    parser.add_argument("--root", type=Path, required=True, help="trusted root certificate (PEM or DER)")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--pcrs", type=Path, help="build-enclave's JSON output")
    group.add_argument("--eif", type=Path, help="the EIF that should be running")
    parser.add_argument("--secret", default=os.environ.get("DEMO_SECRET", "correct horse battery staple"))
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the enclave")
    parser.add_argument(
        "--kms", metavar="URL",
        help="then also the AWS way: a KMS key pinned to PCR0 at this endpoint (boto3), whose "
        "secret the enclave fetches itself with Decrypt + Recipient",
    )
    args = parser.parse_args(argv)
    from emulator import vsock

    try:
        expected = load_expected_pcrs(pcrs_json=args.pcrs, eif=args.eif)
        root = args.root.read_bytes()
        sock = _connect_when_ready(vsock.connect, args.cid, args.port, args.timeout)
        with sock:
            transcript = run_session(sock, trusted_root=root, expected_pcrs=expected, secret=args.secret.encode())
        if args.kms and transcript.digest_matches:
            with vsock.connect(args.cid, args.port, timeout=args.timeout) as sock:
                transcript = kms_session(sock, args.kms, root, expected, args.secret.encode())
    except Refused as error:
        print(f"REFUSED: {error}", file=sys.stderr)
        return REFUSED_STATUS
    except (OSError, ValueError, protocol.ProtocolError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0 if transcript.digest_matches else 1


KMS_CREDENTIALS = {"access_key_id": "AKIDEXAMPLEPARENT", "secret_access_key": "example-only"}


def kms_session(sock: socket.socket, endpoint: str, root: bytes, expected: Mapping[int, bytes], secret: bytes) -> Transcript:
    """Put ``secret`` under a new KMS key whose policy pins PCR0; the enclave fetches it."""
    import boto3

    kms = boto3.client("kms", endpoint_url=endpoint, region_name="us-east-1",
                       aws_access_key_id=KMS_CREDENTIALS["access_key_id"],
                       aws_secret_access_key=KMS_CREDENTIALS["secret_access_key"])
    metadata = kms.create_key(Description="confidential-service")["KeyMetadata"]
    key_id, root_arn = metadata["KeyId"], f"arn:aws:iam::{metadata['AWSAccountId']}:root"
    policy = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"AWS": root_arn}, "Resource": "*",
         "Action": ["kms:Encrypt", "kms:DescribeKey", "kms:PutKeyPolicy", "kms:GetKeyPolicy"]},
        {"Effect": "Allow", "Principal": {"AWS": root_arn}, "Resource": "*", "Action": "kms:Decrypt",
         "Condition": {"StringEqualsIgnoreCase": {"kms:RecipientAttestation:ImageSha384": expected[0].hex()}}},
    ]}
    kms.put_key_policy(KeyId=key_id, PolicyName="default", Policy=json.dumps(policy))
    blob = kms.encrypt(KeyId=key_id, Plaintext=secret)["CiphertextBlob"]
    print(f"KMS key {key_id} releases only to PCR0 {expected[0].hex()[:16]}...; the parent keeps the blob")
    return run_kms_session(sock, trusted_root=root, expected_pcrs=expected, blob=blob,
                           credentials=KMS_CREDENTIALS, expected_sha256=hashlib.sha256(secret).digest())


def _connect_when_ready(connect: Callable[..., socket.socket], cid: int, port: int, timeout: float) -> socket.socket:
    """Connect, retrying while the enclave boots (no listener yet), up to ``timeout`` s."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        try:
            return connect(cid, port, timeout=timeout)
        except (ConnectionRefusedError, FileNotFoundError, OSError) as error:
            if time.monotonic() >= deadline:
                raise OSError(f"no enclave answers on vsock ({cid}, {port}) after {timeout:.0f} s: {error}") from error
            time.sleep(0.2)


if __name__ == "__main__":
    sys.exit(main())
