"""The test CA: chain shape (nitro-facts §2.3), persistence, re-issue, leaf reuse."""

from __future__ import annotations

import re
import stat
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID, SignatureAlgorithmOID

import ca
from ca import CANotFoundError, CAStorageError, InvalidEnclaveIdError, RootValidityError, TestCA
from ca.profiles import ROOT_BACKDATE

ENCLAVE = "i-020b6af9246d90e92-enc0183d09086c24190"
START = datetime(2026, 3, 1, 12, 0, 0, tzinfo=timezone.utc)


class FakeClock:
    """An injectable clock that tests move by hand."""

    def __init__(self, now: datetime = START) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> datetime:
        self.now += delta
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def ca_dir(tmp_path: Path) -> Path:
    return tmp_path / "ca"


@pytest.fixture
def test_ca(ca_dir: Path, clock: FakeClock) -> TestCA:
    return TestCA.load_or_create(ca_dir, clock=clock)


def _certs(credentials: ca.LeafCredentials) -> list[x509.Certificate]:
    return [x509.load_der_x509_certificate(der) for der in (*credentials.cabundle, credentials.certificate)]


def _attrs(cert: x509.Certificate) -> list[tuple[str, str]]:
    return [(attribute.oid._name, str(attribute.value)) for attribute in cert.subject]


def _extensions(cert: x509.Certificate) -> dict[type, tuple[bool, object]]:
    return {type(ext.value): (ext.critical, ext.value) for ext in cert.extensions}


def test_public_api_is_sorted_and_complete() -> None:
    assert ca.__all__ == sorted(ca.__all__)
    for name in ("TestCA", "LeafCredentials", "CAError", "CANotFoundError", "CAStorageError"):
        assert name in ca.__all__
    assert all(issubclass(getattr(ca, n), ca.CAError) for n in ca.__all__ if n.endswith("Error"))


def test_chain_is_p384_ecdsa_sha384_v3_and_small(test_ca: TestCA, clock: FakeClock) -> None:
    certs = _certs(test_ca.issue_leaf(ENCLAVE))
    assert len(certs) == 5
    for parent, child in zip([certs[0], *certs[:-1]], certs):
        assert child.version is x509.Version.v3
        assert child.signature_algorithm_oid == SignatureAlgorithmOID.ECDSA_WITH_SHA384
        key = child.public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp384r1"
        assert child.issuer == parent.subject
        child.verify_directly_issued_by(parent)  # raises if the signature is wrong
        assert len(child.public_bytes(Encoding.DER)) <= 1024
        assert child.not_valid_before_utc <= clock.now < child.not_valid_after_utc


def test_root_shape(test_ca: TestCA) -> None:
    root = test_ca.root_certificate
    assert _attrs(root) == [
        ("countryName", "US"),
        ("organizationName", "nitro-emu"),
        ("organizationalUnitName", "TEST"),
        ("commonName", "TEST.nitro-enclaves"),
    ]
    assert root.issuer == root.subject
    ext = _extensions(root)
    assert set(ext) == {x509.BasicConstraints, x509.KeyUsage, x509.SubjectKeyIdentifier}
    critical, bc = ext[x509.BasicConstraints]
    assert critical and bc.ca and bc.path_length is None
    critical, ku = ext[x509.KeyUsage]
    assert critical and ku.digital_signature and ku.key_cert_sign and ku.crl_sign
    assert not ku.content_commitment
    start, end = root.not_valid_before_utc, root.not_valid_after_utc
    assert (end.year - start.year, end.month, end.day, end.time()) == (30, start.month, start.day, start.time())
    assert start <= START
    assert len(test_ca.root_der) == len(root.public_bytes(Encoding.DER))
    assert test_ca.root_pem.startswith(b"-----BEGIN CERTIFICATE-----")


