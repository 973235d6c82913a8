"""An independent COSE implementation (pycose) accepts our documents as it accepts AWS's.

Our signer and verifier share no code with pycose, so this guards against a signer and a
verifier that agree with each other and with nobody else.
"""

from __future__ import annotations

from pathlib import Path

import cbor2
import pytest
from cryptography import x509
from pycose.keys import EC2Key
from pycose.keys.curves import P384
from pycose.messages import Sign1Message

from ca import TestCA
from fake_nsm.document_signer import DocumentSigner

MODULE_ID = "i-0123456789abcdef0-enc0193e7a1b2c3d4e5"


def pycose_verifies(document: bytes) -> bool:
    # Real documents are untagged, and pycose's decode() wants tag 18 (and trips over how
    # recent cbor2 returns tagged arrays), so hand it the decoded COSE_Sign1 array.
    message = Sign1Message.from_cose_obj(list(cbor2.loads(document)), True)
    payload = cbor2.loads(message.payload)
    numbers = x509.load_der_x509_certificate(payload["certificate"]).public_key().public_numbers()
    message.key = EC2Key(
        crv=P384, x=numbers.x.to_bytes(48, "big"), y=numbers.y.to_bytes(48, "big")
    )
    return bool(message.verify_signature())


def test_pycose_verifies_a_genuine_aws_document(aws_vectors: Path) -> None:
    """The check itself is sound: AWS's own document passes it."""
    document = (aws_vectors / "evervault-beta-valid-attestation-doc.cbor").read_bytes()
    assert pycose_verifies(document)


@pytest.mark.parametrize("definite", [False, True], ids=["indefinite-map", "definite-map"])
def test_pycose_verifies_our_documents(tmp_path: Path, definite: bool) -> None:
    signer = DocumentSigner(TestCA.load_or_create(tmp_path / "ca"), MODULE_ID, definite_map=definite)
    document = signer.sign({i: bytes(48) for i in range(16)}, nonce=b"n" * 32)
    assert pycose_verifies(document)


def test_pycose_rejects_our_document_with_a_flipped_signature_byte(tmp_path: Path) -> None:
    signer = DocumentSigner(TestCA.load_or_create(tmp_path / "ca"), MODULE_ID)
    tampered = bytearray(signer.sign({i: bytes(48) for i in range(16)}))
    tampered[-1] ^= 0x01
    assert not pycose_verifies(bytes(tampered))
