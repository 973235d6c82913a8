"""The confidential service: the enclave side (stdlib + cbor2 + cryptography only).

At boot it makes an X25519 key pair that never leaves enclave memory. For each connection
on its VSOCK port it answers an ``attest`` request with an NSM attestation document that
binds that public key and the client's nonce, then serves sealed requests (see
``protocol.py``): ``store`` keeps a secret in memory and ``digest`` proves it is there by
returning its SHA-256, both replies sealed back to the requesting client; ``kms-fetch``
gets a secret from AWS KMS the AWS way (``kms_fetch.py``: Decrypt with Recipient, so KMS
releases it only to this enclave's attested image) and keeps it like ``store``.

Runs unchanged on real Nitro (``/dev/nsm``, ``AF_VSOCK``) and in nitro-emu (the NSM socket
and the VSOCK mirror), because it uses ``fake_nsm.client`` and ``emulator.vsock.enclave``.
"""

from __future__ import annotations

import hashlib
import os
import socket
import sys
import threading
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

import kms_fetch
import protocol
from emulator.vsock import enclave as vsock_enclave
from fake_nsm.client import NsmClient


class Service:
    """The enclave's key, its secrets and its NSM."""

    def __init__(self) -> None:
        self.private_key = X25519PrivateKey.generate()
        self.public_der = protocol.public_key_der(self.private_key.public_key())
        self.secrets: dict[str, bytes] = {}
        self.lock = threading.Lock()
        self.nsm: NsmClient | None = None

    def document(self, public_key: bytes, nonce: bytes | None = None) -> bytes:
        """An attestation document binding ``public_key`` (and the caller's nonce)."""
        with self.lock:
            if self.nsm is None:  # opened on first use: the NSM may come up after the app
                self.nsm = NsmClient()
            return self.nsm.get_attestation_doc(nonce=nonce, public_key=public_key)

    def attestation(self, nonce: bytes) -> bytes:
        """A document binding this enclave's session key and the caller's nonce."""
        return self.document(self.public_der, nonce)

    def fetch_from_kms(self, name: str, request: dict[str, Any]) -> dict[str, Any]:
        """``kms-fetch``: Decrypt ``blob`` with KMS (Recipient = this enclave) and keep it."""
        credentials = request.get("credentials")
        if not isinstance(request.get("blob"), bytes) or not isinstance(credentials, dict):
            return {"ok": False, "error": "kms-fetch takes 'blob' (bytes) and 'credentials' (a map)"}
        try:
            secret = kms_fetch.fetch_secret(
                self.document, request["blob"], region=str(request.get("region", "us-east-1")),
                credentials=credentials, tls=bool(request.get("tls", False)),
            )
        except kms_fetch.KmsRefused as error:
            return {"ok": False, "error": f"KMS refused: {error}", "code": error.code}
        except (OSError, ValueError) as error:
            return {"ok": False, "error": f"KMS unreachable or unreadable: {error}"}
        with self.lock:
            self.secrets[name] = secret
        return {"ok": True, "stored": name, "size": len(secret)}

    def execute(self, request: Any) -> dict[str, Any]:
        """Run one decrypted request."""
        if not isinstance(request, dict) or not isinstance(request.get("name"), str):
            return {"ok": False, "error": "a request is a map with an 'op' and a text 'name'"}
        name = request["name"]
        if request.get("op") == "store" and isinstance(request.get("secret"), bytes):
            with self.lock:
                self.secrets[name] = request["secret"]
            return {"ok": True, "stored": name, "size": len(request["secret"])}
        if request.get("op") == "kms-fetch":
            return self.fetch_from_kms(name, request)
        if request.get("op") == "digest":
            with self.lock:
                secret = self.secrets.get(name)
            if secret is None:
                return {"ok": False, "error": f"no secret named {name!r}"}
            return {"ok": True, "name": name, "sha256": hashlib.sha256(secret).digest()}
        return {"ok": False, "error": "unknown op: use 'store' (with 'secret'), 'kms-fetch' or 'digest'"}

    def serve(self, conn: socket.socket) -> None:
        """One client session: attest, then sealed requests until the client hangs up."""
        with conn:
            try:
                hello = protocol.expect(protocol.recv_message(conn), "attest", "nonce")
                document = self.attestation(hello["nonce"])
                protocol.send_message(conn, {"type": "attestation", "document": document})
                while True:
                    try:
                        message = protocol.recv_message(conn)
                    except protocol.ProtocolError as error:
                        if "closed after 0 of 4" in str(error):
                            return
                        raise
                    request, session = protocol.open_request(self.private_key, message)
                    reply = self.execute(request)
                    iv, ciphertext = session.seal(protocol.cbor2.dumps(reply), protocol.REPLY_AAD)
                    protocol.send_message(conn, {"type": "sealed-reply", "iv": iv, "ciphertext": ciphertext})
            except (protocol.ProtocolError, OSError) as error:
                print(f"confidential-service: session ended: {error}", flush=True)
                try:
                    protocol.send_message(conn, {"type": "error", "message": str(error)})
                except OSError:
                    pass


def main() -> int:
    port = int(os.environ.get("SERVICE_PORT", protocol.DEFAULT_PORT))
    service = Service()
    fingerprint = hashlib.sha256(service.public_der).hexdigest()[:16]
    with vsock_enclave.listen(port) as listener:
        print(f"confidential-service: key {fingerprint}, listening on vsock port {port}", flush=True)
        while True:
            conn, _peer = listener.accept()
            threading.Thread(target=service.serve, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    sys.exit(main())
