"""Run what nitro-cli built: its customer ramdisk as a Docker image (issue 12).

A nitro-cli EIF's application ramdisk (nitro-facts §3.6) is a newc cpio (gzip'd before
nitro-cli 1.2.1) holding ``rootfs/`` (the Docker image's filesystem), ``cmd`` (one argv
element per line) and ``env`` (``KEY=VALUE`` lines). The layout is told from the ramdisk's own
first bytes (:func:`ramdisk_layout`), never from metadata.

:func:`load_nitro_cli_image` turns ``rootfs/`` into the one layer of a ``docker load``
archive (``emulator.engine.image_load``), tagged by PCR0 like every enclave image. It reads
the cpio's headers once (``emulator.eif.cpio_index``: the data are skipped, in place in the
EIF when the ramdisk is one uncompressed section, else in an anonymous spool file, so
nothing is ever written to the host's filesystem tree and nothing is left behind), and
checks everything before the engine sees a byte: names escaping ``rootfs/`` (``..``,
absolute), entries written through a symlink, hard links outside ``rootfs/``, truncation,
checksums, and :class:`~emulator.eif.cpio.CpioLimits`. Each is an ``[ E35 ]`` naming the
entry. Then the tar is streamed to the engine as it is written: headers packed by
``emulator.engine.tar_stream``, file data copied in large blocks from the ramdisk. Device
nodes and sockets are skipped (the engine gives the enclave its own ``/dev``) and reported
as notes; hard links, symlinks, modes, owners and mtimes are kept.

The image's entrypoint is nitro-emu's init (``emulator/enclave/nitro_cli_init.c``), given
``cmd`` and ``env`` byte for byte (hex) so that it can do what the SDK bootstrap's ``init``
does: ``chdir /``, the environment exactly ``env``, ``execvpe`` with init's PATH.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import stat
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO

import docker
import docker.errors
import requests.exceptions

from emulator.eif.cpio import CRC_MAGIC, NEWC_MAGIC, CpioEntry, CpioFormatError, CpioLimits, inflate, is_gzip
from emulator.eif.cpio_index import CpioIndex, FileRange
from emulator.eif.file import EifImage
from emulator.eif.format import EifFormatError
from emulator.engine.image_load import load_layer_image
from emulator.engine.tar_stream import DIRTYPE, FIFOTYPE, LNKTYPE, REGTYPE, SYMTYPE, TarMember, archive_size, \
    member_header, tar_chunks
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


def _split_name(source: str, entry: CpioEntry) -> list[str]:
    """The entry's path components; refuses absolute names and ``..``."""
    name = entry.name
    if name.startswith("/"):
        raise UnsafeRamdiskError(source, "an absolute path: it would land outside rootfs/", name)
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise UnsafeRamdiskError(source, "a '..' component: it would land outside rootfs/", name)
    return parts


_SKIPPED = {stat.S_IFCHR: "character device", stat.S_IFBLK: "block device", stat.S_IFSOCK: "socket"}


