"""Give the engine a one-layer image as a ``docker save`` archive (``POST /images/load``).

``docker import`` of a root filesystem spools the tar and applies it through a slower path;
``docker load`` of the same tar as the only layer of an image archive is several times faster
(measured in ``bench/runtime.py``). The archive is the format ``docker save`` writes:
``<dir>/layer.tar``, the image config (``<sha256>.json``) and ``manifest.json``. The layer
comes first and is streamed from the caller's chunks as they are made, hashed on the way:
the config names the layer's digest (its diff ID), so it can only be written after it. The
engine unpacks the whole archive before it reads the manifest (moby's
``image/tarexport/load.go``), so the order of the members is free.
"""

from __future__ import annotations

import hashlib
import json
import platform
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import docker

from emulator.engine.tar_stream import BLOCK, REGTYPE, member_header

_ARCHITECTURES = {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64"}
_LAYER = "layer/layer.tar"


def _header(name: str, size: int) -> bytes:
    return member_header(name.encode(), REGTYPE, mode=0o644, uid=0, gid=0, mtime=0, size=size)


def _padding(size: int) -> bytes:
    return b"\0" * (-size % BLOCK)


def _file(name: str, data: bytes) -> bytes:
    return _header(name, len(data)) + data + _padding(len(data))


def _archive(layer: Iterable[bytes], size: int, tag: str, config: dict[str, Any]) -> Iterator[bytes]:
    digest = hashlib.sha256()
    yield _header(_LAYER, size)
    written = 0
    for chunk in layer:
        digest.update(chunk)
        written += len(chunk)
        yield chunk
    if written != size:  # the engine would fail on the archive; say why here
        raise ValueError(f"the layer is {written} bytes, not the {size} announced")
    config["rootfs"] = {"type": "layers", "diff_ids": [f"sha256:{digest.hexdigest()}"]}
    encoded = json.dumps(config, sort_keys=True).encode()
    image_id = hashlib.sha256(encoded).hexdigest()
    manifest = json.dumps([{"Config": f"{image_id}.json", "RepoTags": [tag], "Layers": [_LAYER]}]).encode()
    yield _padding(size) + _file(f"{image_id}.json", encoded) + _file("manifest.json", manifest) + b"\0" * (2 * BLOCK)


def load_layer_image(
    client: docker.DockerClient,
    layer: Iterable[bytes],
    size: int,
    tag: str,
    *,
    entrypoint: Sequence[str] | None,
    labels: Mapping[str, str],
    cmd: Sequence[str] | None = None,
    env: Sequence[str] | None = None,
    working_dir: str | None = None,
    user: str | None = None,
    created_by: str = "nitro-emu",
) -> None:
    """Load the tar of ``size`` bytes that ``layer`` yields as the single layer of image ``tag``.

    ``layer`` is consumed once, while the engine receives it. The image config holds the
    given entrypoint, command, environment, working directory, user and labels (the ones
    left None are absent, as in an image built without them).

    Raises:
        docker.errors.DockerException (ImageLoadError, APIError) / requests exceptions: the
            engine refused or failed; ValueError: ``layer`` was not ``size`` bytes.
    """
    container: dict[str, Any] = {"Labels": dict(labels)}
    if entrypoint:
        container["Entrypoint"] = list(entrypoint)
    if cmd:
        container["Cmd"] = list(cmd)
    if env:
        container["Env"] = list(env)
    if working_dir:
        container["WorkingDir"] = working_dir
    if user:
        container["User"] = user
    config = {
        "architecture": _ARCHITECTURES.get(platform.machine(), platform.machine()),
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": container,
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": created_by}],
    }
    client.images.load(_archive(layer, size, tag, config))  # type: ignore[arg-type]  # a stream is fine
