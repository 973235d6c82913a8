"""An enclave image running :mod:`emulator.vsock.peer` programs (for tests and benchmarks).

The image is the base image plus ``vsock_enclave.py`` and ``vsock_peer.py`` flat in
``/app``; its command serves the given ``KIND:PORT`` specs. Built with the Docker SDK and
cached by Docker under ``nitro-emu-test/vsock-peer:<hash of the sources and program>``; a
new build removes the same program's images built from older sources.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from emulator.engine.base_image import ensure_base_image

IMAGE_REPO = "nitro-emu-test/vsock-peer"
PROGRAM_LABEL = "org.nitro-emu.vsock-peer.program"
#: file in this package -> its flat name in /app (peer.py imports vsock_enclave there)
_SOURCES = {"enclave.py": "vsock_enclave.py", "peer.py": "vsock_peer.py"}
_HERE = Path(__file__).resolve().parent


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def peer_image(docker_client: Any, program: Sequence[str]) -> str:
    """Build (or reuse) the image whose command is ``vsock_peer.py <program...>``; its tag."""
    base = ensure_base_image(docker_client)
    command = ["python3", "/app/vsock_peer.py", *program]
    dockerfile = f"FROM {base}\nCOPY {' '.join(_SOURCES.values())} /app/\nCMD {json.dumps(command)}\n".encode()
    program_key = hashlib.sha256(dockerfile).hexdigest()[:16]
    digest = hashlib.sha256(dockerfile)
    sources = {flat: (_HERE / name).read_bytes() for name, flat in _SOURCES.items()}
    for name, data in sources.items():
        digest.update(name.encode() + b"\0" + data)
    tag = f"{IMAGE_REPO}:{digest.hexdigest()[:16]}"
    try:
        docker_client.images.get(tag)
        return tag
    except Exception:  # noqa: BLE001 - docker.errors.ImageNotFound: build it below
        pass
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        for name, data in sources.items():
            _add_bytes(tar, name, data)
        _add_bytes(tar, "Dockerfile", dockerfile)
    context.seek(0)
    docker_client.images.build(
        fileobj=context, custom_context=True, tag=tag, rm=True, forcerm=True,
        labels={PROGRAM_LABEL: program_key},
    )
    _remove_outdated(docker_client, program_key, tag)
    return tag


def _remove_outdated(docker_client: Any, program_key: str, current: str) -> None:
    """Remove this program's images built from older sources (they are only caches)."""
    for image in docker_client.images.list(filters={"label": f"{PROGRAM_LABEL}={program_key}"}):
        for tag in image.tags:
            if tag != current and tag.startswith(IMAGE_REPO + ":"):
                try:
                    docker_client.images.remove(tag)
                except Exception:  # noqa: BLE001 - in use by a running test: keep it
                    pass


def peer_eif(docker_client: Any, program: Sequence[str], output: Path) -> Path:
    """Build an EIF of :func:`peer_image` at ``output`` and return its path."""
    from emulator.eif.build import build_eif

    build_eif(docker_client, peer_image(docker_client, program), output)
    return output