@dataclass
class _Planner:
    """cpio (``rootfs/``, ``cmd``, ``env``) to the members of a tar of ``rootfs/``, checked.

    :meth:`scan` reads the headers once, in archive order, and makes every check that
    depends on that order (names, writes through a symlink, ``cmd``/``env``); :meth:`plan`
    then turns the last entry of each path into tar members (data as offsets, not bytes).
    """

    index: CpioIndex
    notes: list[tuple[int, str]] = field(default_factory=list)
    symlinks: set[str] = field(default_factory=set)
    rootfs: list[tuple[int, CpioEntry, str]] = field(default_factory=list)
    last: dict[str, int] = field(default_factory=dict)
    config: dict[str, bytes] = field(default_factory=dict)
    members: list[TarMember] = field(default_factory=list)
    links: dict[tuple[int, int, int], str] = field(default_factory=dict)  # inode -> path with data
    waiting: dict[tuple[int, int, int], list[tuple[CpioEntry, str]]] = field(default_factory=dict)

    def scan(self) -> None:
        source = self.index.source
        for position, entry in enumerate(self.index):
            parts = _split_name(source, entry)
            if not parts:
                continue  # "." itself
            if parts[0] == ROOTFS:
                path = "/".join(parts[1:])
                self._check_parents(entry, path)
                if entry.kind == stat.S_IFLNK:
                    self.symlinks.add(path)  # a symlink from this point of the stream on
                self.rootfs.append((position, entry, path))
                self.last[path] = position  # a later entry of the same path replaces it
            elif len(parts) == 1 and parts[0] in ("cmd", "env"):
                if entry.kind != stat.S_IFREG:
                    raise NitroCliConfigError(source, "must be a regular file", entry.name)
                self.config[parts[0]] = self.index.read(entry, MAX_CONFIG_BYTES)
            else:
                self.notes.append((position, f"{entry.name}: outside rootfs/, not visible to the enclave's "
                                   "program; skipped"))

    def plan(self) -> None:
        for position, entry, path in self.rootfs:
            if self.last[path] == position:
                self._rootfs_entry(position, entry, path)
        for group in self.waiting.values():  # hard links whose data never came: empty files
            (first, first_path), *rest = group
            self._regular(first, first_path, with_data=False)
            for entry, path in rest:
                self._hard_link(entry, path, first_path)

    def _check_parents(self, entry: CpioEntry, path: str) -> None:
        symlinks = self.symlinks
        slash = path.find("/")
        while slash != -1:  # each proper prefix a/, a/b/, ... (the path's parts are normal)
            if path[:slash] in symlinks:
                raise UnsafeRamdiskError(
                    self.index.source, f"it would be written through the symlink rootfs/{path[:slash]}, "
                    "which may point outside rootfs/", entry.name,
                )
            slash = path.find("/", slash + 1)

    def _add(self, entry: CpioEntry, path: str, kind: bytes, *, size: int = 0, link: bytes = b"") -> None:
        header = member_header(path.encode("utf-8", "surrogateescape"), kind, mode=entry.mode, uid=entry.uid,
                               gid=entry.gid, mtime=entry.mtime, size=size, link=link)
        self.members.append(TarMember(header, entry.data_offset, size))

    def _rootfs_entry(self, position: int, entry: CpioEntry, path: str) -> None:
        kind = entry.kind
        if not path:
            if kind != stat.S_IFDIR:
                raise UnsafeRamdiskError(self.index.source, "rootfs must be a directory", entry.name)
        elif kind == stat.S_IFDIR:
            self._add(entry, path, DIRTYPE)
        elif kind == stat.S_IFLNK:
            self._add(entry, path, SYMTYPE, link=self.index.read(entry, _MAX_SYMLINK))
        elif kind == stat.S_IFREG:
            self._regular_or_link(entry, path)
        elif kind == stat.S_IFIFO:
            self._add(entry, path, FIFOTYPE)
        elif kind in _SKIPPED:
            self.notes.append((position, f"{entry.name}: a {_SKIPPED[kind]}, skipped (the enclave container "
                               "has the engine's /dev)"))
        else:
            raise CpioFormatError(self.index.source, f"an unknown file type {kind:#o}", entry.name)

    def _regular_or_link(self, entry: CpioEntry, path: str) -> None:
        if entry.nlink < 2:
            self._regular(entry, path)
            return
        key = (entry.devmajor, entry.devminor, entry.ino)
        holder = self.links.get(key)
        if holder is not None:
            if entry.size:
                raise CpioFormatError(self.index.source, f"a second body for the hard-linked file rootfs/{holder}; "
                                      "nitro-emu cannot reproduce the kernel's overwrite", entry.name)
            self._hard_link(entry, path, holder)
        elif entry.size == 0:
            self.waiting.setdefault(key, []).append((entry, path))  # data comes with a later link (GNU cpio)
        else:
            self._regular(entry, path)
            self.links[key] = path
            for earlier, earlier_path in self.waiting.pop(key, []):
                self._hard_link(earlier, earlier_path, path)

    def _regular(self, entry: CpioEntry, path: str, *, with_data: bool = True) -> None:
        self._add(entry, path, REGTYPE, size=entry.size if with_data else 0)

    def _hard_link(self, entry: CpioEntry, path: str, target: str) -> None:
        self._add(entry, path, LNKTYPE, link=target.encode("utf-8", "surrogateescape"))


@dataclass(frozen=True)
class RootfsTar:
    """``rootfs/`` of a customer ramdisk as tar members whose data are ranges of the ramdisk.

    Attributes:
        members: in archive order (:func:`emulator.engine.tar_stream.tar_chunks` writes them).
        size: the tar's length in bytes.
        image: ``cmd``, ``env`` and the notes.
    """

    members: tuple[TarMember, ...]
    size: int
    image: NitroCliImage


