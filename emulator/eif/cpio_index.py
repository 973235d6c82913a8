"""The entries of newc cpio archives in a file, read by header: data are skipped, not read.

:class:`~emulator.eif.cpio.CpioReader` streams an archive from chunks, so every byte of
every file passes through Python. A nitro-cli EIF's customer ramdisk is uncompressed (since
nitro-cli 1.2.1) and sits in one EIF section, so the entries can be found by reading only
the headers (110 bytes and a name each) and seeking over the data: :class:`CpioIndex`
gives each entry with the offset of its data (``CpioEntry.data_offset``), which a caller
then copies in large blocks straight from the file (``emulator.engine.tar_stream``).

The checks are :class:`~emulator.eif.cpio.CpioReader`'s, with the same messages, all made
during the scan (before a caller writes anything): magic, hex fields, names and their NUL,
truncation of a header, name, data or padding, :class:`~emulator.eif.cpio.CpioLimits`, and a
``070702`` entry's checksum (its data are read for that; nitro-cli never writes ``070702``).
A gzip'd or multi-section ramdisk is first inflated into an anonymous spool file
(:func:`~emulator.eif.cpio.inflate`, bomb-bounded) and indexed there.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator

from emulator.eif.cpio import CRC_MAGIC, HEADER_SIZE, NEWC_MAGIC, TRAILER, CpioEntry, CpioFormatError, CpioLimits

#: Bytes read at once around headers; most files of a root filesystem are smaller.
_WINDOW = 256 << 10
_SUM_BLOCK = 1 << 20
_FIELDS = struct.Struct(">13I")


class FileRange:
    """``size`` bytes of an open file from offset ``base``: an EIF section, or a spool.

    Reads with ``os.pread`` (no shared file position), so several readers can use one fd.
    """

    def __init__(self, fd: int, base: int, size: int) -> None:
        self.fd, self.base, self.size = fd, base, size

    def pread(self, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes at ``offset`` (fewer only at the end of the range)."""
        size = max(0, min(size, self.size - offset))
        data = os.pread(self.fd, size, self.base + offset)
        while len(data) < size:  # a regular file reads short only at its end
            more = os.pread(self.fd, size - len(data), self.base + offset + len(data))
            if not more:
                break
            data += more
        return data


def _pad(length: int) -> int:
    return -length % 4


