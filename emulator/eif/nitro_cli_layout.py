"""Run what nitro-cli built: its customer ramdisk as a Docker image (issue 12).

A nitro-cli EIF's application ramdisk (nitro-facts §3.6) is a newc cpio (gzip'd before
nitro-cli 1.2.1) holding ``rootfs/`` (the Docker image's filesystem), ``cmd`` (one argv
element per line) and ``env`` (``KEY=VALUE`` lines). The layout is told from the ramdisk's own
first bytes (:func:`ramdisk_layout`), never from metadata.

:func:`load_nitro_cli_image` converts ``rootfs/`` into a tar stream (spooled in an anonymous
temporary file, so nothing is ever written to the host's filesystem tree and nothing is left
behind) and ``docker import``\\s it with the Docker SDK, tagged by PCR0 like every enclave
image. Everything is checked while converting, before the engine sees a byte: names escaping
``rootfs/`` (``..``, absolute), entries written through a symlink, hard links outside
``rootfs/``, truncation, checksums, and :class:`~emulator.eif.cpio.CpioLimits`. Each is an
``[ E35 ]`` naming the entry. Device nodes and sockets are skipped (the engine gives the
enclave its own ``/dev``) and reported as notes; hard links, symlinks, modes, owners and
mtimes are kept.

The image's entrypoint is nitro-emu's init (``emulator/enclave/nitro_cli_init.c``), given
``cmd`` and ``env`` byte for byte (hex) so that it can do what the SDK bootstrap's ``init``
does: ``chdir /``, the environment exactly ``env``, ``execvpe`` with init's PATH.
"""

from __future__ import annotations

import logging
import stat
import tarfile
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, BinaryIO

import docker
import docker.errors
import requests.exceptions

from emulator.eif.cpio import CRC_MAGIC, NEWC_MAGIC, CpioEntry, CpioFormatError, CpioLimits, CpioReader
from emulator.eif.file import EifImage
from emulator.eif.format import EifFormatError
from emulator.engine.image_load import load_layer_image
from emulator.errors import NitroCliError

logger = logging.getLogger(__name__)

LAYOUT_NITRO_EMU = "nitro-emu"
LAYOUT_NITRO_CLI = "nitro-cli"
ROOTFS = "rootfs"
#: Where the enclave sees nitro-emu's init (a read-only mount, emulator.enclave.nitro_cli_init).
ENCLAVE_INIT = "/run/nitro-emu/init/nitro-emu-init"
LABEL_LAYOUT = "org.nitro-emu.eif-layout"
#: ``cmd`` and ``env`` become exec arguments: keep them well under Linux's ARG_MAX (2 MiB).
MAX_CONFIG_BYTES = 256 << 10
_MAX_SYMLINK = 4096
_COPY = 1 << 20


class UnsafeRamdiskError(CpioFormatError):
    """An entry that would land outside ``rootfs/`` or write through a symlink (E35)."""


class NitroCliConfigError(CpioFormatError):
    """``cmd`` or ``env`` is missing or unusable (E35)."""


@dataclass(frozen=True)
class NitroCliImage:
    """What the customer ramdisk holds besides the filesystem.

    Attributes:
        cmd: the argv lines of ``cmd`` (None for an empty file: init runs ``sh``).
        env: the lines of ``env`` (None for an empty file: init's own PATH only).
        notes: what was skipped (device nodes, sockets, entries outside ``rootfs/``).
    """

    cmd: tuple[bytes, ...] | None
    env: tuple[bytes, ...] | None
    notes: tuple[str, ...] = ()
    entries: int = 0
    compressed: bool = False


