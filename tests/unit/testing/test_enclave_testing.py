"""emulator.testing.handles / enclave_images without Docker: marker checks, content digests, the example's sealing."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest

from emulator.testing.images import directory_digest
from emulator.testing.handles import EnclaveSpec, EnclaveSpecError

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def dockerfile_dir(tmp_path: Path) -> Path:
    (tmp_path / "Dockerfile").write_text("FROM nitro-emu/base:bookworm\n")
    return tmp_path


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "exactly one of image=... or dockerfile_dir=..."),
        ({"image": "a", "dockerfile_dir": "."}, "exactly one of"),
        ({"image": ""}, "must be a non-empty image name"),
        ({"image": "a", "cpu_count": 0}, "cpu_count=0 must be an integer >= 1"),
        ({"image": "a", "cpu_count": True}, "cpu_count=True must be an integer"),
        ({"image": "a", "memory_mib": "512"}, "memory_mib='512' must be an integer >= 64"),
        ({"image": "a", "memory_mib": 32}, "memory_mib=32 must be an integer >= 64"),
        ({"image": "a", "debug_mode": "yes"}, "debug_mode='yes' must be True or False"),
        ({"image": "a", "instance_id": "i-123"}, "'i-' followed by 17 lower-case hex digits"),
        ({"image": "a", "memroy_mib": 512}, "unknown argument(s) ['memroy_mib']"),
        ({"image": "a", "clock_offset": "-1h"}, "clock_offset='-1h' must be a number of seconds"),
        ({"image": "a", "clock_offset": float("nan")}, "clock_offset=nan must be a number of seconds"),
        ({"image": "a", "clock_offset": 1e12}, "within +-"),
    ],
)
def test_bad_marker_values_name_the_argument(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(EnclaveSpecError) as raised:
        EnclaveSpec.from_arguments((), kwargs, where="@pytest.mark.nitro_enclave on t.py::t")

    assert message in str(raised.value)
    assert str(raised.value).startswith("@pytest.mark.nitro_enclave on t.py::t")


def test_positional_marker_arguments_are_refused() -> None:
    with pytest.raises(EnclaveSpecError, match="keyword arguments only"):
        EnclaveSpec.from_arguments(("my-image",), {}, where="m")


def test_dockerfile_dir_without_dockerfile_is_refused(tmp_path: Path) -> None:
    with pytest.raises(EnclaveSpecError, match="has no Dockerfile"):
        EnclaveSpec.from_arguments((), {"dockerfile_dir": tmp_path}, where="m")


def test_a_good_spec_resolves_the_directory(dockerfile_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(dockerfile_dir.parent)
    spec = EnclaveSpec.from_arguments(
        (), {"dockerfile_dir": dockerfile_dir.name, "memory_mib": 512, "instance_id": "i-0123456789abcdef0"}, where="m"
    )

    assert spec.dockerfile_dir == dockerfile_dir
    assert spec.memory_mib == 512 and spec.cpu_count == 1 and not spec.debug_mode


def test_overlapping_home_env_blocks_keep_the_home_until_the_last_ends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Parallel starts of one factory: the first to finish must not unset NITRO_EMU_HOME
    under the others (their next runtime call would use the default state dir)."""
    from emulator.testing.spec import home_env

    monkeypatch.delenv("NITRO_EMU_HOME", raising=False)
    first, second = home_env(tmp_path), home_env(tmp_path)
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)  # as thread A finishing while thread B still starts
    assert os.environ.get("NITRO_EMU_HOME") == str(tmp_path)
    second.__exit__(None, None, None)
    assert "NITRO_EMU_HOME" not in os.environ
    monkeypatch.setenv("NITRO_EMU_HOME", "/elsewhere")
    with home_env(tmp_path / "a"):
        with home_env(tmp_path / "b"):
            assert os.environ["NITRO_EMU_HOME"] == str(tmp_path / "b")
        assert os.environ["NITRO_EMU_HOME"] == str(tmp_path / "a")
    assert os.environ["NITRO_EMU_HOME"] == "/elsewhere"


def test_directory_digest_follows_content_mode_and_build_args(dockerfile_dir: Path) -> None:
    first = directory_digest(dockerfile_dir)
    assert directory_digest(dockerfile_dir) == first
    (dockerfile_dir / "__pycache__").mkdir()
    (dockerfile_dir / "__pycache__" / "x.pyc").write_bytes(b"junk")
    assert directory_digest(dockerfile_dir) == first  # caches do not count

    assert directory_digest(dockerfile_dir, {"BASE": "other"}) != first
    app = dockerfile_dir / "app.py"
    app.write_text("print(1)\n")
    with_app = directory_digest(dockerfile_dir)
    assert with_app != first
    app.chmod(0o755)
    assert directory_digest(dockerfile_dir) != with_app
    app.write_text("print(2)\n")
    assert directory_digest(dockerfile_dir) not in (first, with_app)


@pytest.fixture(scope="module")
def protocol() -> ModuleType:
    path = ROOT / "examples" / "confidential-service" / "protocol.py"
    spec = importlib.util.spec_from_file_location("cs_protocol", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_sealed_request_opens_only_with_the_enclave_key(protocol: ModuleType) -> None:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    enclave = X25519PrivateKey.generate()
    attested = protocol.load_public_key(protocol.public_key_der(enclave.public_key()))
    message, client_session = protocol.seal_request(attested, {"op": "store", "name": "n", "secret": b"s"})

    request, enclave_session = protocol.open_request(enclave, message)
    assert request == {"op": "store", "name": "n", "secret": b"s"}
    iv, reply = enclave_session.seal(b"answer", protocol.REPLY_AAD)
    assert client_session.open(iv, reply, protocol.REPLY_AAD) == b"answer"

    with pytest.raises(protocol.ProtocolError, match="failed authentication"):
        protocol.open_request(X25519PrivateKey.generate(), message)
    tampered = dict(message, ciphertext=message["ciphertext"][:-1] + bytes([message["ciphertext"][-1] ^ 1]))
    with pytest.raises(protocol.ProtocolError, match="failed authentication"):
        protocol.open_request(enclave, tampered)
    with pytest.raises(protocol.ProtocolError, match="failed authentication"):
        client_session.open(iv, reply, protocol.REQUEST_AAD)  # a reply is not a request


def test_attested_key_must_be_x25519(protocol: ModuleType) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    p256 = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(protocol.ProtocolError, match="not an X25519 key"):
        protocol.load_public_key(p256)
    with pytest.raises(protocol.ProtocolError, match="not a DER SubjectPublicKeyInfo"):
        protocol.load_public_key(b"not a key")