class CpioIndex:
    """Iterate the entries of the newc archives (one or several, concatenated) in ``source``.

    ::

        index = CpioIndex(FileRange(fd, section.data_offset, section.size), source="app.eif: ramdisk 1")
        for entry in index:
            target = index.read(entry, 4096)   # small data (symlink targets, cmd/env)

    Raises :class:`~emulator.eif.cpio.CpioFormatError` as the streaming reader does.
    """

    def __init__(self, source: FileRange, *, name: str, limits: CpioLimits | None = None) -> None:
        self.range = source
        self.source = name
        self.limits = limits or CpioLimits()
        self.total_bytes = 0
        self.entries = 0
        self._window = b""
        self._start = 0

    def _get(self, offset: int, size: int) -> bytes:
        """``size`` bytes at ``offset`` (fewer at the end), from the window when it holds them."""
        relative = offset - self._start
        if relative >= 0 and relative + size <= len(self._window):
            return self._window[relative : relative + size]
        self._window = self.range.pread(offset, max(size, _WINDOW))
        self._start = offset
        return self._window[:size]

    def _exact(self, offset: int, size: int, what: str, entry: str | None) -> bytes:
        data = self._get(offset, size)
        if len(data) != size:
            raise CpioFormatError(self.source, f"the archive is truncated ({what}: {len(data)} of {size} bytes)", entry)
        return data

    def _truncated(self, offset: int, size: int, what: str, entry: str) -> None:
        available = max(0, min(size, self.range.size - offset))
        if available != size:
            raise CpioFormatError(self.source, f"the archive is truncated ({what}: {available} of {size} bytes)", entry)

    def _header(self, offset: int, after: str | None) -> tuple[CpioEntry, int]:
        """The entry at ``offset`` and where its data start."""
        where = after and f"after {after}"
        raw = self._exact(offset, HEADER_SIZE, "header", where)
        magic = raw[:6]
        if magic not in (NEWC_MAGIC, CRC_MAGIC):
            place = f"after entry {after!r}" if after else "at its start"
            raise CpioFormatError(self.source, f"no newc cpio header {place} (magic {magic!r})")
        try:
            fields = _FIELDS.unpack(bytes.fromhex(raw[6:].decode("ascii")))
        except (ValueError, struct.error):  # bytes.fromhex's and a short result's
            raise CpioFormatError(self.source, f"a header with non-hex fields {raw[6:]!r}", where) from None
        ino, mode, uid, gid, nlink, mtime, size, dmaj, dmin, rmaj, rmin, namesize, check = fields
        if not 1 <= namesize <= self.limits.max_name + 1:
            raise CpioFormatError(self.source, f"a name of {namesize} bytes (limit {self.limits.max_name})", where)
        padded = namesize + _pad(HEADER_SIZE + namesize)
        name_bytes = self._exact(offset + HEADER_SIZE, padded, "name", where)
        if name_bytes[namesize - 1] != 0 or 0 in name_bytes[: namesize - 1]:
            raise CpioFormatError(self.source, "a name that is not NUL-terminated",
                                  name_bytes[:namesize].decode("utf-8", "backslashreplace"))
        name = name_bytes[: namesize - 1].decode("utf-8", "surrogateescape")
        data = offset + HEADER_SIZE + padded
        entry = CpioEntry(name, ino, mode, uid, gid, nlink, mtime, size, dmaj, dmin, rmaj, rmin,
                          check if magic == CRC_MAGIC else -1, data)
        return entry, data

    def _after_zeros(self, offset: int) -> int | None:
        """The first non-NUL byte at or after ``offset``; None at the end."""
        while offset < self.range.size:
            block = self._get(offset, _WINDOW)
            stripped = len(block) - len(block.lstrip(b"\0"))
            if stripped < len(block):
                return offset + stripped
            offset += len(block)
        return None

    def _checksum(self, entry: CpioEntry) -> None:
        total, done = 0, 0
        while done < entry.size:
            block = self.range.pread(entry.data_offset + done, min(_SUM_BLOCK, entry.size - done))
            total = (total + sum(block)) & 0xFFFFFFFF
            done += len(block)
        if total != entry.check:
            raise CpioFormatError(self.source, f"its checksum is {entry.check:#010x} but its data sums to "
                                  f"{total:#010x} (CRC mismatch)", entry.name)

    def __iter__(self) -> Iterator[CpioEntry]:
        offset, last = 0, None
        limits = self.limits
        while True:
            entry, data = self._header(offset, last)
            end = data + entry.size
            if entry.name == TRAILER:
                self._truncated(data, entry.size + _pad(entry.size), "trailer", TRAILER)
                following = self._after_zeros(end + _pad(entry.size))
                if following is None:
                    return
                offset, last = following, TRAILER
                continue
            self.entries += 1
            if self.entries > limits.max_entries:
                raise CpioFormatError(self.source, f"more than {limits.max_entries} entries "
                                      "(the limit; a bomb?)", entry.name)
            self.total_bytes += entry.size
            if self.total_bytes > limits.max_bytes:
                raise CpioFormatError(self.source, f"the archive's data passes {limits.max_bytes} bytes "
                                      f"(the limit; a bomb?) with this entry of {entry.size} bytes", entry.name)
            self._truncated(data, entry.size, "data", entry.name)
            self._truncated(end, _pad(entry.size), "padding", entry.name)
            if entry.check >= 0:
                self._checksum(entry)
            yield entry
            offset, last = end + _pad(entry.size), entry.name

    def read(self, entry: CpioEntry, cap: int) -> bytes:
        """The whole data of ``entry`` (one this index yielded), which must not exceed ``cap`` bytes."""
        if entry.size > cap:
            raise CpioFormatError(self.source, f"{entry.size} bytes, more than the {cap} allowed", entry.name)
        return self._get(entry.data_offset, entry.size)
