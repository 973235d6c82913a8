"""The ``docker save``-format archive ``load_layer_image`` streams: read back with tarfile."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from typing import Any

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
    load_layer_image(client, layer, "nitro-emu/enclave:abc", entrypoint=["/init", "1"],  # type: ignore[arg-type]
                     labels={"org.nitro-emu.layout": "nitro-cli"})
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
