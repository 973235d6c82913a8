"""The shape of each certificate in the chain, mirroring AWS's (nitro-facts §2.3).

Five levels: root -> regional -> zonal -> instance -> leaf (one per enclave). Subjects keep
AWS's attribute order and naming pattern but say TEST (``O=nitro-emu, OU=TEST``, ``.test.``
host names) so that no one mistakes test material for AWS's. Extensions, criticality, path
lengths, key usages and lifetimes are AWS's. Everything is P-384 / ECDSA-SHA384.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ca.errors import InvalidEnclaveIdError

CURVE = ec.SECP384R1()
HASH = hashes.SHA384()

ORGANIZATION = "nitro-emu"
ORG_UNIT = "TEST"
DOMAIN = "test.nitro-enclaves"  # AWS: aws.nitro-enclaves
ROOT_COMMON_NAME = "TEST.nitro-enclaves"  # AWS: aws.nitro-enclaves

# Lifetimes (§2.3): root 30 years (calendar), regional 481 h, zonal ~6 days, instance 24 h,
# leaf T-3 s .. T+3 h.
REGIONAL_LIFETIME = timedelta(hours=481)
ZONAL_LIFETIME = timedelta(hours=144)
INSTANCE_LIFETIME = timedelta(hours=24)
LEAF_BACKDATE = timedelta(seconds=3)
LEAF_LIFETIME = timedelta(hours=3)
ROOT_YEARS = 30
#: A new root is valid from 5 years before its creation (AWS's root starts in 2019), so that
#: an enclave clock set days or years in the past still finds a chain (issue 15).
ROOT_BACKDATE = timedelta(days=5 * 365)
# The root and intermediates are dated like the leaf (valid from 3 s before issuance) so that
# a leaf issued together with a fresh chain never starts before its issuers.
INTERMEDIATE_BACKDATE = LEAF_BACKDATE

LEVELS: tuple[str, ...] = ("root", "regional", "zonal", "instance")
LIFETIMES: dict[str, timedelta] = {
    "regional": REGIONAL_LIFETIME,
    "zonal": ZONAL_LIFETIME,
    "instance": INSTANCE_LIFETIME,
}
# What each level must still cover when it is used: the whole life of a child issued now.
CHILD_LIFETIME: dict[str, timedelta] = {
    "root": REGIONAL_LIFETIME,
    "regional": ZONAL_LIFETIME,
    "zonal": INSTANCE_LIFETIME,
    "instance": LEAF_LIFETIME + LEAF_BACKDATE,
}

ENCLAVE_ID_RE = re.compile(r"^i-[0-9a-f]{17}-enc([0-9a-f]{16})$")
INSTANCE_ID_RE = re.compile(r"^i-[0-9a-f]{17}$")


@dataclass(frozen=True)
class Names:
    """The identity the CA chain is built around: an AWS region and a parent instance."""

    region: str
    instance_id: str


def floor_seconds(moment: datetime) -> datetime:
    """``moment`` in UTC without microseconds (X.509 times have whole seconds)."""
    return moment.astimezone(timezone.utc).replace(microsecond=0)


def add_years(moment: datetime, years: int) -> datetime:
    """The same calendar date and time ``years`` later (29 Feb becomes 28 Feb)."""
    try:
        return moment.replace(year=moment.year + years)
    except ValueError:
        return moment.replace(year=moment.year + years, day=28)


def random_instance_id() -> str:
    """A fresh EC2-style instance id, ``i-`` and 17 hex digits."""
    return "i-" + os.urandom(9).hex()[:17]


def _name(*attributes: tuple[x509.ObjectIdentifier, str]) -> x509.Name:
    return x509.Name([x509.NameAttribute(oid, value) for oid, value in attributes])


def _washington_name(common_name: str) -> x509.Name:
    """C=US, ST=Washington, L=Seattle, O, OU, then CN: the instance CA's and the leaf's order."""
    return _name(
        (NameOID.COUNTRY_NAME, "US"),
        (NameOID.STATE_OR_PROVINCE_NAME, "Washington"),
        (NameOID.LOCALITY_NAME, "Seattle"),
        (NameOID.ORGANIZATION_NAME, ORGANIZATION),
        (NameOID.ORGANIZATIONAL_UNIT_NAME, ORG_UNIT),
        (NameOID.COMMON_NAME, common_name),
    )


def subject_for(level: str, names: Names) -> x509.Name:
    """The subject of an intermediate or root, in AWS's attribute order for that level."""
    if level == "root":
        return _name(
            (NameOID.COUNTRY_NAME, "US"),
            (NameOID.ORGANIZATION_NAME, ORGANIZATION),
            (NameOID.ORGANIZATIONAL_UNIT_NAME, ORG_UNIT),
            (NameOID.COMMON_NAME, ROOT_COMMON_NAME),
        )
    if level == "regional":
        return _name(
            (NameOID.COUNTRY_NAME, "US"),
            (NameOID.ORGANIZATION_NAME, ORGANIZATION),
            (NameOID.ORGANIZATIONAL_UNIT_NAME, ORG_UNIT),
            (NameOID.COMMON_NAME, f"{os.urandom(8).hex()}.{names.region}.{DOMAIN}"),
        )
    if level == "zonal":
        return _name(
            (NameOID.COMMON_NAME, f"{os.urandom(8).hex()}.zonal.{names.region}.{DOMAIN}"),
            (NameOID.ORGANIZATIONAL_UNIT_NAME, ORG_UNIT),
            (NameOID.ORGANIZATION_NAME, ORGANIZATION),
            (NameOID.COUNTRY_NAME, "US"),
            (NameOID.STATE_OR_PROVINCE_NAME, "WA"),
            (NameOID.LOCALITY_NAME, "Seattle"),
        )
    if level == "instance":
        return _washington_name(f"{names.instance_id}.{names.region}.{DOMAIN}")
    raise ValueError(f"unknown CA level {level!r}")


