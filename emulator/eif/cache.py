"""What run-enclave needs from an EIF, verified once per file version and cached.

Reading an EIF means a CRC32 and two SHA-384 passes over all of it (nitro-facts §3.3);
for a 100 MB image that is most of a second, every run. The verified result (size,
measurements, metadata, the local image tag) is kept in ``cache/eif/`` under a key made of
the file's path, device, inode, size, mtime and ctime: any change to the file (ctime cannot
be set back by a user) makes a new key, so a modified EIF is read and checked again.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from emulator.nitro_cli_errors import nitro_cli_error
from emulator.settings import Settings

if TYPE_CHECKING:
    import docker

_CACHE_VERSION = 2


@dataclass(frozen=True)
class EifSummary:
    """A verified EIF, as run-enclave uses it.

    Attributes:
        measurements: nitro-cli's ``Measurements`` map (HashAlgorithm, PCR0, PCR1, PCR2[, PCR8]).
        metadata: ``describe-enclaves --metadata``'s ``Metadata`` object, None without one.
        image_tag: the local Docker image of its application ramdisk.
        layout: ``nitro-emu`` (a canonical tar ramdisk) or ``nitro-cli`` (a cpio customer
            ramdisk, :mod:`emulator.eif.nitro_cli_layout`).
    """

    path: Path
    size: int
    measurements: Mapping[str, str]
    image_name: str | None
    image_version: str | None
    metadata: Mapping[str, Any] | None
    image_tag: str
    layout: str = "nitro-emu"


def _key(path: Path, stat: os.stat_result) -> str:
    identity = f"{_CACHE_VERSION}|{path}|{stat.st_dev}|{stat.st_ino}|{stat.st_size}|{stat.st_mtime_ns}|{stat.st_ctime_ns}"
    return hashlib.sha256(identity.encode()).hexdigest()


def describe_metadata(raw: Mapping[str, Any] | None) -> tuple[str | None, str | None, dict[str, Any] | None]:
    """(ImageName, ImageVersion, Metadata) from the EIF's ``EifIdentityInfo`` JSON.

    nitro-cli's ``MetadataDescribeInfo``: the build info fields, ``DockerInfo``, and the
    custom metadata flattened in (aws-nitro-enclaves-cli ``src/common/json_output.rs``).
    """
    if not raw:
        return None, None, None
    name = raw.get("ImageName")
    version = raw.get("ImageVersion")
    build = raw.get("BuildMetadata") or {}
    metadata: dict[str, Any] = {
        key: build.get(key)
        for key in ("BuildTime", "BuildTool", "BuildToolVersion", "OperatingSystem", "KernelVersion")
    }
    metadata["DockerInfo"] = raw.get("DockerInfo")
    custom = raw.get("CustomMetadata")
    if isinstance(custom, Mapping):
        metadata.update(custom)
    return name, version, metadata


def summarize_eif(settings: Settings, client: docker.DockerClient, eif_path: Path) -> EifSummary:
    """Verify the EIF (E19 unreadable, E35 malformed or bad CRC) and load its image."""
    path = eif_path.expanduser().absolute()
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise nitro_cli_error(
            "FileOperationFailure", str(path), "Open",
            detail="The EIF does not exist; check --eif-path (build one with `nitro-emu build-enclave`).",
        ) from None
    except OSError as error:
        raise nitro_cli_error("FileOperationFailure", str(path), "Open", detail=f"({error.strerror}).") from error
    if not path.is_file():
        raise nitro_cli_error("FileOperationFailure", str(path), "Open", detail="--eif-path is not a file.")
    cache_file = settings.cache_dir / "eif" / f"{_key(path, stat)}.json"
    summary = _cached(client, cache_file)
    if summary is not None:
        return summary
    cache_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    # One verifier per EIF at a time: the parallel first starts of one EIF (xdist workers
    # sharing a cache, threads) wait for its summary instead of each hashing the whole file.
    with open(cache_file.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        summary = _cached(client, cache_file)
        if summary is not None:
            return summary
        summary = _verify_and_load(client, path, stat.st_size)
        temporary = cache_file.with_suffix(f".{os.getpid()}.tmp")
        record = asdict(summary)
        record["path"] = str(summary.path)
        temporary.write_text(json.dumps(record, sort_keys=True))
        temporary.replace(cache_file)
    return summary


def _cached(client: docker.DockerClient, cache_file: Path) -> EifSummary | None:
    """The summary in ``cache_file`` if it is readable and its image is still in the engine."""
    from emulator.engine.client import image_exists

    with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
        data = json.loads(cache_file.read_text())
        summary = EifSummary(**{**data, "path": Path(data["path"])})
        if image_exists(client, summary.image_tag):
            return summary
    return None


def _verify_and_load(client: docker.DockerClient, path: Path, size: int) -> EifSummary:
    from emulator.engine.client import image_exists
    from emulator.eif.file import read_eif
    from emulator.eif.nitro_cli_layout import LAYOUT_NITRO_CLI, load_nitro_cli_image, ramdisk_layout
    from emulator.eif.ramdisk import (
        LABEL_PCR0,
        LABEL_PURPOSE,
        EnclaveImageLoadError,
        enclave_image_tag,
        load_enclave_image,
    )

    eif = read_eif(path)
    if not eif.crc_ok:
        raise nitro_cli_error(
            "EifParsingError",
            detail=(f"{path}: the CRC32 in its header ({eif.header.crc32:#010x}) does not match its "
                    f"content ({eif.computed_crc:#010x}); the file is corrupt or was modified. "
                    "Rebuild it with `nitro-emu build-enclave`."),
        )
    layout = ramdisk_layout(eif)
    if layout == LAYOUT_NITRO_CLI:
        tag = enclave_image_tag(eif)
        if not image_exists(client, tag):
            labels = {LABEL_PCR0: eif.measurements.pcr0.hex(), LABEL_PURPOSE: "enclave-image"}
            load_nitro_cli_image(client, eif, tag, labels, error=EnclaveImageLoadError)
    else:
        tag = load_enclave_image(client, eif)
    name, version, metadata = describe_metadata(eif.metadata)
    return EifSummary(
        path=path,
        size=size,
        measurements=eif.measurements.to_nitro_cli_json(),
        image_name=name,
        image_version=version,
        metadata=metadata,
        image_tag=tag,
        layout=layout,
    )
