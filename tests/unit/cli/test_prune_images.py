"""nitro-emu prune-images against a fake engine: what is removed, kept, and printed."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from typing import Any

import docker.errors
import pytest

from emulator.cli.app import main
import emulator.engine.client  # noqa: F401 - patched below
from emulator.cli.eif import ImagePruneError, prune_enclave_images


@dataclass
class FakeImage:
    id: str
    tags: list[str]


@dataclass
class FakeContainer:
    attrs: dict[str, Any]


@dataclass
class FakeImages:
    images: list[FakeImage]
    refuse: set[str] = field(default_factory=set)
    removed: list[str] = field(default_factory=list)
    listed_with: list[str] = field(default_factory=list)

    def list(self, name: str) -> list[FakeImage]:
        self.listed_with.append(name)
        return [image for image in self.images if any(t.startswith(f"{name}:") for t in image.tags)]

    def remove(self, image: str) -> None:
        if image in self.refuse:
            raise docker.errors.APIError("409 Conflict: image is being used by a container")
        self.removed.append(image)


@dataclass
class FakeContainers:
    containers: list[FakeContainer]
    fail: bool = False

    def list(self, all: bool = False, sparse: bool = False) -> list[FakeContainer]:  # noqa: A002
        assert all, "stopped containers also pin their image"
        if self.fail:
            raise docker.errors.APIError("500 Server Error", explanation="engine is sad")
        return self.containers


@dataclass
class FakeClient:
    images: FakeImages
    containers: FakeContainers
    closed: bool = False

    def close(self) -> None:
        self.closed = True


def _client(refuse: set[str] = frozenset()) -> FakeClient:  # type: ignore[assignment]
    images = [
        FakeImage("sha256:used-running", ["nitro-emu/enclave:aaaa"]),
        FakeImage("sha256:used-stopped", ["nitro-emu/enclave:bbbb"]),
        FakeImage("sha256:idle", ["nitro-emu/enclave:cccc", "mine:keep-this-name"]),
        FakeImage("sha256:idle2", ["nitro-emu/enclave:dddd"]),
        FakeImage("sha256:other", ["someone/else:latest"]),
    ]
    containers = [
        FakeContainer({"ImageID": "sha256:used-running", "State": "running"}),
        FakeContainer({"Image": "sha256:used-stopped", "State": "exited"}),  # inspected form
        FakeContainer({"ImageID": "sha256:other", "State": "running"}),
    ]
    return FakeClient(FakeImages(images, refuse=set(refuse)), FakeContainers(containers))


def test_removes_only_enclave_tags_that_no_container_uses() -> None:
    client = _client()
    result = prune_enclave_images(client)
    assert result == {"Removed": ["nitro-emu/enclave:cccc", "nitro-emu/enclave:dddd"],
                      "Kept": ["nitro-emu/enclave:aaaa", "nitro-emu/enclave:bbbb"]}
    # by tag: the user's own name for an idle image survives
    assert client.images.removed == ["nitro-emu/enclave:cccc", "nitro-emu/enclave:dddd"]
    assert client.images.listed_with == ["nitro-emu/enclave"]


def test_dry_run_removes_nothing_and_lists_the_same() -> None:
    client = _client()
    assert prune_enclave_images(client, dry_run=True) == prune_enclave_images(_client())
    assert client.images.removed == []


def test_refused_removal_is_reported_as_kept() -> None:
    client = _client(refuse={"nitro-emu/enclave:dddd"})
    result = prune_enclave_images(client)
    assert result == {"Removed": ["nitro-emu/enclave:cccc"],
                      "Kept": ["nitro-emu/enclave:aaaa", "nitro-emu/enclave:bbbb", "nitro-emu/enclave:dddd"]}


def test_engine_listing_failure_is_a_typed_error() -> None:
    client = _client()
    client.containers.fail = True
    with pytest.raises(ImagePruneError, match="engine is sad"):
        prune_enclave_images(client)
    assert client.images.removed == []


@pytest.mark.parametrize(("argv", "removes"), [((), True), (("--all-unused",), True), (("--dry-run",), False)])
def test_cli_prints_one_json_object(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                    argv: tuple[str, ...], removes: bool) -> None:
    client = _client()
    monkeypatch.setattr(sys.modules["emulator.engine.client"], "docker_client", lambda: client)
    assert main(["prune-images", *argv]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["Removed"] == ["nitro-emu/enclave:cccc", "nitro-emu/enclave:dddd"]
    assert printed["Kept"] == ["nitro-emu/enclave:aaaa", "nitro-emu/enclave:bbbb"]
    assert bool(client.images.removed) is removes and client.closed


def test_cli_listing_failure_is_one_line_and_nonzero(monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    client = _client()
    client.containers.fail = True
    monkeypatch.setattr(sys.modules["emulator.engine.client"], "docker_client", lambda: client)
    assert main(["prune-images"]) != 0
    captured = capsys.readouterr()
    assert captured.out == "" and "engine is sad" in captured.err and "Traceback" not in captured.err
