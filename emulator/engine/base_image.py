"""A local Debian base image for enclaves, built with or without a container registry.

Enclave images in the tests and the demo are built ``FROM`` a Debian bookworm image with
Python and a few Debian packages. Two ways to make it, tried in this order:

- **debootstrap** (root, Debian's package mirror, no registry): bootstrap a minimal bookworm
  with the packages into a directory, then import it as an image through the Docker API.
  This is how CI works, where no registry answers.
- **a registry** (a laptop without root): build ``FROM debian:bookworm-slim`` and
  ``apt-get install`` the packages, through the Docker API.

Either way the result is cached by tag, so the ~70 s build happens once per engine.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Sequence

import docker
import docker.errors

from emulator.engine.client import docker_client, image_exists
from emulator.errors import EmulatorError

BASE_IMAGE_TAG = "nitro-emu/base:bookworm"
BASE_PACKAGES: tuple[str, ...] = ("python3-minimal", "python3-cbor2")
REGISTRY_BASE = "debian:bookworm-slim"
_SUITE = "bookworm"


class BaseImageError(EmulatorError):
    """The local base image could not be built."""


def ensure_base_image(
    client: docker.DockerClient | None = None,
    *,
    tag: str = BASE_IMAGE_TAG,
    packages: Sequence[str] = BASE_PACKAGES,
) -> str:
    """Return a local image tag with Debian bookworm, Python 3 and ``packages``.

    Uses the cached tag when present; otherwise debootstraps it (when root with debootstrap)
    or builds it from ``debian:bookworm-slim`` through a registry.

    Raises:
        BaseImageError: neither way worked; the message says what each one needs.
    """
    client = client or docker_client()
    if image_exists(client, tag):
        return tag
    debootstrap = shutil.which("debootstrap")
    if debootstrap is not None and os.geteuid() == 0:
        return _debootstrap_image(client, debootstrap, tag, packages)
    try:
        return _registry_image(client, tag, packages)
    except BaseImageError as error:
        raise BaseImageError(
            f"{error}. Without a registry, build it from Debian's packages instead: install "
            "debootstrap and run `sudo nitro-emu base-image` once (root is needed)"
        ) from error


def _debootstrap_image(
    client: docker.DockerClient, debootstrap: str, tag: str, packages: Sequence[str]
) -> str:
    with tempfile.TemporaryDirectory(prefix="nitro-emu-rootfs-") as root:
        command = [
            debootstrap,
            "--variant=minbase",
            f"--include={','.join(packages)}",
            _SUITE,
            root,
        ]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            tail = "\n".join((result.stdout + result.stderr).splitlines()[-15:])
            raise BaseImageError(f"debootstrap failed (exit {result.returncode}):\n{tail}")
        for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
            shutil.rmtree(os.path.join(root, cache), ignore_errors=True)
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as archive:
            for name in sorted(os.listdir(root)):
                archive.add(os.path.join(root, name), arcname=name)
    repository, _, version = tag.partition(":")
    try:
        client.api.import_image_from_data(
            buffer.getvalue(),
            repository=repository,
            tag=version or "latest",
            changes=['CMD ["/usr/bin/python3"]'],
        )
    except docker.errors.APIError as error:
        raise BaseImageError(f"docker import of {tag!r} failed: {error}") from error
    return tag


def _registry_image(client: docker.DockerClient, tag: str, packages: Sequence[str]) -> str:
    dockerfile = (
        f"FROM {REGISTRY_BASE}\n"
        "RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y "
        f"--no-install-recommends {' '.join(packages)} && rm -rf /var/lib/apt/lists/*\n"
        'CMD ["/usr/bin/python3"]\n'
    )
    try:
        client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=tag, rm=True, pull=True)
    except (docker.errors.BuildError, docker.errors.APIError) as error:
        raise BaseImageError(
            f"building {tag!r} FROM {REGISTRY_BASE} failed (is a registry reachable?): {error}"
        ) from error
    return tag
