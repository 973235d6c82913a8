"""The application ramdisk: a Docker image's root filesystem and config, canonically archived.

build-enclave exports the image's flattened filesystem (a stopped container's ``export()``)
and rewrites it as a canonical, uncompressed tar so the same content always gives the same
bytes, hence the same PCR0/PCR2 on every rebuild:

* member 0 is ``.nitro-emu-image.json``: the image config (Entrypoint, Cmd, Env, WorkingDir,
  User) as JSON with sorted keys;
* then every filesystem entry, sorted by path; mtimes 0; owner names dropped, numeric
  uid/gid and modes kept; extended (pax) headers reduced to file xattrs; hard links point at
  the first path of their group in sorted order.
* one exception to mtime 0: a ``X.py`` whose ``__pycache__/X.<cpython tag>.pyc`` in the image
  is timestamp-based and records the .py's size gets the mtime that pyc records, so CPython
  finds its cached bytecode valid in the (read-only) enclave instead of recompiling on every
  start. That mtime comes from the image's bytes, so the archive stays a function of content.

Because member 0 comes first, the rest of the ramdisk is itself a tar of the root
filesystem, which :func:`load_enclave_image` streams straight from the EIF section into
``docker load`` as the one layer of an image (``emulator.engine.image_load``), the config's
Entrypoint, Cmd, Env, WorkingDir and User in the image config.
"""

from __future__ import annotations

import json
import re
import struct
import tarfile
import tempfile
from collections.abc import Callable
from typing import IO, Any, BinaryIO, cast

import docker
import docker.errors
import requests.exceptions
from docker.utils import parse_repository_tag

from emulator.engine.client import image_exists
from emulator.engine.image_load import load_layer_image
from emulator.eif.file import EifImage, Section
from emulator.eif.format import EifFormatError
from emulator.errors import NitroCliError

CONFIG_MEMBER = ".nitro-emu-image.json"
CONFIG_KEYS = ("Cmd", "Entrypoint", "Env", "User", "WorkingDir")
ENCLAVE_REPOSITORY = "nitro-emu/enclave"
LABEL_PCR0 = "org.nitro-emu.pcr0"
LABEL_PURPOSE = "org.nitro-emu.purpose"
_BLOCK = 512
_COPY_BUFFER = 1 << 20
# PEP 3147 cache name of a source X.py: __pycache__/X.<tag>.pyc (optimized .opt-N pycs aside)
_PYC_NAME = re.compile(r"^(?P<dir>(?:.*/)?)__pycache__/(?P<stem>[^/]+)\.(?P<tag>cpython-[0-9]+)\.pyc$")
_PYC_HEADER = struct.Struct("<4sIII")  # PEP 552: magic, flags, source mtime, source size


class DockerImagePullError(NitroCliError):
    """The image is neither local nor pullable (nitro-cli's E50)."""

    def __init__(self, image: str, reason: str) -> None:
        super().__init__(
            50,
            f"Docker image pull error: {image!r} is not in the local Docker engine and "
            f"pulling it failed ({reason}). Build or load it locally first (e.g. with "
            "`--docker-dir DIR`), or check the name and your registry access.",
        )
        self.image = image


class EnclaveImageLoadError(NitroCliError):
    """The EIF's application ramdisk could not become a Docker image (E36, boot failure)."""

    def __init__(self, problem: str) -> None:
        super().__init__(36, f"Enclave boot failure: {problem}")
        self.problem = problem


def image_config(image: Any) -> dict[str, Any]:
    """The runtime config an enclave needs, from a Docker image's ``Config``."""
    config = (image.attrs.get("Config") or {}) if hasattr(image, "attrs") else dict(image)
    return {key: config.get(key) or None for key in CONFIG_KEYS}


def resolve_image(
    client: docker.DockerClient, image: str, notify: Callable[[str], None] = lambda _: None
) -> Any:
    """The local image named ``image``; pulled when absent and a registry answers."""
    try:
        found = client.images.get(image)
    except docker.errors.ImageNotFound:
        pass
    except docker.errors.APIError as error:
        raise DockerImagePullError(image, str(error.explanation or error)) from error
    else:
        notify("Using the locally available Docker image...")
        return found
    repository, tag = parse_repository_tag(image)
    try:
        return client.images.pull(repository, tag=tag or "latest")
    except (docker.errors.APIError, docker.errors.ImageNotFound) as error:
        reason = getattr(error, "explanation", None) or str(error)
        raise DockerImagePullError(image, str(reason).splitlines()[0]) from error


