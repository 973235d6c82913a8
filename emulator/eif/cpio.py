"""newc cpio archives, the format of a nitro-cli EIF's ramdisks (nitro-facts §3.6).

The layout (the kernel's ``Documentation/driver-api/early-userspace/buffer-format.rst``):
each entry is a 110-byte ASCII header (magic ``070701``, or ``070702`` with a checksum, then
13 fields of 8 hex digits: ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor,
rdevmajor, rdevminor, namesize, check), the NUL-terminated name padded to 4 bytes, the data
padded to 4 bytes. ``TRAILER!!!`` ends an archive; NUL padding and further archives may follow,
and the whole may be gzip'd (linuxkit wrote gzip'd initrds before nitro-cli 1.2.1).

:class:`CpioReader` streams entries from chunks of bytes (a ramdisk section, never held in
memory) and enforces :class:`CpioLimits`, so a truncated, malformed or bomb-sized archive is
an :class:`CpioFormatError` (nitro-cli's E35) naming the entry, found before anything is
unpacked. :class:`CpioWriter` writes the same format (test fixtures, and the layout nitro-cli
writes).
"""

from __future__ import annotations

import stat
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import IO, BinaryIO

from emulator.eif.format import EifFormatError

NEWC_MAGIC = b"070701"
CRC_MAGIC = b"070702"
TRAILER = "TRAILER!!!"
HEADER_SIZE = 110
#: linuxkit numbers the inodes it writes from 721 (nitro-facts §3.6).
FIRST_INODE = 721
_GZIP_MAGIC = b"\x1f\x8b"
#: Compressions the kernel also unpacks; nitro-cli never used them, so we say so clearly.
_OTHER_COMPRESSIONS = {b"\xfd7zXZ": "xz", b"\x28\xb5\x2f\xfd": "zstd", b"\x04\x22\x4d\x18": "lz4",
                       b"BZh": "bzip2", b"\x5d\x00\x00": "lzma", b"\x89LZO": "lzo"}
_READ_SIZE = 1 << 20


@dataclass(frozen=True)
class CpioLimits:
    """What an archive may hold before it is refused as a bomb.

    Attributes:
        max_bytes: the sum of all entries' data (decompressed), default 16 GiB.
        max_entries: the number of entries, default 2,000,000.
        max_name: the longest name in bytes (Linux's PATH_MAX, 4096).
    """

    max_bytes: int = 16 << 30
    max_entries: int = 2_000_000
    max_name: int = 4096


class CpioFormatError(EifFormatError):
    """A ramdisk is not a well-formed or acceptable cpio archive (E35), naming the entry.

    Attributes:
        source: what was read (``app.eif: ramdisk 1``).
        entry: the entry's name, or None when the problem is not one entry's.
    """

    def __init__(self, source: str, problem: str, entry: str | None = None) -> None:
        where = f"entry {entry!r}: " if entry is not None else ""
        super().__init__(source, f"{where}{problem}")
        self.source = source
        self.entry = entry


@dataclass(frozen=True)
class CpioEntry:
    """One archive member's header (its data is read with :meth:`CpioReader.data`)."""

    name: str
    ino: int
    mode: int
    uid: int
    gid: int
    nlink: int
    mtime: int
    size: int
    devmajor: int = 0
    devminor: int = 0
    rdevmajor: int = 0
    rdevminor: int = 0
    check: int = 0
    #: where the data start in the archive (:class:`~emulator.eif.cpio_index.CpioIndex`), else -1
    data_offset: int = -1

    @property
    def kind(self) -> int:
        """``stat.S_IFMT`` of the mode: S_IFREG, S_IFDIR, S_IFLNK, S_IFCHR..."""
        return stat.S_IFMT(self.mode)

    @property
    def permissions(self) -> int:
        return stat.S_IMODE(self.mode)


