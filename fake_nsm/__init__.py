"""The fake Nitro Secure Module: wire codec, device, socket server, client, documents.

    >>> from fake_nsm import NsmClient                    # inside an enclave
    >>> document = NsmClient().get_attestation_doc(nonce=b"...")
    >>> from fake_nsm import verify_attestation_document  # on the client side
    >>> verify_attestation_document(document, trusted_roots=[root_pem], nonce=b"...")

Names are imported lazily (PEP 562), so ``import fake_nsm.client`` inside an enclave image
that has only Python and cbor2 never pulls in ``cryptography`` or ``pycose``.

Errors: :class:`NsmError` (device, server and client; one subclass per AWS ErrorCode) and
:class:`VerificationError` (one subclass per failed check); the tree is drawn in
:mod:`fake_nsm.errors`.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    "AWS_NITRO_ROOT_G1_FINGERPRINT": "fake_nsm.aws_root",
    "AWS_NITRO_ROOT_G1_PEM": "fake_nsm.aws_root",
    "AttestationDocument": "fake_nsm.document",
    "ChainCache": "fake_nsm.cert_chain",
    "DocumentSigner": "fake_nsm.document_signer",
    "NsmClient": "fake_nsm.client",
    "NsmDevice": "fake_nsm.device",
    "NsmError": "fake_nsm.errors",
    "NsmServer": "fake_nsm.server",
    "VerificationError": "fake_nsm.errors",
    "read_unverified_document": "fake_nsm.verifier",
    "sign_document": "fake_nsm.document_signer",
    "verify_attestation_document": "fake_nsm.verifier",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'fake_nsm' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