@pytest.mark.parametrize(
    ("position", "path_length", "lifetime", "attribute_order", "cn_pattern"),
    [
        (1, 2, timedelta(hours=481), ["C", "O", "OU", "CN"], r"^[0-9a-f]{16}\.us-east-1\.test\.nitro-enclaves$"),
        (2, 1, timedelta(days=6), ["CN", "OU", "O", "C", "ST", "L"], r"^[0-9a-f]{16}\.zonal\.us-east-1\.test\.nitro-enclaves$"),
        (3, 0, timedelta(hours=24), ["C", "ST", "L", "O", "OU", "CN"], r"^i-[0-9a-f]{17}\.us-east-1\.test\.nitro-enclaves$"),
    ],
)
def test_intermediate_shape(
    test_ca: TestCA, position: int, path_length: int, lifetime: timedelta, attribute_order: list[str], cn_pattern: str
) -> None:
    certs = _certs(test_ca.issue_leaf(ENCLAVE))
    cert, parent = certs[position], certs[position - 1]
    assert [attribute.rfc4514_attribute_name for attribute in cert.subject] == attribute_order
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value == "TEST"
    common_name = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert re.match(cn_pattern, common_name), common_name
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == lifetime
    ext = _extensions(cert)
    critical, bc = ext[x509.BasicConstraints]
    assert critical and bc.ca and bc.path_length == path_length
    critical, ku = ext[x509.KeyUsage]
    assert critical and ku.key_cert_sign
    if position == 3:  # instance: keyCertSign only, SKI + AKI, nothing else
        assert not ku.digital_signature and not ku.crl_sign
        assert set(ext) == {x509.BasicConstraints, x509.KeyUsage, x509.SubjectKeyIdentifier, x509.AuthorityKeyIdentifier}
        assert common_name.startswith(test_ca.instance_id + ".")
    else:  # regional, zonal: dS + kCS + cRLS, AKI, SKI, CRL distribution point
        assert ku.digital_signature and ku.crl_sign
        assert set(ext) == {
            x509.BasicConstraints, x509.KeyUsage, x509.SubjectKeyIdentifier,
            x509.AuthorityKeyIdentifier, x509.CRLDistributionPoints,
        }
        url = ext[x509.CRLDistributionPoints][1][0].full_name[0].value
        assert ".invalid/crl/" in url
    parent_ski = parent.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    assert ext[x509.AuthorityKeyIdentifier][1].key_identifier == parent_ski
    assert not ext[x509.SubjectKeyIdentifier][0] and not ext[x509.AuthorityKeyIdentifier][0]


def test_leaf_shape_and_serial(test_ca: TestCA, clock: FakeClock) -> None:
    clock.now = START.replace(microsecond=654321)
    credentials = test_ca.issue_leaf(ENCLAVE)
    leaf = x509.load_der_x509_certificate(credentials.certificate)
    issued = START  # whole seconds
    assert leaf.not_valid_before_utc == issued - timedelta(seconds=3)
    assert leaf.not_valid_after_utc == issued + timedelta(hours=3) == credentials.not_after
    serial = leaf.serial_number.to_bytes(16, "big")
    assert serial[:8] == bytes.fromhex("0183d09086c24190")
    assert serial[8:12] == bytes(4)
    assert int.from_bytes(serial[12:], "big") == int(issued.timestamp())
    assert [a.rfc4514_attribute_name for a in leaf.subject] == ["C", "ST", "L", "O", "OU", "CN"]
    assert leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == f"{ENCLAVE}.us-east-1.test"
    ext = _extensions(leaf)
    assert set(ext) == {x509.BasicConstraints, x509.KeyUsage}
    critical, bc = ext[x509.BasicConstraints]
    assert critical and not bc.ca
    critical, ku = ext[x509.KeyUsage]
    assert not critical and ku.digital_signature and ku.content_commitment and not ku.key_cert_sign
    assert credentials.private_key.public_key().public_numbers() == leaf.public_key().public_numbers()
    assert x509.load_der_x509_certificate(credentials.cabundle[0]) == test_ca.root_certificate


