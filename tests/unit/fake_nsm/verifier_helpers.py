"""Helpers for the verifier tests: the project's signer, and a local chain to bend.

Documents "we" make come from ``ca.TestCA`` + ``fake_nsm.document_signer`` (:func:`signer`).

The local chain mirrors nitro-facts §2.3 (root, regional pathLen 2, zonal pathLen 1, instance
pathLen 0 keyCertSign-only, leaf CA:FALSE digitalSignature), so that chain constraints can
be bent one at a time. Documents made here are signed exactly as Nitro signs them (§2.2).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import cbor2
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from ca import TestCA
from fake_nsm.document_signer import DocumentSigner

ES384_PROTECTED = b"\xa1\x01\x38\x22"  # {1: -35}
NOW = datetime(2026, 1, 15, 12, 0, 0, tzinfo=timezone.utc)
MODULE_ID = "i-0123456789abcdef0-enc0193e7a1b2c3d4e5"
PCRS = {i: (hashlib.sha384(b"pcr%d" % i).digest() if i in (0, 1, 2, 3, 4, 8) else bytes(48))
        for i in range(16)}
DEBUG_PCRS = {i: (PCRS[i] if i in (3, 4) else bytes(48)) for i in range(16)}

_KEY_CACHE: list[ec.EllipticCurvePrivateKey] = []


def p384_key(slot: int) -> ec.EllipticCurvePrivateKey:
    """Deterministic-per-run P-384 keys (generated once, reused across tests)."""
    while len(_KEY_CACHE) <= slot:
        _KEY_CACHE.append(ec.generate_private_key(ec.SECP384R1()))
    return _KEY_CACHE[slot]


@dataclass(frozen=True)
class CertSpec:
    """How to issue one certificate of the chain (override fields to bend a constraint)."""

    common_name: str
    ca: bool | None
    path_length: int | None
    key_cert_sign: bool
    digital_signature: bool
    lifetime: timedelta
    start: timedelta = timedelta(seconds=-3)
    extra: tuple[tuple[x509.ExtensionType, bool], ...] = ()
    key: Callable[[], Any] | None = None  # public-key factory; default: the slot's P-384 key


AWS_SHAPE: tuple[CertSpec, ...] = (
    CertSpec("TEST nitro-emu root", True, None, True, True, timedelta(days=3650), timedelta(days=-1)),
    CertSpec("TEST regional", True, 2, True, True, timedelta(hours=481), timedelta(hours=-1)),
    CertSpec("TEST zonal", True, 1, True, True, timedelta(hours=140), timedelta(hours=-1)),
    CertSpec("TEST instance", True, 0, True, False, timedelta(hours=24), timedelta(hours=-1)),
    CertSpec(f"{MODULE_ID}.test.aws", False, None, False, True, timedelta(hours=3)),
)


@dataclass(frozen=True)
class TestChain:
    """DER certificates (root first, leaf last) and the leaf's private key."""

    ders: tuple[bytes, ...]
    leaf_key: ec.EllipticCurvePrivateKey = field(repr=False)

    @property
    def root_der(self) -> bytes:
        return self.ders[0]

    @property
    def root_pem(self) -> bytes:
        return x509.load_der_x509_certificate(self.ders[0]).public_bytes(Encoding.PEM)

    @property
    def cabundle(self) -> tuple[bytes, ...]:
        return self.ders[:-1]

    @property
    def leaf_der(self) -> bytes:
        return self.ders[-1]


