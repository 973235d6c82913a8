"""Give the engine a one-layer image as a ``docker save`` archive (``POST /images/load``).

``docker import`` of a root filesystem spools the tar and applies it through a slower path;
``docker load`` of the same tar as the only layer of an image archive is several times faster
(measured in ``bench/runtime.py``, nitro-cli layout). The archive is the format ``docker save``
writes: ``manifest.json``, the image config (``<sha256>.json``) and ``<layer>/layer.tar``,
streamed, so the layer is never copied.
"""

from __future__ import annotations

import hashlib
import json
import platform
import tarfile
from collections.abc import Iterator, Mapping, Sequence
from typing import BinaryIO

import docker

_BLOCK = 512
_COPY = 1 << 20
_ARCHITECTURES = {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64"}


def _member(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o644
    return info.tobuf(format=tarfile.USTAR_FORMAT)


def _padding(size: int) -> bytes:
    return b"\0" * (-size % _BLOCK)


def _file(name: str, data: bytes) -> Iterator[bytes]:
    yield _member(name, len(data))
    yield data + _padding(len(data))


def _archive(layer: BinaryIO, size: int, diff_id: str, tag: str, config: bytes) -> Iterator[bytes]:
    image_id = hashlib.sha256(config).hexdigest()
    layer_name = f"{diff_id}/layer.tar"
    manifest = json.dumps([{"Config": f"{image_id}.json", "RepoTags": [tag], "Layers": [layer_name]}]).encode()
    yield from _file(f"{image_id}.json", config)
    yield _member(layer_name, size)
    layer.seek(0)
    while chunk := layer.read(_COPY):
        yield chunk
    yield _padding(size)
    yield from _file("manifest.json", manifest)
    yield b"\0" * (2 * _BLOCK)


def load_layer_image(
    client: docker.DockerClient,
    layer: BinaryIO,
    tag: str,
    *,
    entrypoint: Sequence[str],
    labels: Mapping[str, str],
    working_dir: str = "/",
    created_by: str = "nitro-emu",
) -> None:
    """Load the tar in ``layer`` (any position) as the single layer of image ``tag``.

    Raises:
        docker.errors.DockerException (ImageLoadError, APIError) / requests exceptions: the\n            engine refused or failed.
    """
    digest = hashlib.sha256()
    layer.seek(0)
    size = 0
    while chunk := layer.read(_COPY):
        digest.update(chunk)
        size += len(chunk)
    diff_id = digest.hexdigest()
    config = json.dumps({
        "architecture": _ARCHITECTURES.get(platform.machine(), platform.machine()),
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": {"Entrypoint": list(entrypoint), "WorkingDir": working_dir, "Labels": dict(labels)},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{diff_id}"]},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": created_by}],
    }, sort_keys=True).encode()
    client.images.load(_archive(layer, size, diff_id, tag, config))  # type: ignore[arg-type]  # a stream is fine
