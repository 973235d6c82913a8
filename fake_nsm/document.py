"""The attestation document as a value (nitro-facts §2.1-2.2).

Shared by the signer (``fake_nsm.document_signer``) and the verifier (``fake_nsm.verifier``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

# The order AWS's NSM writes the payload keys in (the Rust struct order, not the CDDL's).
PAYLOAD_KEYS: tuple[str, ...] = (
    "module_id",
    "digest",
    "timestamp",
    "pcrs",
    "certificate",
    "cabundle",
    "public_key",
    "user_data",
    "nonce",
)


@dataclass(frozen=True)
class AttestationDocument:
    """A decoded attestation document payload.

    Attributes:
        module_id: the enclave id, ``i-<17 hex>-enc<16 hex>``.
        digest: always ``"SHA384"`` on Nitro.
        timestamp: milliseconds since the Unix epoch (UTC).
        pcrs: PCR index -> value, exactly the PCRs locked when the document was made.
        certificate: the leaf certificate, DER.
        cabundle: DER certificates, root first.
        public_key, user_data, nonce: the caller's values, or None when absent.
    """

    module_id: str
    digest: str
    timestamp: int
    pcrs: Mapping[int, bytes]
    certificate: bytes
    cabundle: tuple[bytes, ...]
    public_key: bytes | None = None
    user_data: bytes | None = None
    nonce: bytes | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "pcrs", MappingProxyType(dict(sorted(self.pcrs.items()))))
        object.__setattr__(self, "cabundle", tuple(self.cabundle))

    @property
    def is_debug_mode(self) -> bool:
        """True when PCR0, PCR1 and PCR2 are all zero: a debug-mode enclave (§2.5)."""
        return all(not any(self.pcrs.get(i, b"")) and i in self.pcrs for i in (0, 1, 2))

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict: bytes as lower-case hex, ``pcrs`` keyed by index as text."""

        def hex_or_none(value: bytes | None) -> str | None:
            return None if value is None else value.hex()

        return {
            "module_id": self.module_id,
            "digest": self.digest,
            "timestamp": self.timestamp,
            "pcrs": {str(index): value.hex() for index, value in self.pcrs.items()},
            "certificate": self.certificate.hex(),
            "cabundle": [cert.hex() for cert in self.cabundle],
            "public_key": hex_or_none(self.public_key),
            "user_data": hex_or_none(self.user_data),
            "nonce": hex_or_none(self.nonce),
        }
