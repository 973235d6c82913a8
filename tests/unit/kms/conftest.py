"""Fixtures of the local KMS tests: a test CA, an enclave's documents, a server, boto3."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from ca import TestCA
from emulator.kms.server import KmsServer
from fake_nsm.document_signer import DocumentSigner

from tests.unit.kms.kms_helpers import MODULE_ID, PCRS


class _BackdatedClock:
    """The current time, except while the CA is created: a day earlier, so that tests can
    sign documents dated in the past (stale ones) under the same root."""

    def __init__(self) -> None:
        self.offset = timedelta(days=1)

    def __call__(self) -> datetime:
        return datetime.now(timezone.utc) - self.offset


@pytest.fixture(scope="session")
def test_ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    clock = _BackdatedClock()
    ca = TestCA.load_or_create(tmp_path_factory.mktemp("kms-ca") / "ca", clock=clock)
    clock.offset = timedelta(0)
    return ca


@pytest.fixture(scope="session")
def foreign_ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    """Another test CA: its documents are well formed but chain to a root nobody pinned."""
    return TestCA.load_or_create(tmp_path_factory.mktemp("kms-foreign-ca") / "ca")


@pytest.fixture(scope="session")
def enclave_key() -> rsa.RSAPrivateKey:
    """The enclave's RSA-2048 key pair, as the Nitro Enclaves SDK generates one."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="session")
def enclave_spki(enclave_key: rsa.RSAPrivateKey) -> bytes:
    return enclave_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@pytest.fixture(scope="session")
def make_document(test_ca: TestCA, enclave_spki: bytes) -> Callable[..., bytes]:
    """``make_document(pcrs=PCRS, public_key=<enclave SPKI>, ca=test_ca)``: a fresh document."""
    signers: dict[int, DocumentSigner] = {}

    def make(pcrs: dict[int, bytes] = PCRS, public_key: bytes | None = enclave_spki,
             ca: TestCA = test_ca) -> bytes:
        signer = signers.setdefault(id(ca), DocumentSigner(ca, MODULE_ID))
        return signer.sign(pcrs, public_key=public_key)

    return make


@pytest.fixture
def kms_server(tmp_path: Path, test_ca: TestCA) -> Iterator[KmsServer]:
    with KmsServer(state_dir=tmp_path / "kms", trusted_roots=[test_ca.root_der]) as server:
        yield server


@pytest.fixture
def kms(kms_server: KmsServer) -> Any:
    """An unmodified boto3 KMS client of the running server."""
    boto3 = pytest.importorskip("boto3")
    from botocore.config import Config

    return boto3.client(
        "kms",
        endpoint_url=kms_server.endpoint_url,
        region_name="us-east-1",
        aws_access_key_id="AKIDEXAMPLE",
        aws_secret_access_key="x",
        config=Config(retries={"max_attempts": 1}),
    )
