"""Signing an EIF and checking its signature (nitro-facts §3.4; cli ``docs/image_signing.md``).

The signature section is ``serde_cbor`` of ``Vec<PcrSignature>`` with one element:
``[{"signing_certificate": <PEM bytes>, "signature": <COSE_Sign1 bytes>}]``. Both fields are
plain ``Vec<u8>``, which serde_cbor writes as arrays of small unsigned integers, not byte
strings. The COSE_Sign1 (untagged, empty unprotected header) signs
``serde_cbor(PcrInfo{register_index: 0, register_value: PCR0})``, again with the register
as an array of integers. PCR8 is the measurement of the certificate's DER.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cbor2
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from emulator.errors import NitroCliError
from emulator.eif.measurements import pcr_of

#: COSE algorithm per curve, as aws-nitro-enclaves-cose picks it from the key.
_ALGORITHMS: dict[str, tuple[int, hashes.HashAlgorithm, int]] = {
    "secp256r1": (-7, hashes.SHA256(), 32),  # ES256
    "secp384r1": (-35, hashes.SHA384(), 48),  # ES384
    "secp521r1": (-36, hashes.SHA512(), 66),  # ES512
}
_COSE_SIGN1_TAG = 18


class SigningError(NitroCliError):
    """The certificate or key cannot sign an EIF (nitro-cli's E48, EIF building error)."""

    def __init__(self, problem: str) -> None:
        super().__init__(48, f"EIF building error: {problem}")
        self.problem = problem


class SignatureSectionError(NitroCliError):
    """The EIF's signature section cannot be parsed (E35, EIF file parsing error)."""

    def __init__(self, problem: str) -> None:
        super().__init__(35, f"EIF file parsing error: bad signature section: {problem}")
        self.problem = problem


def pcr_info_payload(pcr0: bytes) -> bytes:
    """``serde_cbor::to_vec(&PcrInfo::new(0, pcr0))``: a map with the register as uints."""
    return cbor2.dumps({"register_index": 0, "register_value": list(pcr0)})


def _curve_parameters(key: ec.EllipticCurvePublicKey) -> tuple[int, hashes.HashAlgorithm, int]:
    parameters = _ALGORITHMS.get(key.curve.name)
    if parameters is None:
        raise SigningError(f"unsupported curve {key.curve.name}; use P-256, P-384 or P-521")
    return parameters


def _sig_structure(protected: bytes, payload: bytes) -> bytes:
    # RFC 8152 §4.4: ["Signature1", body_protected, external_aad, payload]
    return cbor2.dumps(["Signature1", protected, b"", payload])


def pem_to_der(pem: bytes) -> bytes:
    """The DER of the first certificate in ``pem``; raises ValueError when there is none."""
    return x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)


@dataclass(frozen=True)
class EifSigner:
    """A signing certificate (PEM, as given) and its ECDSA private key."""

    certificate_pem: bytes
    private_key: ec.EllipticCurvePrivateKey

    @classmethod
    def from_files(cls, certificate: Path, private_key: Path) -> EifSigner:
        """Load ``--signing-certificate`` and ``--private-key`` PEM files and check they match."""
        if str(private_key).startswith("arn:"):
            raise SigningError(
                "KMS key ARNs are not supported by nitro-emu; pass a PEM private key file"
            )
        try:
            pem = Path(certificate).read_bytes()
            key_pem = Path(private_key).read_bytes()
        except OSError as error:
            raise SigningError(f"cannot read {error.filename}: {error.strerror}") from error
        try:
            cert = x509.load_pem_x509_certificate(pem)
        except ValueError as error:
            raise SigningError(f"{certificate} is not a PEM X.509 certificate ({error})") from error
        try:
            key = serialization.load_pem_private_key(key_pem, password=None)
        except (ValueError, TypeError) as error:
            raise SigningError(
                f"{private_key} is not an unencrypted PEM private key ({error})"
            ) from error
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise SigningError(f"{private_key} is not an ECDSA key; EIF signing keys are ECDSA only")
        _curve_parameters(key.public_key())
        if cert.public_key() != key.public_key():
            raise SigningError(f"{private_key} is not the private key of {certificate}")
        return cls(pem, key)

    @property
    def certificate_der(self) -> bytes:
        """The certificate in DER, the input of PCR8."""
        return pem_to_der(self.certificate_pem)

    @property
    def pcr8(self) -> bytes:
        """PCR8: the measurement of the signing certificate's DER."""
        return pcr_of(self.certificate_der)

    def cose_sign1(self, payload: bytes) -> bytes:
        """An untagged COSE_Sign1 over ``payload`` with an empty unprotected header."""
        algorithm, digest, size = _curve_parameters(self.private_key.public_key())
        protected = cbor2.dumps({1: algorithm})
        der = self.private_key.sign(_sig_structure(protected, payload), ec.ECDSA(digest))
        r, s = decode_dss_signature(der)
        signature = r.to_bytes(size, "big") + s.to_bytes(size, "big")
        return cbor2.dumps([protected, {}, payload, signature])

    def signature_section(self, pcr0: bytes) -> bytes:
        """The data of the EIF's signature section for an image whose PCR0 is ``pcr0``."""
        cose = self.cose_sign1(pcr_info_payload(pcr0))
        return cbor2.dumps(
            [{"signing_certificate": list(self.certificate_pem), "signature": list(cose)}]
        )