def leaf_subject(enclave_id: str, names: Names) -> x509.Name:
    """The leaf's subject: AWS's ``<module_id>.<region>.aws`` with ``test`` for ``aws``."""
    return _washington_name(f"{enclave_id}.{names.region}.test")


def _ca_key_usage(*, cert_sign_only: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign_only,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=not cert_sign_only,
        encipher_only=False,
        decipher_only=False,
    )


def _crl_point(level: str, region: str) -> x509.CRLDistributionPoints:
    # AWS publishes CRL URLs it does not use ("We do not use CRL"); ours point at .invalid.
    host = "crl.nitro-emu.invalid" if level == "regional" else f"crl-{region}.nitro-emu.invalid"
    url = f"http://{host}/crl/{os.urandom(16).hex()}.crl"
    return x509.CRLDistributionPoints(
        [x509.DistributionPoint([x509.UniformResourceIdentifier(url)], None, None, None)]
    )


def build_root(key: ec.EllipticCurvePrivateKey, names: Names, now: datetime) -> x509.Certificate:
    """A self-signed root: 30 years from 5 years before ``now``, CA without path length,
    critical dS+kCS+cRLS, SKI."""
    start = floor_seconds(now) - ROOT_BACKDATE
    subject = subject_for("root", names)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(int.from_bytes(os.urandom(16), "big") | 1 << 127)
        .not_valid_before(start)
        .not_valid_after(add_years(start, ROOT_YEARS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(_ca_key_usage(cert_sign_only=False), critical=True)
    )
    return builder.sign(key, HASH)


def build_intermediate(
    level: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate,
    issuer_key: ec.EllipticCurvePrivateKey,
    names: Names,
    now: datetime,
) -> x509.Certificate:
    """A regional (pathlen 2), zonal (pathlen 1) or instance (pathlen 0) CA certificate."""
    start = floor_seconds(now) - INTERMEDIATE_BACKDATE
    path_length = {"regional": 2, "zonal": 1, "instance": 0}[level]
    issuer_ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(issuer_ski)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    # The instance serial is 20 bytes, the others 16 (as in AWS's chain).
    serial_bytes = 20 if level == "instance" else 16
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject_for(level, names))
        .issuer_name(issuer.subject)
        .public_key(key.public_key())
        .serial_number(int.from_bytes(os.urandom(serial_bytes), "big") >> 1 | 1)
        .not_valid_before(start)
        .not_valid_after(start + LIFETIMES[level])
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
    )
    if level == "instance":
        # 2024/2025 instance certificates: keyCertSign only, plus SKI and AKI.
        builder = (
            builder.add_extension(_ca_key_usage(cert_sign_only=True), critical=True)
            .add_extension(ski, critical=False)
            .add_extension(aki, critical=False)
        )
    else:
        builder = (
            builder.add_extension(aki, critical=False)
            .add_extension(ski, critical=False)
            .add_extension(_ca_key_usage(cert_sign_only=False), critical=True)
            .add_extension(_crl_point(level, names.region), critical=False)
        )
    return builder.sign(issuer_key, HASH)


def enclave_serial_prefix(enclave_id: str) -> bytes:
    """The 8 bytes of the enclave id (the 16 hex digits after ``-enc``)."""
    match = ENCLAVE_ID_RE.match(enclave_id) if isinstance(enclave_id, str) else None
    if match is None:
        raise InvalidEnclaveIdError(str(enclave_id))
    return bytes.fromhex(match.group(1))


def leaf_serial(enclave_id: str, issued: datetime) -> int:
    """AWS's leaf serial: enclave-id bytes (8), four zero bytes, uint32 seconds of issuance."""
    seconds = int(floor_seconds(issued).timestamp())
    if not 0 < seconds < 1 << 32:
        raise ValueError(f"leaf issuance time {issued} does not fit a uint32 of seconds")
    return int.from_bytes(enclave_serial_prefix(enclave_id) + bytes(4) + seconds.to_bytes(4, "big"), "big")


def build_leaf(
    enclave_id: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate,
    issuer_key: ec.EllipticCurvePrivateKey,
    names: Names,
    now: datetime,
) -> x509.Certificate:
    """The enclave's signing certificate: CA:FALSE critical, KU dS+nR non-critical, T-3 s..T+3 h."""
    issued = floor_seconds(now)
    builder = (
        x509.CertificateBuilder()
        .subject_name(leaf_subject(enclave_id, names))
        .issuer_name(issuer.subject)
        .public_key(key.public_key())
        .serial_number(leaf_serial(enclave_id, issued))
        .not_valid_before(issued - LEAF_BACKDATE)
        .not_valid_after(issued + LEAF_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=True,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=False,
        )
    )
    return builder.sign(issuer_key, HASH)