def build_chain(
    specs: tuple[CertSpec, ...] = AWS_SHAPE,
    *,
    now: datetime = NOW,
    key_offset: int = 0,
    signer_override: Mapping[int, int] | None = None,
) -> TestChain:
    """Issue ``specs`` in order, each signed by the previous one (the first self-signed).

    Args:
        key_offset: shifts the key slots, for a chain with other keys.
        signer_override: position -> key slot that signs it instead of its issuer's key.
    """
    ders: list[bytes] = []
    names: list[x509.Name] = []
    keys: list[ec.EllipticCurvePrivateKey] = []
    for position, spec in enumerate(specs):
        key = p384_key(position + key_offset)
        public = spec.key() if spec.key else key.public_key()
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, spec.common_name)])
        issuer_name = names[-1] if names else name
        signer = keys[-1] if keys else key
        if signer_override and position in signer_override:
            signer = p384_key(signer_override[position])
        builder = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(issuer_name)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now + spec.start)
            .not_valid_after(now + spec.start + spec.lifetime)
        )
        if spec.ca is not None:
            builder = builder.add_extension(
                x509.BasicConstraints(ca=spec.ca, path_length=spec.path_length), critical=True
            )
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=spec.digital_signature,
                content_commitment=not spec.ca,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=spec.key_cert_sign,
                crl_sign=bool(spec.ca) and spec.digital_signature,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=bool(spec.ca),
        )
        for extension, critical in spec.extra:
            builder = builder.add_extension(extension, critical=critical)
        cert = builder.sign(signer, hashes.SHA384())
        ders.append(cert.public_bytes(Encoding.DER))
        names.append(name)
        keys.append(key)
    return TestChain(tuple(ders), keys[-1])


def bend(position: int, **changes: Any) -> tuple[CertSpec, ...]:
    """AWS_SHAPE with one certificate's spec changed."""
    specs = list(AWS_SHAPE)
    specs[position] = replace(specs[position], **changes)
    return tuple(specs)


def encode_map(fields: Mapping[Any, Any], *, definite: bool) -> bytes:
    """CBOR map bytes; ``definite=False`` gives the ``bf ... ff`` form of 2025+ documents."""
    if definite:
        return cbor2.dumps(dict(fields))
    body = b"".join(cbor2.dumps(key) + cbor2.dumps(value) for key, value in fields.items())
    return b"\xbf" + body + b"\xff"


def payload_fields(
    chain: TestChain,
    *,
    pcrs: Mapping[int, bytes] = PCRS,
    timestamp_ms: int | None = None,
    nonce: bytes | None = None,
    user_data: bytes | None = None,
    public_key: bytes | None = None,
) -> dict[str, Any]:
    """The payload map in AWS's key order, absent optionals as null (nitro-facts §2.2)."""
    if timestamp_ms is None:
        timestamp_ms = int(NOW.timestamp() * 1000)
    return {
        "module_id": MODULE_ID,
        "digest": "SHA384",
        "timestamp": timestamp_ms,
        "pcrs": dict(pcrs),
        "certificate": chain.leaf_der,
        "cabundle": list(chain.cabundle),
        "public_key": public_key,
        "user_data": user_data,
        "nonce": nonce,
    }


def sign_cose(
    payload: bytes,
    key: ec.EllipticCurvePrivateKey,
    *,
    protected: bytes = ES384_PROTECTED,
    unprotected: Mapping[Any, Any] | None = None,
    tagged: bool = False,
) -> bytes:
    """A COSE_Sign1 over ``payload``, raw r || s, exactly as Nitro writes it."""
    to_sign = cbor2.dumps(["Signature1", protected, b"", payload])
    r, s = decode_dss_signature(key.sign(to_sign, ec.ECDSA(hashes.SHA384())))
    signature = r.to_bytes(48, "big") + s.to_bytes(48, "big")
    message = [protected, dict(unprotected or {}), payload, signature]
    return cbor2.dumps(cbor2.CBORTag(18, message) if tagged else message)


def make_document(chain: TestChain, *, definite: bool = True, tagged: bool = False,
                  **fields: Any) -> bytes:
    """A signed document from ``chain``'s leaf (see :func:`payload_fields`)."""
    payload = encode_map(payload_fields(chain, **fields), definite=definite)
    return sign_cose(payload, chain.leaf_key, tagged=tagged)


def make_test_ca(directory: Path) -> TestCA:
    """The project's test CA in ``directory``, its clock frozen at :data:`NOW`."""
    return TestCA.load_or_create(directory, clock=lambda: NOW)


def signer(ca: TestCA, *, definite: bool) -> DocumentSigner:
    """The project's document signer for :data:`MODULE_ID`, its clock frozen at :data:`NOW`."""
    return DocumentSigner(ca, MODULE_ID, definite_map=definite, clock=lambda: NOW)
