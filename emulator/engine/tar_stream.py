"""A tar stream built from precomputed headers and byte ranges of a file, without tarfile.

``tarfile`` builds every header through a ``TarInfo`` dict and, in PAX format, tests each
field for an extended header: for a root filesystem of ~10,000 entries that alone took a
third of a second (``bench/runtime.py``, nitro-cli layout). :func:`member_header` packs a
POSIX ustar header in one ``struct`` call and adds a PAX ``x`` header (POSIX.1-2001) in
front only for what ustar cannot hold: a path that does not split into its 155-byte prefix
and 100-byte name, a link target over 100 bytes, a size of 8 GiB or more, a uid or gid past
7 octal digits. Names are the archive's bytes, as Go's ``archive/tar`` (the engine's reader)
takes them; a PAX value that is not UTF-8 is marked ``hdrcharset=BINARY`` as tarfile does.

:func:`tar_chunks` then yields the archive in blocks of about 1 MiB: headers and small files
joined from a window read ahead with one ``pread``, large files in 1 MiB reads, so a file's
bytes are copied in large blocks and never touched one by one.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Iterator
from typing import NamedTuple

BLOCK = 512
REGTYPE, LNKTYPE, SYMTYPE, DIRTYPE, FIFOTYPE = b"0", b"1", b"2", b"5", b"6"
_USTAR = struct.Struct("100s8s8s8s12s12s8s1s100s6s2s32s32s8s8s155s12x")
_CHECKSUM_SPACES = b" " * 8
_MAX_OCTAL_7 = 8**7 - 1  # mode, uid, gid: 7 digits and a NUL
_MAX_OCTAL_11 = 8**11 - 1  # size, mtime: 11 digits and a NUL
_ZERO_7 = b"0000000\0"
#: The sum of a header's constant bytes: checksum spaces, magic, version, device fields.
_FIXED_SUM = sum(_CHECKSUM_SPACES + b"ustar\0" + b"00" + _ZERO_7 + _ZERO_7)
_CHUNK = 1 << 20
_WINDOW = 4 << 20
#: Files up to this size are joined from the read-ahead window; larger ones are read alone.
_SMALL = 256 << 10


class TarMember(NamedTuple):
    """One member: its header block(s), and ``size`` bytes of data at ``offset`` of the source."""

    header: bytes
    offset: int = 0
    size: int = 0


def _split(name: bytes) -> tuple[bytes, bytes] | None:
    """ustar's (prefix, name) of a path over 100 bytes: the longest prefix of at most 155 bytes
    that ends before a ``/`` (so the shortest name); None when that name is still too long."""
    cut = name.rfind(b"/", 0, min(156, len(name) - 1))  # a "/" with something after it
    if cut <= 0 or len(name) - cut - 1 > 100:
        return None
    return name[:cut], name[cut + 1 :]


def _record(key: bytes, value: bytes) -> bytes:
    """A PAX record ``"<length> key=value\\n"``, whose length counts its own digits."""
    body = len(key) + len(value) + 3  # " ", "=", "\n"
    length = body + len(str(body))
    if len(str(length)) + body != length:
        length = body + len(str(length))
    return b"%d %b=%b\n" % (length, key, value)


def _pax_header(records: dict[bytes, bytes]) -> bytes:
    binary = False
    for value in records.values():
        try:
            value.decode("utf-8")
        except UnicodeDecodeError:
            binary = True
    payload = (_record(b"hdrcharset", b"BINARY") if binary else b"") + b"".join(
        _record(key, value) for key, value in records.items()
    )
    head = _ustar(b"././@PaxHeader", b"x", 0o644, 0, 0, 0, len(payload), b"", b"")
    return head + payload + b"\0" * (-len(payload) % BLOCK)


def _ustar(name: bytes, kind: bytes, mode: int, uid: int, gid: int, mtime: int, size: int, link: bytes,
           prefix: bytes) -> bytes:
    numbers = b"%07o\0%07o\0%07o\0%011o\0%011o\0" % (mode, uid, gid, size, mtime)
    header = _USTAR.pack(
        name, numbers[:8], numbers[8:16], numbers[16:24], numbers[24:36], numbers[36:],
        _CHECKSUM_SPACES, kind, link, b"ustar\0", b"00", b"", b"", _ZERO_7, _ZERO_7, prefix,
    )
    # POSIX: the checksum is the sum of the header's bytes with its own field as spaces,
    # written as 6 octal digits, a NUL and a space (tarfile and GNU tar write it so). Only
    # the variable fields are summed; the rest of the block always sums to _FIXED_SUM.
    checksum = _FIXED_SUM + sum(name) + sum(numbers) + kind[0] + sum(link) + sum(prefix)
    return b"%b%06o\0 %b" % (header[:148], checksum, header[156:])


def member_header(name: bytes, kind: bytes, *, mode: int, uid: int, gid: int, mtime: int, size: int = 0,
                  link: bytes = b"") -> bytes:
    """The header block(s) of one member: ustar, with a PAX header first when one is needed.

    ``name`` without a trailing ``/`` (one is added for a directory, as tarfile writes it).
    """
    if kind == DIRTYPE:
        name += b"/"
    records: dict[bytes, bytes] = {}
    prefix = b""
    if len(name) > 100:
        split = _split(name)
        if split is None:
            records[b"path"] = name
            name = name[:100]
        else:
            prefix, name = split
    if len(link) > 100:
        records[b"linkpath"] = link
        link = link[:100]
    if size > _MAX_OCTAL_11:
        records[b"size"] = b"%d" % size
        size = 0
    if uid > _MAX_OCTAL_7:
        records[b"uid"] = b"%d" % uid
        uid = 0
    if gid > _MAX_OCTAL_7:
        records[b"gid"] = b"%d" % gid
        gid = 0
    if mtime > _MAX_OCTAL_11:
        records[b"mtime"] = b"%d" % mtime
        mtime = 0
    header = _ustar(name, kind, mode & 0o7777, uid, gid, mtime, size, link, prefix)
    return _pax_header(records) + header if records else header


def archive_size(members: Iterable[TarMember]) -> int:
    """The length of :func:`tar_chunks`' output for ``members``."""
    return sum(len(member.header) + member.size + (-member.size % BLOCK) for member in members) + 2 * BLOCK