def export_rootfs(client: docker.DockerClient, image_id: str, spool: BinaryIO) -> None:
    """Write the image's flattened filesystem (a tar) into ``spool``.

    A stopped container is created for the export and always removed afterwards.
    """
    container = client.containers.create(
        image_id,
        entrypoint=["/nitro-emu-export-only"],
        labels={LABEL_PURPOSE: "build-enclave-export"},
        network_disabled=True,
    )
    try:
        for chunk in container.export(chunk_size=_COPY_BUFFER):
            spool.write(cast(bytes, chunk))  # the SDK yields bytes (its stubs say str)
    finally:
        container.remove(force=True)
    spool.seek(0)


def _canonical_info(member: tarfile.TarInfo, name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.REGTYPE if member.type in (tarfile.AREGTYPE, tarfile.CONTTYPE) else member.type
    info.mode = member.mode
    info.uid, info.gid = member.uid, member.gid
    info.uname = info.gname = ""
    info.mtime = 0
    info.size = member.size if info.type == tarfile.REGTYPE else 0
    info.linkname = member.linkname if member.issym() else ""
    info.devmajor, info.devminor = member.devmajor, member.devminor
    info.pax_headers = {
        key: value for key, value in sorted(member.pax_headers.items()) if key.startswith("SCHILY.xattr.")
    }
    return info


def _normal(name: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    return name.strip("/")


def _pyc_source_stamps(
    exported: tarfile.TarFile, members: dict[str, tarfile.TarInfo], data_of: Callable[[str], tarfile.TarInfo]
) -> dict[str, int]:
    """The mtime to give each ``X.py`` whose timestamp pyc matches it (module doc).

    A first pass over the spooled export: only the 16-byte header of each pyc is read.
    Several pycs of one source (different tags): the lexicographically first tag decides.
    """
    stamps: dict[str, int] = {}
    for name in sorted(members):
        match = _PYC_NAME.match(name)
        if match is None:
            continue
        source = f"{match['dir']}{match['stem']}.py"
        if source in stamps or source not in members:
            continue
        pyc, py = data_of(name), data_of(source)
        if not (pyc.isreg() and py.isreg()) or pyc.size < _PYC_HEADER.size:
            continue
        stream = exported.extractfile(pyc)
        if stream is None:
            continue
        magic, flags, mtime, size = _PYC_HEADER.unpack(stream.read(_PYC_HEADER.size))
        # flags 0: timestamp-based (PEP 552); bit 0 set would mean hash-based, never stale
        if magic[2:] == b"\r\n" and flags == 0 and size == py.size & 0xFFFFFFFF:
            stamps[source] = mtime
    return stamps


def write_canonical_archive(source: BinaryIO, config: dict[str, Any], out: IO[bytes]) -> None:
    """Rewrite the exported tar ``source`` canonically, config first, into ``out``.

    ``source`` must be seekable (a spooled export): pyc headers are read before the sources
    that sort ahead of them.
    """
    with tarfile.open(fileobj=source, mode="r:") as exported:
        members = {}
        for member in exported.getmembers():
            name = _normal(member.name)
            if name and name != CONFIG_MEMBER:
                members[name] = member
        # Hard links: the first path of each group (sorted) carries the data (§ module doc).
        groups: dict[str, list[str]] = {}
        for name, member in members.items():
            if member.islnk():
                groups.setdefault(_normal(member.linkname), []).append(name)
        data_from: dict[str, tarfile.TarInfo] = {}
        link_to: dict[str, str] = {}
        for target, names in groups.items():
            if target not in members or not members[target].isreg():
                continue
            group = sorted([target, *names])
            data_from[group[0]] = members[target]
            for other in group[1:]:
                link_to[other] = group[0]

        def data_of(name: str) -> tarfile.TarInfo:
            member = members[name]
            target = _normal(member.linkname) if member.islnk() else ""
            return members[target] if target in members and members[target].isreg() else member

        stamps = _pyc_source_stamps(exported, members, data_of)
        # A hard-link group is one inode: all its paths carry the first stamp found in it.
        for target, names in groups.items():
            group = sorted([target, *names])
            found = [stamps[name] for name in group if name in stamps]
            for name in group:
                if found:
                    stamps[name] = found[0]
        with tarfile.TarFile(
            fileobj=_Appender(out),  # type: ignore[arg-type]
            mode="w",
            format=tarfile.PAX_FORMAT,
            copybufsize=_COPY_BUFFER,
        ) as archive:
            payload = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
            header = tarfile.TarInfo(CONFIG_MEMBER)
            header.size, header.mode, header.mtime = len(payload), 0o444, 0
            header.uname = header.gname = ""
            archive.addfile(header, _BytesReader(payload))
            for name in sorted(members, key=lambda n: n.encode("utf-8", "surrogateescape")):
                member = members[name]
                if name in link_to:
                    info = _canonical_info(data_from[link_to[name]], name)
                    info.type, info.size, info.linkname = tarfile.LNKTYPE, 0, link_to[name]
                    info.mtime = stamps.get(name, 0)
                    archive.addfile(info)
                    continue
                original = data_from.get(name, member)
                if member.islnk() and name not in data_from:
                    info = _canonical_info(member, name)  # link to a non-file: keep as is
                    info.type, info.linkname = tarfile.LNKTYPE, _normal(member.linkname)
                    archive.addfile(info)
                    continue
                info = _canonical_info(original, name)
                if info.type == tarfile.REGTYPE:
                    info.mtime = stamps.get(name, 0)
                    archive.addfile(info, exported.extractfile(original))
                else:
                    archive.addfile(info)


class _Appender:
    """Write-only view of ``out`` for tarfile's "w" mode (which only asks for ``tell``)."""

    def __init__(self, out: IO[bytes]) -> None:
        self._out, self._position = out, 0

    def write(self, data: bytes) -> int:
        self._out.write(data)
        self._position += len(data)
        return len(data)

    def tell(self) -> int:
        return self._position


class _BytesReader:
    def __init__(self, data: bytes) -> None:
        self._data, self._position = data, 0

    def read(self, size: int = -1) -> bytes:
        end = len(self._data) if size < 0 else self._position + size
        block = self._data[self._position : end]
        self._position += len(block)
        return block


def app_ramdisk_source(client: docker.DockerClient, image: Any) -> Callable[[BinaryIO], None]:
    """A writer of the application ramdisk of ``image``, for :func:`emulator.eif.file.write_eif`."""
    config = image_config(image)

    def write(out: BinaryIO) -> None:
        with tempfile.TemporaryFile(prefix="nitro-emu-export-") as spool:
            export_rootfs(client, image.id, spool)
            write_canonical_archive(spool, config, out)

    return write


def read_ramdisk_config(eif: EifImage, section: Section) -> tuple[dict[str, Any], int]:
    """The config stored in an application ramdisk, and where its rootfs tar starts."""
    head = eif.read_section(section, 0, _BLOCK)
    try:
        info = tarfile.TarInfo.frombuf(head, tarfile.ENCODING, "surrogateescape")
    except tarfile.TarError as error:
        raise EifFormatError(eif.path, f"the application ramdisk is not a nitro-emu archive ({error})") from error
    if info.name != CONFIG_MEMBER:
        raise EifFormatError(
            eif.path, f"the application ramdisk starts with {info.name!r}, not {CONFIG_MEMBER!r}"
        )
    try:
        config = json.loads(eif.read_section(section, _BLOCK, info.size))
    except ValueError as error:
        raise EifFormatError(eif.path, f"the image config is not JSON ({error})") from error
    return config, _BLOCK + -(-info.size // _BLOCK) * _BLOCK


def enclave_image_tag(eif: EifImage) -> str:
    """The local tag of an EIF's application image: derived from PCR0."""
    return f"{ENCLAVE_REPOSITORY}:{eif.measurements.pcr0.hex()[:32]}"


def load_enclave_image(docker_client: docker.DockerClient, eif: EifImage) -> str:
    """Make the EIF's application ramdisk a local Docker image; return its tag (cached).

    Raises:
        EifFormatError: the EIF has no nitro-emu application ramdisk.
        EnclaveImageLoadError: the engine refused the import.
    """
    tag = enclave_image_tag(eif)
    if image_exists(docker_client, tag):
        return tag
    ramdisks = eif.ramdisks
    if len(ramdisks) < 2:
        raise EifFormatError(eif.path, "it has no application ramdisk (only the boot ramdisk)")
    section = ramdisks[1]
    config, rootfs_offset = read_ramdisk_config(eif, section)
    if rootfs_offset > section.size:
        raise EifFormatError(eif.path, "the image config claims more bytes than the application ramdisk holds")
    try:
        # `docker load` of the rootfs tar as the image's only layer, read straight from the
        # section: faster than `docker import` of it (bench/runtime.py, first start)
        load_layer_image(
            docker_client, eif.iter_section(section, rootfs_offset), section.size - rootfs_offset, tag,
            entrypoint=config.get("Entrypoint"), cmd=config.get("Cmd"), env=config.get("Env"),
            working_dir=config.get("WorkingDir"), user=config.get("User"),
            labels={LABEL_PCR0: eif.measurements.pcr0.hex(), LABEL_PURPOSE: "enclave-image"},
            created_by="nitro-emu: the application ramdisk of an EIF",
        )
        docker_client.images.get(tag)
    except (docker.errors.DockerException, requests.exceptions.RequestException) as error:
        raise EnclaveImageLoadError(
            f"loading the EIF's application image as {tag} failed ({error}); "
            "check that the Docker engine is running and has disk space"
        ) from error
    return tag
