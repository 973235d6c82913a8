"""KMS with attestation end to end: an enclave gets its secret the AWS way, or is refused.

Inside the enclave everything but the NSM client is code nitro-emu did not write: PyPI's
boto3, socat (TCP -> AF_VSOCK through the shim), openssl for the key pair and for opening
CiphertextForRecipient. Outside, the local KMS of :class:`emulator.testing.kms.LocalKms`
checks the document against the test CA and the key policy against the PCRs.
"""

from __future__ import annotations

import base64
import json
import shutil
import site
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from emulator.engine.base_image import ensure_base_image
from emulator.testing.handles import EnclaveFactory, EnclaveHandle, EnclaveSpec
from emulator.testing.kms import LocalKms

pytestmark = [pytest.mark.docker, pytest.mark.slow]
boto3 = pytest.importorskip("boto3")

ROOT = Path(__file__).resolve().parents[3]
HERE = Path(__file__).resolve().parent
KMS_CLIENT_IMAGE = "nitro-emu/kms-client:bookworm"
# socat and openssl are the independent tools; python3 (the full stdlib) for boto3
KMS_CLIENT_PACKAGES = ("python3-minimal", "python3", "python3-cbor2", "socat", "openssl")
VENDORED_PYPI = ("boto3", "botocore", "s3transfer", "jmespath", "dateutil", "urllib3", "six.py")
SECRET = b"the enclave's database password"


def _site_packages() -> Path:
    for directory in site.getsitepackages():
        if (Path(directory) / "boto3").is_dir():
            return Path(directory)
    pytest.fail("boto3 is importable but not in a site-packages directory")


def _stage(context: Path) -> Path:
    shutil.copytree(HERE / "enclave", context)
    source = _site_packages()
    vendor = context / "vendor"
    vendor.mkdir()
    for name in VENDORED_PYPI:
        if name.endswith(".py"):
            shutil.copy2(source / name, vendor / name)
        else:
            shutil.copytree(source / name, vendor / name, ignore=shutil.ignore_patterns("__pycache__"))
    # botocore's other service models are left out: kms/ and the top-level files stay
    models = vendor / "botocore" / "data"
    for entry in models.iterdir():
        if entry.is_dir() and entry.name != "kms":
            shutil.rmtree(entry)
    (context / "vsock_enclave.py").write_bytes((ROOT / "emulator" / "vsock" / "enclave.py").read_bytes())
    (context / "fake_nsm").mkdir()
    (context / "fake_nsm" / "__init__.py").touch()
    for name in ("client.py", "codec.py", "errors.py"):
        shutil.copy2(ROOT / "fake_nsm" / name, context / "fake_nsm" / name)
    return context


@pytest.fixture(scope="module")
def factory(tmp_path_factory: pytest.TempPathFactory, docker_client: Any) -> Iterator[EnclaveFactory]:
    ensure_base_image(docker_client, tag=KMS_CLIENT_IMAGE, packages=KMS_CLIENT_PACKAGES)
    factory = EnclaveFactory(tmp_path_factory.mktemp("kms") / "home", docker_client=docker_client, worker="kms")
    yield factory
    factory.close()


@pytest.fixture(scope="module")
def kms(factory: EnclaveFactory) -> Iterator[LocalKms]:
    with LocalKms(factory.home, trusted_roots=[factory.ca.root_der]) as kms:
        yield kms


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory, factory: EnclaveFactory) -> EnclaveSpec:
    context = _stage(tmp_path_factory.mktemp("ctx") / "context")
    spec = EnclaveSpec(dockerfile_dir=context, build_args={"BASE": KMS_CLIENT_IMAGE}).checked()
    factory.build(spec)
    return spec


@pytest.fixture(scope="module")
def enclave(factory: EnclaveFactory, spec: EnclaveSpec, kms: LocalKms) -> EnclaveHandle:
    return factory.start(spec, name="kms-client")


def ask(handle: EnclaveHandle, request: dict[str, Any]) -> dict[str, Any]:
    with handle.connect(5000, timeout=60) as sock, sock.makefile("rwb") as stream:
        stream.write(json.dumps(request).encode() + b"\n")
        stream.flush()
        line = stream.readline()
    assert line, f"the enclave closed the connection; its output:\n{handle.logs()}"
    return dict(json.loads(line))


def test_decrypt_with_recipient_releases_the_secret_only_inside(kms: LocalKms, enclave: EnclaveHandle) -> None:
    key = kms.create_key(policy=kms.attested_policy({0: enclave.measurements[0]}))
    blob = kms.client().encrypt(KeyId=key, Plaintext=SECRET)["CiphertextBlob"]
    answer = ask(enclave, {"op": "decrypt", "blob": base64.b64encode(blob).decode()})
    assert "error" not in answer, answer
    assert answer["plaintext_field"] == ""                 # KMS never sent the plaintext itself
    assert base64.b64decode(answer["plaintext"]) == SECRET  # openssl opened CiphertextForRecipient


def test_generate_data_key_for_the_enclave(kms: LocalKms, enclave: EnclaveHandle) -> None:
    key = kms.create_key(policy=kms.attested_policy({0: enclave.measurements[0], 8: bytes(48)}))
    first = ask(enclave, {"op": "generate_data_key", "key_id": key})
    assert "error" not in first, first
    data_key = base64.b64decode(first["plaintext"])
    assert len(data_key) == 32
    again = ask(enclave, {"op": "decrypt", "blob": first["blob"]})  # the wrapped copy, later
    assert base64.b64decode(again["plaintext"]) == data_key


def test_a_policy_for_another_image_refuses_the_enclave(kms: LocalKms, enclave: EnclaveHandle) -> None:
    other = bytes(reversed(enclave.measurements[0]))
    key = kms.create_key(policy=kms.attested_policy({0: other}))
    blob = kms.client().encrypt(KeyId=key, Plaintext=SECRET)["CiphertextBlob"]
    answer = ask(enclave, {"op": "decrypt", "blob": base64.b64encode(blob).decode()})
    assert answer["error"] == "AccessDeniedException"
    assert "plaintext" not in answer


def test_a_debug_mode_enclave_is_refused(
    kms: LocalKms, enclave: EnclaveHandle, factory: EnclaveFactory, spec: EnclaveSpec
) -> None:
    """Same image, debug mode: its documents carry zero PCRs, which match no PCR0 policy."""
    from dataclasses import replace

    key = kms.create_key(policy=kms.attested_policy({0: enclave.measurements[0]}))
    blob = kms.client().encrypt(KeyId=key, Plaintext=SECRET)["CiphertextBlob"]
    debug = factory.start(replace(spec, debug_mode=True), name="kms-client-debug")
    try:
        answer = ask(debug, {"op": "decrypt", "blob": base64.b64encode(blob).decode()})
    finally:
        debug.terminate()
    assert answer["error"] == "AccessDeniedException"