def ramdisk_layout(eif: EifImage) -> str:
    """``nitro-cli`` or ``nitro-emu``, from the application ramdisk's first bytes (E35 else)."""
    ramdisks = eif.ramdisks
    if len(ramdisks) < 2:
        raise EifFormatError(eif.path, "it has no application ramdisk (only the boot ramdisk)")
    head = eif.read_section(ramdisks[1], 0, min(512, ramdisks[1].size))
    if head[:6] in (NEWC_MAGIC, CRC_MAGIC) or head[:2] == b"\x1f\x8b":
        return LAYOUT_NITRO_CLI
    if len(head) == 512 and head[257:262] == b"ustar":
        return LAYOUT_NITRO_EMU
    raise EifFormatError(
        eif.path, f"the application ramdisk is neither a nitro-emu archive nor a nitro-cli cpio "
        f"(it starts with {head[:8]!r})",
    )


def _config_lines(data: bytes) -> tuple[bytes, ...] | None:
    """Lines as init.c's ``read_config`` reads them: getline, one trailing ``\\n`` dropped."""
    if not data:
        return None
    lines = data.split(b"\n")
    if data.endswith(b"\n"):
        lines.pop()
    return tuple(line.split(b"\0", 1)[0] for line in lines)  # C strings end at a NUL


def _split_name(reader: CpioReader, entry: CpioEntry) -> list[str]:
    """The entry's path components; refuses absolute names and ``..``."""
    name = entry.name
    if name.startswith("/"):
        raise UnsafeRamdiskError(reader.source, "an absolute path: it would land outside rootfs/", name)
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise UnsafeRamdiskError(reader.source, "a '..' component: it would land outside rootfs/", name)
    return parts


