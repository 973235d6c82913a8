"""examples/confidential-service: the happy path and the client's refusals, on real enclaves."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from emulator.demo.confidential_service import CRYPTO_IMAGE, SERVICE_PORT, ensure_crypto_image, load_client, stage_enclave_context
from emulator.testing.handles import EnclaveFactory, EnclaveHandle, EnclaveSpec

pytestmark = [pytest.mark.docker, pytest.mark.slow]


@pytest.fixture(scope="module")
def factory(tmp_path_factory: pytest.TempPathFactory, docker_client: Any) -> Iterator[EnclaveFactory]:
    ensure_crypto_image(docker_client)
    work = tmp_path_factory.mktemp("cs")
    # The default EIF cache: the compose test builds the same context and reuses this EIF.
    factory = EnclaveFactory(work / "home", docker_client=docker_client, worker="example")
    yield factory
    factory.close()


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory, factory: EnclaveFactory) -> EnclaveSpec:
    """The example's enclave; its image stays cached by content tag (nitro-emu-test/<digest>)."""
    context = stage_enclave_context(tmp_path_factory.mktemp("ctx") / "context")
    spec = EnclaveSpec(dockerfile_dir=context, build_args={"BASE": CRYPTO_IMAGE}).checked()
    factory.build(spec)
    return spec


@pytest.fixture(scope="module")
def service(factory: EnclaveFactory, spec: EnclaveSpec) -> EnclaveHandle:
    return factory.start(spec, name="service")


@pytest.fixture(scope="module")
def client() -> ModuleType:
    return load_client()


def _session(client: ModuleType, handle: EnclaveHandle, factory: EnclaveFactory, pcrs: dict[int, bytes]) -> Any:
    with handle.connect(SERVICE_PORT) as sock:
        return client.run_session(
            sock, trusted_root=factory.ca.root_der, expected_pcrs=pcrs, secret=b"s3cr3t", say=lambda _: None
        )


def test_secret_reaches_the_attested_enclave(client: ModuleType, service: EnclaveHandle, factory: EnclaveFactory) -> None:
    transcript = _session(client, service, factory, service.measurements)

    assert transcript.digest_matches
    assert transcript.stored_size == len(b"s3cr3t")
    assert transcript.module_id == service.enclave_id
    assert transcript.pcrs[0] == service.measurements[0]


def test_refuses_an_enclave_with_other_pcrs(client: ModuleType, service: EnclaveHandle, factory: EnclaveFactory) -> None:
    reviewed = dict(service.measurements)
    reviewed[2] = bytes(reversed(reviewed[2]))

    with pytest.raises(client.Refused, match=r"PCR2 differs from the reviewed build"):
        _session(client, service, factory, reviewed)


def test_refuses_a_document_from_another_root(
    client: ModuleType, service: EnclaveHandle, tmp_path: Path
) -> None:
    from ca import TestCA

    stranger = TestCA.load_or_create(tmp_path / "other-ca")
    with service.connect(SERVICE_PORT) as sock:
        with pytest.raises(client.Refused, match="failed verification"):
            client.run_session(
                sock, trusted_root=stranger.root_der, expected_pcrs=service.measurements, secret=b"x", say=print
            )


def test_refuses_a_debug_mode_enclave(
    client: ModuleType, factory: EnclaveFactory, spec: EnclaveSpec
) -> None:
    debug_spec = EnclaveSpec(dockerfile_dir=spec.dockerfile_dir, build_args=spec.build_args, debug_mode=True)
    debug = factory.start(debug_spec, name="debug")
    try:
        with pytest.raises(client.Refused, match="runs in debug mode"):
            _session(client, debug, factory, debug.measurements)
        assert "listening on vsock port" in debug.logs()
    finally:
        debug.terminate()


