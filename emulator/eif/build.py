"""build-enclave: a local Docker image becomes an EIF with real PCRs (nitro-facts §3).

Sections: nitro-emu's boot blobs (kernel, cmdline, boot ramdisk; PCR1 fixed per release),
the ``EifIdentityInfo`` metadata JSON, the application ramdisk (the canonical archive of
``emulator.eif.ramdisk`` by default, or nitro-cli's cpio layout of
``emulator.eif.nitro_cli_ramdisk``) and, when asked, the signature section
(``emulator.eif.signing``).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO

import docker
import docker.errors
import requests.exceptions

from emulator.eif.boot_blobs import boot_blobs
from emulator.eif.file import write_eif
from emulator.eif.signing import EifSigner
from emulator.errors import NitroCliError
from emulator.eif.nitro_cli_ramdisk import cmd_and_env, write_nitro_cli_ramdisk
from emulator.eif.ramdisk import app_ramdisk_source, export_rootfs, image_config, resolve_image
from emulator.eif.measurements import Measurements

BUILD_TOOL = "nitro-emu"
#: Docker architectures and the EIF header's arch flag (cli ``enclave_build/src/lib.rs``).
_ARCH_FLAGS = {"amd64": False, "arm64": True}
#: ``build-enclave --format``: nitro-emu's canonical archive (default) or nitro-cli's cpio.
FORMAT_NITRO_EMU, FORMAT_NITRO_CLI = "nitro-emu", "nitro-cli"
FORMATS = (FORMAT_NITRO_EMU, FORMAT_NITRO_CLI)


class EifBuildError(NitroCliError):
    """The EIF could not be written (nitro-cli's E48, EIF building error)."""

    def __init__(self, problem: str) -> None:
        super().__init__(48, f"EIF building error: {problem}")
        self.problem = problem


class DockerImageBuildError(NitroCliError):
    """``--docker-dir`` did not build (nitro-cli's E49)."""

    def __init__(self, directory: Path, problem: str) -> None:
        super().__init__(
            49,
            f"Docker image build error: building {directory} failed: {problem}. "
            "Fix the Dockerfile and retry.",
        )
        self.directory = directory


def _build_time() -> str:
    # chrono's to_rfc3339(); SOURCE_DATE_EPOCH pins it for byte-identical files.
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    moment = (
        datetime.fromtimestamp(int(epoch), timezone.utc) if epoch and epoch.isdecimal() else datetime.now(timezone.utc)
    )
    return moment.isoformat()


def identity_metadata(
    docker_uri: str,
    docker_info: dict[str, Any],
    kernel_version: str,
    *,
    name: str | None = None,
    version: str | None = None,
    custom: Any = None,
) -> bytes:
    """The metadata section: ``EifIdentityInfo`` JSON (nitro-facts §3.3)."""
    # nitro-cli's defaults (enclave_build ``generate_identity_info``): the URI before its
    # first ':' and the image id without "sha256:".
    image_id = str(docker_info.get("Id", ""))
    identity = {
        "ImageName": name or docker_uri.split(":")[0],
        "ImageVersion": version or image_id.removeprefix("sha256:"),
        "BuildMetadata": {
            "BuildTime": _build_time(),
            "BuildTool": BUILD_TOOL,
            "BuildToolVersion": boot_blobs().version,
            "OperatingSystem": "Linux",  # enclaves run on the (Docker host's) Linux kernel
            "KernelVersion": kernel_version,
        },
        "DockerInfo": docker_info,
        "CustomMetadata": custom,
    }
    return json.dumps(identity, sort_keys=False, ensure_ascii=False).encode()


def load_custom_metadata(path: Path) -> Any:
    """``--metadata``: a JSON file whose content is stored as ``CustomMetadata``."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as error:
        raise EifBuildError(f"cannot read the metadata file {path}: {error.strerror}") from error
    except ValueError as error:
        raise EifBuildError(f"the metadata file {path} is not valid JSON ({error})") from error


def build_docker_image(client: docker.DockerClient, directory: Path, tag: str) -> None:
    """``--docker-dir``: build the Dockerfile in ``directory`` as ``tag``."""
    if not (Path(directory) / "Dockerfile").is_file():
        raise DockerImageBuildError(Path(directory), "no Dockerfile in that directory")
    try:
        client.images.build(path=str(directory), tag=tag, rm=True, forcerm=True)
    except docker.errors.BuildError as error:
        raise DockerImageBuildError(Path(directory), str(error.msg)) from error
    except docker.errors.APIError as error:
        raise DockerImageBuildError(Path(directory), str(error.explanation or error)) from error


def nitro_cli_ramdisk_source(client: docker.DockerClient, image: Any) -> Callable[[BinaryIO], None]:
    """A writer of ``image``'s customer ramdisk in nitro-cli's layout, for ``write_eif``."""
    config = image_config(image)
    cmd_and_env(config)  # no command: fail before exporting anything

    def write(out: BinaryIO) -> None:
        with tempfile.TemporaryFile(prefix="nitro-emu-export-") as spool:
            export_rootfs(client, image.id, spool)
            write_nitro_cli_ramdisk(spool, config, out)

    return write


def build_eif(
    docker_client: docker.DockerClient,
    image: str,
    output: Path,
    *,
    signing_certificate: Path | None = None,
    private_key: Path | None = None,
    name: str | None = None,
    version: str | None = None,
    metadata: Any = None,
    ramdisk_format: str = FORMAT_NITRO_EMU,
    notify: Callable[[str], None] = lambda _: None,
) -> Measurements:
    """Build ``output`` (an EIF v4) from the local Docker image ``image``.

    Args:
        image: a local image name or id; pulled if absent and a registry answers.
        signing_certificate, private_key: PEM files; both or neither.
        name, version: ``ImageName`` / ``ImageVersion`` in the metadata.
        metadata: JSON value stored as ``CustomMetadata``.
        ramdisk_format: ``"nitro-emu"`` (the canonical archive) or ``"nitro-cli"`` (its cpio).
        notify: receives nitro-cli's progress lines.

    Returns:
        The measurements (PCR0/1/2, and PCR8 when signed).
    """
    if ramdisk_format not in FORMATS:
        raise EifBuildError(f"unknown format {ramdisk_format!r}; use one of {', '.join(FORMATS)}")
    if (signing_certificate is None) != (private_key is None):
        raise EifBuildError("--signing-certificate and --private-key must be given together")
    signer = None
    if signing_certificate is not None and private_key is not None:
        signer = EifSigner.from_files(signing_certificate, private_key)
    output = Path(output)
    if not output.parent.is_dir():
        raise EifBuildError(f"the output directory {output.parent} does not exist")
    found = resolve_image(docker_client, image, notify)
    architecture = found.attrs.get("Architecture", "amd64")
    if architecture not in _ARCH_FLAGS:
        raise EifBuildError(f"{image!r} is a {architecture} image; enclaves run amd64 or arm64 images")
    blobs = boot_blobs()
    if ramdisk_format == FORMAT_NITRO_CLI:
        app = nitro_cli_ramdisk_source(docker_client, found)
    else:
        app = app_ramdisk_source(docker_client, found)
    section = identity_metadata(
        image, found.attrs, blobs.kernel_version, name=name, version=version, custom=metadata
    )
    try:
        return write_eif(
            output,
            kernel=blobs.kernel,
            cmdline=blobs.cmdline,
            metadata=section,
            ramdisks=(blobs.boot_ramdisk, app),
            signer=signer,
            arm64=_ARCH_FLAGS[architecture],
        )
    except (docker.errors.DockerException, requests.exceptions.RequestException) as error:
        raise EifBuildError(f"exporting {image!r} from the Docker engine failed ({error})") from error
    except OSError as error:
        raise EifBuildError(f"writing {output} failed ({error.strerror or error})") from error