class _Body:
    """A file-like view of an entry's data for tarfile.addfile."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buffer = b""

    def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self._buffer) < size:
            chunk = next(self._chunks, b"")
            if not chunk:
                break
            self._buffer += chunk
        if size < 0:
            size = len(self._buffer)
        data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data


@dataclass
class _Converter:
    """cpio (``rootfs/``, ``cmd``, ``env``) to a tar of ``rootfs/``, checking as it goes."""

    reader: CpioReader
    archive: tarfile.TarFile
    notes: list[str] = field(default_factory=list)
    symlinks: set[str] = field(default_factory=set)
    written: set[str] = field(default_factory=set)
    links: dict[tuple[int, int, int], str] = field(default_factory=dict)  # inode -> path with data
    waiting: dict[tuple[int, int, int], list[CpioEntry]] = field(default_factory=dict)
    config: dict[str, bytes] = field(default_factory=dict)

    def run(self, last: dict[str, int]) -> None:
        for index, entry in enumerate(self.reader):
            parts = _split_name(self.reader, entry)
            if not parts:
                continue  # "." itself
            if parts[0] == ROOTFS:
                path = "/".join(parts[1:])
                if last.get(path, index) != index:  # a later entry of the same path replaces it
                    self._check_parents(entry, path)
                    if entry.kind == stat.S_IFLNK:
                        self.symlinks.add(path)  # was a symlink at this point of the stream
                    continue
                self._rootfs_entry(entry, path)
            elif len(parts) == 1 and parts[0] in ("cmd", "env"):
                if entry.kind != stat.S_IFREG:
                    raise NitroCliConfigError(self.reader.source, "must be a regular file", entry.name)
                self.config[parts[0]] = self.reader.read_all(MAX_CONFIG_BYTES)
            else:
                self.notes.append(f"{entry.name}: outside rootfs/, not visible to the enclave's program; skipped")
        for group in self.waiting.values():  # hard links whose data never came: empty files
            first, *rest = group
            self._regular(first, self._path(first), None)
            for entry in rest:
                self._hard_link(entry, self._path(entry), self._path(first))

    def _path(self, entry: CpioEntry) -> str:
        return "/".join(_split_name(self.reader, entry)[1:])

    def _check_parents(self, entry: CpioEntry, path: str) -> None:
        parts = path.split("/")
        for depth in range(1, len(parts)):
            prefix = "/".join(parts[:depth])
            if prefix in self.symlinks:
                raise UnsafeRamdiskError(
                    self.reader.source, f"it would be written through the symlink rootfs/{prefix}, "
                    "which may point outside rootfs/", entry.name,
                )

    def _info(self, entry: CpioEntry, path: str, kind: bytes) -> tarfile.TarInfo:
        info = tarfile.TarInfo(path)
        info.type = kind
        info.mode = entry.permissions
        info.uid, info.gid = entry.uid, entry.gid
        info.uname = info.gname = ""
        info.mtime = entry.mtime
        return info

    def _rootfs_entry(self, entry: CpioEntry, path: str) -> None:
        if not path:
            if entry.kind != stat.S_IFDIR:
                raise UnsafeRamdiskError(self.reader.source, "rootfs must be a directory", entry.name)
            return
        self._check_parents(entry, path)
        kind = entry.kind
        if kind == stat.S_IFDIR:
            self.archive.addfile(self._info(entry, path, tarfile.DIRTYPE))
        elif kind == stat.S_IFLNK:
            target = self.reader.read_all(_MAX_SYMLINK)
            info = self._info(entry, path, tarfile.SYMTYPE)
            info.linkname = target.decode("utf-8", "surrogateescape")
            self.archive.addfile(info)
            self.symlinks.add(path)
        elif kind == stat.S_IFREG:
            self._regular_or_link(entry, path)
        elif kind == stat.S_IFIFO:
            self.archive.addfile(self._info(entry, path, tarfile.FIFOTYPE))
        elif kind in (stat.S_IFCHR, stat.S_IFBLK, stat.S_IFSOCK):
            what = {stat.S_IFCHR: "character device", stat.S_IFBLK: "block device", stat.S_IFSOCK: "socket"}[kind]
            self.notes.append(f"{entry.name}: a {what}, skipped (the enclave container has the engine's /dev)")
            return
        else:
            raise CpioFormatError(self.reader.source, f"an unknown file type {kind:#o}", entry.name)
        self.written.add(path)

    def _regular_or_link(self, entry: CpioEntry, path: str) -> None:
        if entry.nlink < 2:
            self._regular(entry, path, self.reader.data())
            return
        key = (entry.devmajor, entry.devminor, entry.ino)
        holder = self.links.get(key)
        if holder is not None:
            if entry.size:
                raise CpioFormatError(self.reader.source, f"a second body for the hard-linked file rootfs/{holder}; "
                                      "nitro-emu cannot reproduce the kernel's overwrite", entry.name)
            self._hard_link(entry, path, holder)
        elif entry.size == 0:
            self.waiting.setdefault(key, []).append(entry)  # data comes with a later link (GNU cpio)
        else:
            self._regular(entry, path, self.reader.data())
            self.links[key] = path
            for earlier in self.waiting.pop(key, []):
                self._hard_link(earlier, self._path(earlier), path)

    def _regular(self, entry: CpioEntry, path: str, data: Iterator[bytes] | None) -> None:
        info = self._info(entry, path, tarfile.REGTYPE)
        info.size = entry.size if data is not None else 0
        self.archive.addfile(info, _Body(data) if data is not None else None)

    def _hard_link(self, entry: CpioEntry, path: str, target: str) -> None:
        info = self._info(entry, path, tarfile.LNKTYPE)
        info.linkname = target
        self.archive.addfile(info)


def _last_occurrences(chunks: Iterable[bytes], source: str, limits: CpioLimits | None) -> dict[str, int]:
    """The index of the last entry of every rootfs path (headers only; checks the whole archive).

    cpio may name a path twice (linuxkit adds ``rootfs/dev`` & co. after the image's own; the
    kernel then replaces or keeps the directory); a tar for ``docker import`` may not.
    """
    reader = CpioReader(chunks, source=source, limits=limits)
    last: dict[str, int] = {}
    for index, entry in enumerate(reader):
        parts = _split_name(reader, entry)
        if parts and parts[0] == ROOTFS:
            last["/".join(parts[1:])] = index
    return last


def convert_customer_ramdisk(
    chunks: Callable[[], Iterable[bytes]], out: IO[bytes], *, source: str, limits: CpioLimits | None = None
) -> NitroCliImage:
    """Write ``rootfs/`` of a nitro-cli customer ramdisk as a tar into ``out``; return cmd/env.

    ``chunks`` gives the ramdisk's bytes afresh on each call: a first pass reads the headers
    (which entry of a path named twice wins), the second converts. Of a path named twice
    the last entry is kept, as the kernel's initramfs unpacker replaces the earlier one.

    Raises:
        CpioFormatError: malformed, truncated, over the limits, or a checksum mismatch.
        UnsafeRamdiskError: an entry escaping ``rootfs/`` or written through a symlink.
        NitroCliConfigError: ``cmd`` or ``env`` missing or not regular files.
    """
    last = _last_occurrences(chunks(), source, limits)
    reader = CpioReader(chunks(), source=source, limits=limits)
    with tarfile.TarFile(fileobj=out, mode="w", format=tarfile.PAX_FORMAT,
                         copybufsize=_COPY) as archive:
        converter = _Converter(reader, archive)
        converter.run(last)
    for name in ("cmd", "env"):
        if name not in converter.config:
            raise NitroCliConfigError(
                source, f"the customer ramdisk has no {name!r} file (nitro-cli writes 'cmd' and 'env' "
                "next to rootfs/; the SDK's init cannot start without them)",
            )
    return NitroCliImage(
        cmd=_config_lines(converter.config["cmd"]),
        env=_config_lines(converter.config["env"]),
        notes=tuple(converter.notes),
        entries=reader.entries,
        compressed=reader.compressed,
    )


def init_arguments(image: NitroCliImage) -> list[str]:
    """nitro-emu init's argv after its path: ``ENV_COUNT|- hex... CMD_COUNT|- hex...``."""
    args: list[str] = []
    for lines in (image.env, image.cmd):
        if lines is None:
            args.append("-")
        else:
            args.append(str(len(lines)))
            args.extend(line.hex() or "=" for line in lines)  # "=": an empty line
    return args