class _Source:
    """Bytes from chunks, gunzipped when the stream is gzip (several members allowed)."""

    def __init__(self, chunks: Iterable[bytes], source: str, limits: CpioLimits) -> None:
        self._chunks = iter(chunks)
        self._buffer = bytearray()
        self._source = source
        self._limit = limits.max_bytes + limits.max_entries * (HEADER_SIZE + limits.max_name + 8)
        self._produced = 0
        self._raw_done = False
        self._gzip: zlib._Decompress | None = None
        self._started = False
        self._pending = b""
        self.compressed = False

    def _raw(self) -> bytes:
        if self._raw_done:
            return b""
        for chunk in self._chunks:
            if chunk:
                return bytes(chunk)
        self._raw_done = True
        return b""

    def _fill(self, want: int) -> None:
        while len(self._buffer) < want:
            if not self._started:
                self._start()
            if self._gzip is None:
                raw = self._raw()
                if not raw:
                    return
                self._buffer += raw
                continue
            data = self._inflate()
            if data is None:
                return
            self._buffer += data

    def _start(self) -> None:
        self._started = True
        head = self._raw()
        while 0 < len(head) < 6:
            more = self._raw()
            if not more:
                break
            head += more
        if is_gzip(head, self._source):
            self.compressed = True
            self._gzip = zlib.decompressobj(wbits=31)
            self._pending = head
        else:
            self._buffer += head

    def _inflate(self) -> bytes | None:
        assert self._gzip is not None
        while True:
            if self._gzip.eof:  # a member ended: only NULs or another gzip member may follow
                rest = (self._gzip.unused_data + self._pending).lstrip(b"\0")
                while len(rest) < 2:
                    raw = self._raw()
                    if not raw:
                        if rest:
                            break
                        return None
                    rest = (rest + raw).lstrip(b"\0")
                if not rest.startswith(_GZIP_MAGIC):
                    raise CpioFormatError(self._source, "bytes that are not gzip follow the gzip stream")
                self._gzip, self._pending = zlib.decompressobj(wbits=31), rest
            data = self._pending or self._raw()
            self._pending = b""
            if not data:
                raise CpioFormatError(self._source, "the gzip stream is truncated")
            try:
                out = self._gzip.decompress(data, _READ_SIZE)
            except zlib.error as error:
                raise CpioFormatError(self._source, f"the gzip stream is corrupt ({error})") from error
            self._pending = self._gzip.unconsumed_tail
            self._produced += len(out)
            if self._produced > self._limit:
                raise CpioFormatError(self._source, f"it inflates past {self._limit} bytes (a bomb?)")
            if out:
                return out

    def read(self, size: int) -> bytes:
        """Up to ``size`` bytes (fewer only at the end)."""
        self._fill(size)
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    def skip_zeros(self) -> bool:
        """Skip NUL padding; True if more data follows."""
        while True:
            self._fill(1)
            if not self._buffer:
                return False
            stripped = self._buffer.lstrip(b"\0")
            if stripped:
                self._buffer = bytearray(stripped)
                return True
            self._buffer.clear()


def is_gzip(head: bytes, source: str) -> bool:
    """Whether an archive starting with ``head`` (6 bytes or more) is gzip'd.

    Raises:
        CpioFormatError: it is compressed some other way the kernel knows (xz, zstd...).
    """
    for magic, name in _OTHER_COMPRESSIONS.items():
        if head.startswith(magic):
            raise CpioFormatError(source, f"the ramdisk is {name}-compressed; nitro-emu reads "
                                  "uncompressed or gzip'd cpio (what nitro-cli writes)")
    return head.startswith(_GZIP_MAGIC)


def inflate(chunks: Iterable[bytes], out: BinaryIO, *, source: str, limits: CpioLimits | None = None) -> bool:
    """Write the archive in ``chunks`` into ``out``, gunzipped if it is gzip; True if it was.

    The inflated size is bounded as :class:`CpioReader` bounds it (a gzip bomb is an E35).
    """
    stream = _Source(chunks, source, limits or CpioLimits())
    while data := stream.read(_READ_SIZE):
        out.write(data)
    return stream.compressed


def _pad(length: int) -> int:
    return -length % 4


