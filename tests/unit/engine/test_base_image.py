"""Which way the base image is made: cached tag, debootstrap as root, or a registry build."""

from __future__ import annotations

from typing import Any

import docker.errors
import pytest

from emulator.engine import base_image
from emulator.engine.base_image import BaseImageError, ensure_base_image


class FakeImages:
    def __init__(self, present: set[str], build_error: Exception | None = None) -> None:
        self.present = present
        self.build_error = build_error
        self.dockerfiles: list[str] = []

    def get(self, tag: str) -> object:
        if tag not in self.present:
            raise docker.errors.ImageNotFound(tag)
        return object()

    def build(self, *, fileobj: Any, tag: str, **_: Any) -> None:
        self.dockerfiles.append(fileobj.read().decode())
        if self.build_error is not None:
            raise self.build_error
        self.present.add(tag)


class FakeClient:
    def __init__(self, images: FakeImages) -> None:
        self.images = images


def test_cached_tag_is_used_as_is() -> None:
    images = FakeImages({"nitro-emu/base:bookworm"})
    assert ensure_base_image(FakeClient(images)) == "nitro-emu/base:bookworm"  # type: ignore[arg-type]
    assert images.dockerfiles == []


def test_without_root_it_builds_from_the_registry_with_the_packages(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(base_image.os, "geteuid", lambda: 1000)
    images = FakeImages(set())
    tag = ensure_base_image(FakeClient(images), tag="x/y:z", packages=("python3-minimal", "extra"))  # type: ignore[arg-type]
    assert tag == "x/y:z" and "x/y:z" in images.present
    (dockerfile,) = images.dockerfiles
    assert dockerfile.startswith("FROM debian:bookworm-slim\n")
    assert "apt-get install -y --no-install-recommends python3-minimal extra" in dockerfile


def test_no_root_and_no_registry_says_what_each_way_needs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(base_image.os, "geteuid", lambda: 1000)
    images = FakeImages(set(), build_error=docker.errors.APIError("pull access denied"))
    with pytest.raises(BaseImageError) as caught:
        ensure_base_image(FakeClient(images))  # type: ignore[arg-type]
    message = str(caught.value)
    assert "is a registry reachable?" in message and "pull access denied" in message
    assert "sudo nitro-emu base-image" in message and "debootstrap" in message