def plan_customer_ramdisk(index: CpioIndex) -> RootfsTar:
    """Check the whole customer ramdisk in ``index`` and plan its ``rootfs/`` as a tar.

    Of a path named twice the last entry is kept, as the kernel's initramfs unpacker replaces
    the earlier one (linuxkit adds ``rootfs/dev`` & co. after the image's own); a tar for the
    engine may not name a path twice.

    Raises:
        CpioFormatError: malformed, truncated, over the limits, or a checksum mismatch.
        UnsafeRamdiskError: an entry escaping ``rootfs/`` or written through a symlink.
        NitroCliConfigError: ``cmd`` or ``env`` missing or not regular files.
    """
    planner = _Planner(index)
    planner.scan()
    for name in ("cmd", "env"):
        if name not in planner.config:
            raise NitroCliConfigError(
                index.source, f"the customer ramdisk has no {name!r} file (nitro-cli writes 'cmd' and 'env' "
                "next to rootfs/; the SDK's init cannot start without them)",
            )
    planner.plan()
    image = NitroCliImage(
        cmd=_config_lines(planner.config["cmd"]),
        env=_config_lines(planner.config["env"]),
        notes=tuple(note for _, note in sorted(planner.notes, key=lambda note: note[0])),
        entries=index.entries,
    )
    return RootfsTar(tuple(planner.members), archive_size(planner.members), image)


def convert_customer_ramdisk(
    chunks: Callable[[], Iterable[bytes]], out: IO[bytes], *, source: str, limits: CpioLimits | None = None
) -> NitroCliImage:
    """Write ``rootfs/`` of the nitro-cli customer ramdisk in ``chunks()`` as a tar into ``out``.

    The ramdisk is spooled (inflated if gzip'd) into an anonymous temporary file first; see
    :func:`plan_customer_ramdisk` for what is checked and raised.
    """
    with tempfile.TemporaryFile(prefix="nitro-emu-rootfs-") as spool:
        compressed = inflate(chunks(), spool, source=source, limits=limits)
        spool.flush()
        ramdisk = FileRange(spool.fileno(), 0, spool.tell())
        planned = plan_customer_ramdisk(CpioIndex(ramdisk, name=source, limits=limits))
        for chunk in tar_chunks(planned.members, ramdisk.pread):
            out.write(chunk)
    return dataclasses.replace(planned.image, compressed=compressed)


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


@contextlib.contextmanager
def _customer_ramdisk(eif: EifImage, source: str, limits: CpioLimits | None) -> Iterator[tuple[FileRange, bool]]:
    """The customer ramdisk as a file range, and whether it was gzip'd.

    One uncompressed section (what nitro-cli writes since 1.2.1) is read in place in the EIF;
    otherwise the sections are inflated and joined into an anonymous spool file first.
    """
    sections = eif.ramdisks[1:]
    with eif.open() as stream:
        head = os.pread(stream.fileno(), 6, sections[0].data_offset) if sections[0].size >= 6 else b""
        if len(sections) == 1 and not is_gzip(head, source):
            yield FileRange(stream.fileno(), sections[0].data_offset, sections[0].size), False
            return
    with tempfile.TemporaryFile(prefix="nitro-emu-rootfs-") as spool:
        compressed = inflate(_ramdisk_chunks(eif), spool, source=source, limits=limits)
        spool.flush()
        yield FileRange(spool.fileno(), 0, spool.tell()), compressed


def load_nitro_cli_image(
    docker_client: docker.DockerClient,
    eif: EifImage,
    tag: str,
    labels: dict[str, str],
    *,
    limits: CpioLimits | None = None,
    error: Callable[[str], NitroCliError],
) -> NitroCliImage:
    """Load the customer ramdisk of ``eif`` as the image ``tag`` (see the module doc).

    The whole ramdisk is checked (:func:`plan_customer_ramdisk`, headers only) before the
    engine is sent a byte; the tar is then streamed to it while it is written.

    Args:
        labels: put on the image (PCR0, purpose), with the layout label added.
        error: makes the engine-failure error (E36) from a message.
    """
    source = f"{eif.path}: application ramdisk"
    with _customer_ramdisk(eif, source, limits) as (ramdisk, compressed):
        planned = plan_customer_ramdisk(CpioIndex(ramdisk, name=source, limits=limits))
        image = dataclasses.replace(planned.image, compressed=compressed)
        for note in image.notes:
            logger.warning("%s: %s", eif.path, note)
        entrypoint = [ENCLAVE_INIT, *init_arguments(image)]
        try:
            # `docker load` of the tar as an image's only layer: several times faster than
            # `docker import` of it (bench/runtime.py, nitro-cli layout)
            load_layer_image(
                docker_client, tar_chunks(planned.members, ramdisk.pread), planned.size, tag,
                entrypoint=entrypoint, working_dir="/", labels={**labels, LABEL_LAYOUT: LAYOUT_NITRO_CLI},
                created_by="nitro-emu: the customer ramdisk of a nitro-cli EIF",
            )
            docker_client.images.get(tag)
        except (docker.errors.DockerException, requests.exceptions.RequestException, OSError) as failure:
            raise error(
                f"loading the nitro-cli EIF's root filesystem as {tag} failed ({failure}); "
                "check that the Docker engine is running and has disk space"
            ) from failure
    return image