def test_files_and_modes(test_ca: TestCA, ca_dir: Path) -> None:
    assert stat.S_IMODE(ca_dir.stat().st_mode) == 0o700
    for level in ("root", "regional", "zonal", "instance"):
        path = ca_dir / f"{level}.pem"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert b"PRIVATE KEY" in path.read_bytes()
    assert (ca_dir / "root.crt").read_bytes() == test_ca.root_pem
    assert b"PRIVATE" not in (ca_dir / "root.crt").read_bytes()


def test_reload_keeps_everything(test_ca: TestCA, ca_dir: Path, clock: FakeClock) -> None:
    """Reloading reuses every key and certificate (no key generation: that is what is slow)."""
    assert test_ca.created
    before = [cert for _, cert in test_ca.certificates()]
    files = {path.name: path.read_bytes() for path in ca_dir.iterdir()}
    for _ in range(3):
        again = TestCA.load_or_create(ca_dir, clock=clock)
        again.issue_leaf(ENCLAVE)
    assert not again.created and again.renewed == ()
    assert [cert for _, cert in again.certificates()] == before
    assert again.instance_id == test_ca.instance_id and again.region == "us-east-1"
    assert {path.name: path.read_bytes() for path in ca_dir.iterdir()} == files


def test_load_without_ca_says_how_to_create_one(ca_dir: Path) -> None:
    with pytest.raises(CANotFoundError, match="nitro-emu ca init"):
        TestCA.load(ca_dir)


def test_corrupt_file_is_a_storage_error(test_ca: TestCA, ca_dir: Path, clock: FakeClock) -> None:
    (ca_dir / "zonal.pem").write_bytes(b"garbage")
    with pytest.raises(CAStorageError, match="zonal.pem"):
        TestCA.load(ca_dir, clock=clock)


@pytest.mark.parametrize(
    ("elapsed", "renewed"),
    [
        (timedelta(hours=20), ()),
        (timedelta(hours=22), ("instance",)),
        (timedelta(days=5, hours=1), ("zonal", "instance")),
        (timedelta(days=15), ("regional", "zonal", "instance")),
    ],
)
def test_expiring_intermediates_are_reissued_under_the_same_root(
    test_ca: TestCA, ca_dir: Path, clock: FakeClock, elapsed: timedelta, renewed: tuple[str, ...]
) -> None:
    before = dict(test_ca.certificates())
    clock.advance(elapsed)
    loaded = TestCA.load(ca_dir, clock=clock)
    assert loaded.renewed == renewed
    after = dict(loaded.certificates())
    assert after["root"] == before["root"]
    for level in ("regional", "zonal", "instance"):
        assert (after[level] != before[level]) == (level in renewed)
    # persisted: the next load has nothing to do, and the chain is valid now
    again = TestCA.load(ca_dir, clock=clock)
    assert again.renewed == () and dict(again.certificates()) == after
    for parent, child in zip([after["root"], after["regional"], after["zonal"]], [after["regional"], after["zonal"], after["instance"]]):
        child.verify_directly_issued_by(parent)
    certs = _certs(again.issue_leaf(ENCLAVE))
    assert all(c.not_valid_before_utc <= clock.now < c.not_valid_after_utc for c in certs)


def test_running_ca_reissues_on_use(test_ca: TestCA, clock: FakeClock) -> None:
    first = test_ca.issue_leaf(ENCLAVE)
    clock.advance(timedelta(days=30))
    second = test_ca.issue_leaf(ENCLAVE)
    assert second.cabundle[0] == first.cabundle[0]
    assert all(a != b for a, b in zip(second.cabundle[1:], first.cabundle[1:]))


