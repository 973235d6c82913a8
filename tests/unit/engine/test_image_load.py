"""The ``docker save``-format archive ``load_layer_image`` streams: read back with tarfile."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from typing import Any

import pytest

from emulator.engine.image_load import load_layer_image


class FakeImages:
    def __init__(self) -> None:
        self.loaded = b""

    def load(self, data: Any) -> list[Any]:
        self.loaded = b"".join(data)
        return []


class FakeClient:
    def __init__(self) -> None:
        self.images = FakeImages()


def test_the_archive_is_what_docker_save_writes() -> None:
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w") as rootfs:
        info = tarfile.TarInfo("app/hello")
        info.size = 5
        rootfs.addfile(info, io.BytesIO(b"hello"))
    client = FakeClient()
    data = layer.getvalue()
    chunks = [data[i : i + 700] for i in range(0, len(data), 700)]
    load_layer_image(client, chunks, len(data), "nitro-emu/enclave:abc",  # type: ignore[arg-type]
                     entrypoint=["/init", "1"], working_dir="/", labels={"org.nitro-emu.layout": "nitro-cli"})
    with tarfile.open(fileobj=io.BytesIO(client.images.loaded)) as archive:
        names = archive.getnames()
        manifest = json.loads(archive.extractfile("manifest.json").read())  # type: ignore[union-attr]
        (entry,) = manifest
        config_bytes = archive.extractfile(entry["Config"]).read()  # type: ignore[union-attr]
        layer_bytes = archive.extractfile(entry["Layers"][0]).read()  # type: ignore[union-attr]
    config = json.loads(config_bytes)
    assert entry["RepoTags"] == ["nitro-emu/enclave:abc"]
    assert entry["Config"] == hashlib.sha256(config_bytes).hexdigest() + ".json"  # the image id
    assert layer_bytes == layer.getvalue()
    assert config["rootfs"] == {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(layer_bytes).hexdigest()]}
    assert config["config"] == {"Entrypoint": ["/init", "1"], "WorkingDir": "/",
                                "Labels": {"org.nitro-emu.layout": "nitro-cli"}}
    assert sorted(names) == sorted([entry["Config"], entry["Layers"][0], "manifest.json"])


def test_config_keys_left_out_are_absent_and_the_rest_are_kept() -> None:
    client = FakeClient()
    load_layer_image(client, [bytes(1024)], 1024, "t:1", entrypoint=["/e"], labels={},  # type: ignore[arg-type]
                     cmd=["a", "b c"], env=["A=1", "B=$x"], user="1000:1000")
    with tarfile.open(fileobj=io.BytesIO(client.images.loaded)) as archive:
        (entry,) = json.loads(archive.extractfile("manifest.json").read())  # type: ignore[union-attr]
        config = json.loads(archive.extractfile(entry["Config"]).read())  # type: ignore[union-attr]
    assert config["config"] == {"Entrypoint": ["/e"], "Cmd": ["a", "b c"], "Env": ["A=1", "B=$x"],
                                "User": "1000:1000", "Labels": {}}


def test_a_layer_shorter_than_announced_is_refused() -> None:
    with pytest.raises(ValueError, match="1024 bytes, not the 2048 announced"):
        load_layer_image(FakeClient(), [bytes(1024)], 2048, "t:1", entrypoint=["/e"],  # type: ignore[arg-type]
                         labels={})
