"""A local Debian base image for enclaves, for machines that cannot pull from a registry.

On a laptop, enclave images are built ``FROM`` any image a registry serves. On a machine
without a registry (CI here), we build one from Debian's packages: ``debootstrap`` a minimal
bookworm with Python, then import the directory as an image through the Docker API. The
result is cached by tag, so the ~70 s build happens once per engine.
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

from emulator.docker_client import docker_client
from emulator.errors import EmulatorError

BASE_IMAGE_TAG = "nitro-emu/base:bookworm"
BASE_PACKAGES: tuple[str, ...] = ("python3-minimal", "python3-cbor2")
_SUITE = "bookworm"


class BaseImageError(EmulatorError):
    """The local base image could not be built."""


def _image_exists(client: docker.DockerClient, tag: str) -> bool:
    try:
        client.images.get(tag)
    except docker.errors.ImageNotFound:
        return False
    return True


def ensure_base_image(
    client: docker.DockerClient | None = None,
    *,
    tag: str = BASE_IMAGE_TAG,
    packages: Sequence[str] = BASE_PACKAGES,
) -> str:
    """Return a local image tag with Debian bookworm, Python 3 and cbor2.

    Uses the cached tag when present; otherwise builds it with debootstrap, which needs
    root and Debian's package mirror (no container registry).
    """
    client = client or docker_client()
    if _image_exists(client, tag):
        return tag
    debootstrap = shutil.which("debootstrap")
    if debootstrap is None:
        raise BaseImageError(
            f"image {tag!r} is not in the local engine and debootstrap is not installed; "
            "install it (apt-get install debootstrap) or build your enclave images FROM an "
            "image your registry serves"
        )
    if os.geteuid() != 0:
        raise BaseImageError(
            f"building {tag!r} with debootstrap needs root; run `sudo nitro-emu base-image` "
            "once, or build your enclave images FROM an image your registry serves"
        )
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