def _ramdisk_chunks(eif: EifImage) -> Iterator[bytes]:
    # The hypervisor concatenates ramdisks 1..n into the initramfs after the bootstrap one.
    for section in eif.ramdisks[1:]:
        yield from eif.iter_section(section, 0)


def load_nitro_cli_image(
    docker_client: docker.DockerClient,
    eif: EifImage,
    tag: str,
    labels: dict[str, str],
    *,
    limits: CpioLimits | None = None,
    error: Callable[[str], NitroCliError],
) -> NitroCliImage:
    """Import the customer ramdisk of ``eif`` as the image ``tag`` (see the module doc).

    Args:
        labels: put on the image (PCR0, purpose), with the layout label added.
        error: makes the engine-failure error (E36) from a message.
    """
    with tempfile.TemporaryFile(prefix="nitro-emu-rootfs-") as spool:
        image = convert_customer_ramdisk(
            lambda: _ramdisk_chunks(eif), spool, source=f"{eif.path}: application ramdisk", limits=limits,
        )
        for note in image.notes:
            logger.warning("%s: %s", eif.path, note)
        entrypoint = [ENCLAVE_INIT, *init_arguments(image)]
        try:
            # `docker load` of the tar as an image's only layer: several times faster than
            # `docker import` of it (bench/runtime.py, nitro-cli layout)
            load_layer_image(
                docker_client, spool, tag, entrypoint=entrypoint,
                labels={**labels, LABEL_LAYOUT: LAYOUT_NITRO_CLI},
                created_by="nitro-emu: the customer ramdisk of a nitro-cli EIF",
            )
            docker_client.images.get(tag)
        except (docker.errors.DockerException, requests.exceptions.RequestException) as failure:
            raise error(
                f"importing the nitro-cli EIF's root filesystem as {tag} failed ({failure}); "
                "check that the Docker engine is running and has disk space"
            ) from failure
    return image
