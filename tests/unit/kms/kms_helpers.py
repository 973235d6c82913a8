"""Constants and helpers shared by the local KMS tests (imported as ``kms_helpers``)."""

from __future__ import annotations

import hashlib
from typing import Any

MODULE_ID = "i-020b6af9246d90e92-enc0183d09086c24190"
#: The enclave's image measurements; PCR3/4 as a parent instance would have them.
PCRS = {index: hashlib.sha384(b"image %d" % index).digest() if index in (0, 1, 2, 3, 4, 8) else bytes(48)
        for index in range(16)}
#: A debug-mode enclave's PCRs: 0, 1, 2 and 8 zero, 3 and 4 kept (nitro-facts §2.5).
DEBUG_PCRS = {index: bytes(48) if index in (0, 1, 2, 8) else value for index, value in PCRS.items()}
PCR0_HEX = PCRS[0].hex()


def recipient(document: bytes, algorithm: str = "RSAES_OAEP_SHA_256") -> dict[str, Any]:
    """A boto3 ``Recipient`` parameter."""
    return {"AttestationDocument": document, "KeyEncryptionAlgorithm": algorithm}