class CpioReader:
    """Stream the entries of newc archives (one or several, concatenated).

    ::

        reader = CpioReader(chunks, source="app.eif: ramdisk 1")
        for entry in reader:
            body = b"".join(reader.data())   # optional; skipped when not read

    Raises :class:`CpioFormatError` for a bad magic, a truncated entry, a name without its
    NUL, a ``070702`` checksum mismatch, or past :class:`CpioLimits`.
    """

    def __init__(self, chunks: Iterable[bytes], *, source: str, limits: CpioLimits | None = None) -> None:
        self.source = source
        self.limits = limits or CpioLimits()
        self._stream = _Source(chunks, source, self.limits)
        self._current: CpioEntry | None = None
        self._left = 0
        self._sum = 0
        self._data_read = False
        self.total_bytes = 0
        self.entries = 0

    @property
    def compressed(self) -> bool:
        """Whether the archive was gzip'd."""
        return self._stream.compressed

    def _exact(self, size: int, what: str, entry: str | None) -> bytes:
        data = self._stream.read(size)
        if len(data) != size:
            raise CpioFormatError(self.source, f"the archive is truncated ({what}: {len(data)} of {size} bytes)", entry)
        return data

    def _header(self, after: str | None) -> CpioEntry:
        raw = self._exact(HEADER_SIZE, "header", after and f"after {after}")
        magic = raw[:6]
        if magic not in (NEWC_MAGIC, CRC_MAGIC):
            where = f"after entry {after!r}" if after else "at its start"
            raise CpioFormatError(self.source, f"no newc cpio header {where} (magic {magic!r})")
        try:
            fields = [int(raw[6 + 8 * i : 14 + 8 * i], 16) for i in range(13)]
        except ValueError:
            raise CpioFormatError(self.source, f"a header with non-hex fields {raw[6:]!r}",
                                  after and f"after {after}") from None
        ino, mode, uid, gid, nlink, mtime, size, dmaj, dmin, rmaj, rmin, namesize, check = fields
        if not 1 <= namesize <= self.limits.max_name + 1:
            raise CpioFormatError(self.source, f"a name of {namesize} bytes (limit {self.limits.max_name})",
                                  after and f"after {after}")
        name_bytes = self._exact(namesize + _pad(HEADER_SIZE + namesize), "name", after and f"after {after}")
        if name_bytes[namesize - 1] != 0 or 0 in name_bytes[: namesize - 1]:
            raise CpioFormatError(self.source, "a name that is not NUL-terminated", name_bytes[:namesize].decode(
                "utf-8", "backslashreplace"))
        name = name_bytes[: namesize - 1].decode("utf-8", "surrogateescape")
        return CpioEntry(name, ino, mode, uid, gid, nlink, mtime, size, dmaj, dmin, rmaj, rmin,
                         check if magic == CRC_MAGIC else -1)

    def __iter__(self) -> Iterator[CpioEntry]:
        last: str | None = None
        while True:
            entry = self._header(last)
            if entry.name == TRAILER:
                self._exact(entry.size + _pad(entry.size), "trailer", TRAILER)
                if not self._stream.skip_zeros():
                    return
                last = TRAILER
                continue
            self.entries += 1
            if self.entries > self.limits.max_entries:
                raise CpioFormatError(self.source, f"more than {self.limits.max_entries} entries "
                                      "(the limit; a bomb?)", entry.name)
            self.total_bytes += entry.size
            if self.total_bytes > self.limits.max_bytes:
                raise CpioFormatError(self.source, f"the archive's data passes {self.limits.max_bytes} bytes "
                                      f"(the limit; a bomb?) with this entry of {entry.size} bytes", entry.name)
            self._current, self._left, self._sum, self._data_read = entry, entry.size, 0, False
            yield entry
            self._data_read = False
            for _ in self.data():  # whatever the caller left unread, then the checksum
                pass
            if entry.check >= 0 and self._sum != entry.check:
                raise CpioFormatError(self.source, f"its checksum is {entry.check:#010x} but its data sums to "
                                      f"{self._sum:#010x} (CRC mismatch)", entry.name)
            self._exact(_pad(entry.size), "padding", entry.name)
            last = entry.name

    def data(self) -> Iterator[bytes]:
        """The current entry's data, in chunks (its ``070702`` checksum is checked before the next entry)."""
        entry = self._current
        if entry is None or self._data_read:
            return
        self._data_read = True
        while self._left:
            chunk = self._exact(min(self._left, _READ_SIZE), f"data, {entry.size - self._left} of {entry.size} "
                                "bytes read", entry.name)
            self._left -= len(chunk)
            if entry.check >= 0:
                self._sum = (self._sum + sum(chunk)) & 0xFFFFFFFF
            yield chunk

    def read_all(self, cap: int) -> bytes:
        """The current entry's whole data, which must not exceed ``cap`` bytes."""
        entry = self._current
        if entry is not None and entry.size > cap:
            raise CpioFormatError(self.source, f"{entry.size} bytes, more than the {cap} allowed", entry.name)
        return b"".join(self.data())