def tar_chunks(members: Iterable[TarMember], pread: Callable[[int, int], bytes]) -> Iterator[bytes]:
    """The archive of ``members`` (then the two zero blocks that end a tar), in ~1 MiB chunks.

    ``pread(offset, size)`` returns the source's bytes; it may return more than asked (a
    read-ahead) but not fewer. Raises OSError if the source ends early.
    """
    pieces: list[bytes | memoryview] = []
    pending = 0
    window, start = memoryview(b""), 0
    for header, offset, size in members:
        pieces.append(header)
        pending += len(header)
        if size:
            if size <= _SMALL:
                relative = offset - start
                if relative < 0 or relative + size > len(window):
                    window, start, relative = memoryview(pread(offset, max(size, _WINDOW))), offset, 0
                    if len(window) < size:
                        raise OSError(f"the source ends {size - len(window)} bytes early, at offset {offset}")
                pieces.append(window[relative : relative + size])
                pending += size
            else:
                yield b"".join(pieces)
                pieces, pending = [], 0
                done = 0
                while done < size:
                    block = pread(offset + done, min(_CHUNK, size - done))[: size - done]
                    if not block:
                        raise OSError(f"the source ends {size - done} bytes early, at offset {offset + done}")
                    done += len(block)
                    yield block
            padding = -size % BLOCK
            if padding:
                pieces.append(b"\0" * padding)
                pending += padding
        if pending >= _CHUNK:
            yield b"".join(pieces)
            pieces, pending = [], 0
    pieces.append(b"\0" * (2 * BLOCK))
    yield b"".join(pieces)