@dataclass(frozen=True)
class SignatureSection:
    """A parsed signature section."""

    certificate_pem: bytes
    certificate: x509.Certificate
    cose_sign1: bytes

    @property
    def pcr8(self) -> bytes:
        """PCR8 of the embedded certificate."""
        return pcr_of(self.certificate.public_bytes(serialization.Encoding.DER))

    def verifies(self, pcr0: bytes) -> bool:
        """describe-eif's ``SignatureCheck``: the COSE signature holds and signs this PCR0."""
        try:
            item = cbor2.loads(self.cose_sign1)
        except (cbor2.CBORDecodeError, ValueError):
            return False
        if isinstance(item, cbor2.CBORTag) and item.tag == _COSE_SIGN1_TAG:
            item = item.value
        if not (isinstance(item, list) and len(item) == 4):
            return False
        protected, _unprotected, payload, signature = item
        if not all(isinstance(part, bytes) for part in (protected, payload, signature)):
            return False
        public_key = self.certificate.public_key()
        if not isinstance(public_key, ec.EllipticCurvePublicKey):
            return False
        parameters = _ALGORITHMS.get(public_key.curve.name)
        if parameters is None:
            return False
        algorithm, digest, size = parameters
        try:
            header = cbor2.loads(protected) if protected else {}
        except (cbor2.CBORDecodeError, ValueError):
            return False
        if not isinstance(header, dict) or header.get(1) != algorithm or len(signature) != 2 * size:
            return False
        der = encode_dss_signature(
            int.from_bytes(signature[:size], "big"), int.from_bytes(signature[size:], "big")
        )
        try:
            public_key.verify(der, _sig_structure(protected, payload), ec.ECDSA(digest))
        except InvalidSignature:
            return False
        return bool(payload == pcr_info_payload(pcr0))


def _uint_array(value: Any, field: str) -> bytes:
    if isinstance(value, bytes):  # tolerate serde_bytes-style writers
        return value
    if not isinstance(value, list) or not all(isinstance(x, int) and 0 <= x <= 255 for x in value):
        raise SignatureSectionError(f"`{field}` is not an array of bytes")
    return bytes(value)


def parse_signature_section(data: bytes) -> SignatureSection:
    """Parse the section's ``[{"signing_certificate", "signature"}]``."""
    try:
        entries = cbor2.loads(data)
    except (cbor2.CBORDecodeError, ValueError) as error:
        raise SignatureSectionError(f"not CBOR ({error})") from error
    if not (isinstance(entries, list) and entries and isinstance(entries[0], dict)):
        raise SignatureSectionError("expected a CBOR array of PcrSignature maps")
    entry = entries[0]
    if "signing_certificate" not in entry or "signature" not in entry:
        raise SignatureSectionError("missing `signing_certificate` or `signature`")
    pem = _uint_array(entry["signing_certificate"], "signing_certificate")
    try:
        certificate = x509.load_pem_x509_certificate(pem)
    except ValueError as error:
        raise SignatureSectionError(f"the signing certificate is not PEM ({error})") from error
    return SignatureSection(pem, certificate, _uint_array(entry["signature"], "signature"))


_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def _openssl_time(moment: Any) -> str:
    # openssl's ASN1_TIME_print: "Nov  9 01:02:03 2026 GMT" (day padded with a space)
    return (
        f"{_MONTHS[moment.month - 1]} {moment.day:>2} "
        f"{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d} {moment.year} GMT"
    )


def certificate_info(certificate: x509.Certificate) -> dict[str, Any]:
    """describe-eif's ``SigningCertificate`` object (image-format ``SignCertificateInfo``)."""
    issuer: dict[str, str] = {}
    for attribute in certificate.issuer:
        name = attribute.oid._name  # OpenSSL's long name, e.g. "commonName"
        value = attribute.value
        issuer[name] = value if isinstance(value, str) else value.decode("utf-8", "replace")
    algorithm_oid = certificate.signature_algorithm_oid
    return {
        "IssuerName": dict(sorted(issuer.items())),
        "Algorithm": algorithm_oid._name,
        "NotBefore": _openssl_time(certificate.not_valid_before_utc),
        "NotAfter": _openssl_time(certificate.not_valid_after_utc),
        "Signature": ":".join(f"{byte:02X}" for byte in certificate.signature),
    }