def test_cli_exit_status_and_message_on_refusal(
    client: ModuleType,
    service: EnclaveHandle,
    factory: EnclaveFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("NITRO_EMU_HOME", str(service.home))
    root = tmp_path / "root.pem"
    root.write_bytes(factory.ca.root_pem)
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"Measurements": {f"PCR{i}": v.hex() for i, v in service.measurements.items()}}))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"Measurements": {"PCR0": "00" * 48, "PCR1": "00" * 48, "PCR2": "00" * 48}}))
    common = ["--cid", str(service.cid), "--port", str(SERVICE_PORT), "--root", str(root)]

    assert client.main([*common, "--pcrs", str(good)]) == 0
    assert client.main([*common, "--pcrs", str(bad)]) == client.REFUSED_STATUS
    assert "REFUSED: PCR0 differs" in capsys.readouterr().err


CREDENTIALS = {"access_key_id": "AKIDEXAMPLETEST", "secret_access_key": "example-test-secret"}


@pytest.fixture(scope="module")
def kms(factory: EnclaveFactory) -> Iterator[Any]:
    """The local KMS, trusting the factory's CA, on VSOCK (3, 8000) for its enclaves."""
    pytest.importorskip("boto3")
    from emulator.testing.kms import LocalKms

    with LocalKms(factory.home, trusted_roots=[factory.ca.root_der]) as kms:
        yield kms


def _kms_session(client: ModuleType, handle: EnclaveHandle, factory: EnclaveFactory, blob: bytes, secret: bytes) -> Any:
    import hashlib

    with handle.connect(SERVICE_PORT) as sock:
        return client.run_kms_session(
            sock, trusted_root=factory.ca.root_der, expected_pcrs=handle.measurements, blob=blob,
            credentials=CREDENTIALS, expected_sha256=hashlib.sha256(secret).digest(), say=lambda _: None,
        )


def test_the_enclave_fetches_its_secret_from_kms(
    client: ModuleType, service: EnclaveHandle, factory: EnclaveFactory, kms: Any
) -> None:
    """Decrypt with Recipient from inside the enclave: the PCR0-pinned key releases it."""
    key = kms.create_key(policy=kms.attested_policy({0: service.measurements[0]}))
    blob = kms.client().encrypt(KeyId=key, Plaintext=b"from kms")["CiphertextBlob"]
    transcript = _kms_session(client, service, factory, blob, b"from kms")
    assert transcript.digest_matches and transcript.stored_size == len(b"from kms")


def test_kms_refuses_the_enclave_for_a_key_pinned_to_another_image(
    client: ModuleType, service: EnclaveHandle, factory: EnclaveFactory, kms: Any
) -> None:
    key = kms.create_key(policy=kms.attested_policy({0: bytes(reversed(service.measurements[0]))}))
    blob = kms.client().encrypt(KeyId=key, Plaintext=b"not for you")["CiphertextBlob"]
    with pytest.raises(client.protocol.ProtocolError, match="KMS refused: AccessDeniedException"):
        _kms_session(client, service, factory, blob, b"not for you")


def test_the_enclave_retries_a_throttled_kms_call(
    client: ModuleType, service: EnclaveHandle, factory: EnclaveFactory, kms: Any
) -> None:
    key = kms.create_key(policy=kms.attested_policy({0: service.measurements[0]}))
    blob = kms.client().encrypt(KeyId=key, Plaintext=b"patience")["CiphertextBlob"]
    kms.faults.add("Decrypt", error="ThrottlingException", count=2)   # two refusals, then served
    assert _kms_session(client, service, factory, blob, b"patience").digest_matches
    assert kms.faults.armed() == []
    kms.faults.add("Decrypt", error="ThrottlingException", count=3)   # more than it retries
    try:
        with pytest.raises(client.protocol.ProtocolError, match="KMS refused: ThrottlingException: Rate exceeded"):
            _kms_session(client, service, factory, blob, b"patience")
    finally:
        kms.faults.clear()


def test_the_client_refuses_a_document_whose_leaf_expired(
    client: ModuleType, service: EnclaveHandle, factory: EnclaveFactory
) -> None:
    """The enclave lives four hours ago: its NSM signs with a leaf (3 h) that expired by now."""
    service.clock.set_offset(-4 * 3600)
    try:
        with pytest.raises(client.Refused, match="failed verification"):
            _session(client, service, factory, service.measurements)
    finally:
        service.clock.set_offset(0)
    assert _session(client, service, factory, service.measurements).digest_matches
