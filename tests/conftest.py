"""Shared fixtures: the real AWS vectors in ../shared, the Docker engine, a private state dir."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED_VECTORS = ROOT.parent / "shared" / "vectors"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _missing(reason: str) -> None:
    """Skip with a loud reason on a laptop; fail under CI=true, where nothing may be missing."""
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: this must be present in CI)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def aws_vectors() -> Path:
    """The directory of genuine AWS documents and the AWS root (never copied into the repo)."""
    if not SHARED_VECTORS.is_dir():
        _missing(f"the shared AWS vectors are absent: {SHARED_VECTORS}")
    return SHARED_VECTORS


@pytest.fixture(scope="session")
def docker_client():  # type: ignore[no-untyped-def]
    """A client of the local Docker engine, or a skip (a failure under CI=true)."""
    import docker
    import docker.errors

    try:
        client = docker.from_env()
        client.ping()
    except (docker.errors.DockerException, OSError) as error:
        _missing(f"no Docker engine answers: {error}")
    yield client
    client.close()


@pytest.fixture(scope="session")
def base_image(docker_client) -> str:  # type: ignore[no-untyped-def]
    """A local Debian image with Python 3 and cbor2 (debootstrap'd once, cached by tag)."""
    from emulator.engine.base_image import ensure_base_image

    return ensure_base_image(docker_client)


@pytest.fixture
def nitro_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private ``NITRO_EMU_HOME`` for one test (short path: sockets live under it)."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("NITRO_EMU_HOME", str(home))
    yield home