class CpioWriter:
    """Write a newc archive into ``out``, the way linuxkit does (inodes from 721).

    ::

        with open("ramdisk.cpio", "wb") as out:
            writer = CpioWriter(out)
            writer.add("rootfs", 0o040755)
            writer.add("cmd", 0o100644, b"/bin/app\\n")
            writer.finish()            # TRAILER!!!, padded to 512

    Args:
        crc: write ``070702`` headers with checksums instead of ``070701``.
        gocpio: write the header fields exactly as linuxkit's vendored
            ``github.com/surma/gocpio`` ``Writer.WriteHeader`` does: lower-case hex and the
            device field fixed at 3:1 (otherwise upper-case hex and device 0:0).
    """

    def __init__(self, out: BinaryIO, *, crc: bool = False, gocpio: bool = False) -> None:
        self._out = out
        self._crc = crc
        self._hex = b"%08x" if gocpio else b"%08X"
        self._device = (3, 1) if gocpio else (0, 0)
        self._next_ino = FIRST_INODE
        self.written = 0

    def _write(self, data: bytes) -> None:
        self._out.write(data)
        self.written += len(data)

    def add(self, name: str, mode: int, data: bytes = b"", *, uid: int = 0, gid: int = 0, mtime: int = 0,
            nlink: int | None = None, ino: int | None = None, rdev: tuple[int, int] = (0, 0),
            check: int | None = None, size: int | None = None) -> int:
        """Append an entry; returns its inode. ``size``/``check`` override the true ones (tests)."""
        if ino is None:
            ino, self._next_ino = self._next_ino, self._next_ino + 1
        if nlink is None:
            nlink = 2 if stat.S_ISDIR(mode) else 1
        encoded = name.encode("utf-8", "surrogateescape") + b"\0"
        checksum = (sum(data) & 0xFFFFFFFF) if check is None else check
        fields = (ino, mode, uid, gid, nlink, mtime, len(data) if size is None else size, *self._device,
                  rdev[0], rdev[1], len(encoded), checksum if self._crc else 0)
        header = (CRC_MAGIC if self._crc else NEWC_MAGIC) + b"".join(self._hex % value for value in fields)
        self._write(header + encoded + b"\0" * _pad(HEADER_SIZE + len(encoded)))
        self._write(data + b"\0" * _pad(len(data)))
        return ino

    def add_stream(self, name: str, mode: int, source: IO[bytes], size: int, *, uid: int = 0, gid: int = 0,
                   mtime: int = 0) -> int:
        """Append a regular file of ``size`` bytes read from ``source`` in blocks (no checksum)."""
        ino = self.add(name, mode, uid=uid, gid=gid, mtime=mtime, size=size, check=0)
        remaining = size
        while remaining:
            block = source.read(min(_READ_SIZE, remaining))
            if not block:
                raise OSError(f"{name}: the source ended {remaining} bytes early")
            self._write(block)
            remaining -= len(block)
        self._write(b"\0" * _pad(size))
        return ino

    def finish(self, *, block: int = 512, trailer_ino: int | None = 0) -> None:
        """Write ``TRAILER!!!`` and pad the archive to a multiple of ``block``.

        ``trailer_ino=None`` numbers the trailer like any entry (gocpio does).
        """
        self.add(TRAILER, 0, ino=trailer_ino, nlink=1)
        self._write(b"\0" * (-self.written % block))