def test_time_outside_the_root_is_refused(test_ca: TestCA) -> None:
    # A new root starts 5 years before its creation (issue 15: enclave clocks in the past),
    # so a day, or four years, before it was made is inside it; six years is not.
    assert test_ca.root_certificate.not_valid_before_utc == START - ROOT_BACKDATE
    for days in (1, 4 * 365):
        leaf = test_ca.issue_leaf(ENCLAVE, now=START - timedelta(days=days))
        assert leaf.not_before == START - timedelta(days=days, seconds=3)
    with pytest.raises(RootValidityError, match="remove"):
        test_ca.issue_leaf(ENCLAVE, now=START - timedelta(days=6 * 365))
    with pytest.raises(RootValidityError):
        test_ca.issue_leaf(ENCLAVE, now=START + timedelta(days=365 * 31))


def test_leaf_is_reused_until_it_expires(test_ca: TestCA, clock: FakeClock) -> None:
    first = test_ca.issue_leaf(ENCLAVE)
    assert test_ca.issue_leaf(ENCLAVE, now=START + timedelta(hours=2, minutes=50)) is first
    renewed = test_ca.issue_leaf(ENCLAVE, now=START + timedelta(hours=2, minutes=56))
    assert renewed is not first and renewed.not_after == START + timedelta(hours=5, minutes=56)
    assert renewed.private_key.private_numbers() != first.private_key.private_numbers()
    other = test_ca.issue_leaf("i-020b6af9246d90e92-enc0183d09086c24191")
    assert other is not first and other.certificate != first.certificate


@pytest.mark.parametrize("bad", ["", "i-123", "i-020b6af9246d90e92-enc0183D09086C24190", "x" * 40, 42])
def test_bad_enclave_id(test_ca: TestCA, bad: object) -> None:
    with pytest.raises(InvalidEnclaveIdError, match="i-<17 hex digits>-enc<16 hex digits>"):
        test_ca.issue_leaf(bad)  # type: ignore[arg-type]


def test_concurrent_creation_yields_one_root(ca_dir: Path, clock: FakeClock) -> None:
    results: list[TestCA] = []
    errors: list[BaseException] = []

    def create() -> None:
        try:
            results.append(TestCA.load_or_create(ca_dir, clock=clock))
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=create) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len({ca_.root_der for ca_ in results}) == 1
    assert sum(ca_.created for ca_ in results) == 1


def test_same_shape_as_the_genuine_aws_chain(test_ca: TestCA, aws_vectors: Path) -> None:
    """Level by level: attribute order, extensions and criticality, BC, KU, lifetimes."""
    import cbor2

    payload = cbor2.loads(cbor2.loads((aws_vectors / "evervault-beta-valid-attestation-doc.cbor").read_bytes())[2])
    theirs = [x509.load_der_x509_certificate(d) for d in (*payload["cabundle"], payload["certificate"])]
    ours = _certs(test_ca.issue_leaf(ENCLAVE))
    for level, (mine, aws) in enumerate(zip(ours, theirs)):
        assert [a.oid for a in mine.subject] == [a.oid for a in aws.subject], level
        mine_ext = {type(e.value): e.critical for e in mine.extensions}
        aws_ext = {type(e.value): e.critical for e in aws.extensions}
        if level == 3:  # 2022 instance certificates lacked SKI/AKI; 2024+ ones have them
            assert mine_ext.items() >= aws_ext.items()
        else:
            assert mine_ext == aws_ext, level
        assert mine.extensions.get_extension_for_class(x509.BasicConstraints).value == (
            aws.extensions.get_extension_for_class(x509.BasicConstraints).value
        )
        assert mine.extensions.get_extension_for_class(x509.KeyUsage).value == (
            aws.extensions.get_extension_for_class(x509.KeyUsage).value
        )
        if level in (1, 3, 4):  # regional 481 h, instance 24 h, leaf 3 h + 3 s: exactly AWS's
            assert mine.not_valid_after_utc - mine.not_valid_before_utc == aws.not_valid_after_utc - aws.not_valid_before_utc
    leaf_serial = theirs[4].serial_number.to_bytes(16, "big")
    assert leaf_serial[8:12] == bytes(4)  # the layout our serials copy
