"""The tar writer of emulator/engine/tar_stream.py, read back with tarfile (no Docker)."""

from __future__ import annotations

import io
import os
import tarfile

import pytest

from emulator.engine.tar_stream import (
    DIRTYPE,
    FIFOTYPE,
    LNKTYPE,
    REGTYPE,
    SYMTYPE,
    TarMember,
    archive_size,
    member_header,
    tar_chunks,
)


def _read(data: bytes) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as archive:
        return archive.getmembers()


def _one(name: bytes, kind: bytes = REGTYPE, **fields: int | bytes) -> tarfile.TarInfo:
    options: dict = {"mode": 0o640, "uid": 1000, "gid": 1001, "mtime": 1700000000, **fields}
    (info,) = _read(member_header(name, kind, **options) + bytes(1024))
    return info


@pytest.mark.parametrize(
    ("name", "kind", "expected"),
    [
        (b"etc/hosts", REGTYPE, "etc/hosts"),
        (b"usr/lib", DIRTYPE, "usr/lib"),
        (b"d" * 60 + b"/" + b"e" * 60 + b"/" + b"f" * 90, REGTYPE, "d" * 60 + "/" + "e" * 60 + "/" + "f" * 90),
        (b"x" * 150, DIRTYPE, "x" * 150),  # a long directory: its name part is "/"-less
        (b"y" * 300, REGTYPE, "y" * 300),  # one component past ustar: a PAX path
        (b"p/" * 120 + b"leaf", REGTYPE, "p/" * 120 + "leaf"),  # split at the last "/" within 155 bytes
        ("café/naïve".encode(), REGTYPE, "café/naïve"),
        (b"bad\xff\xfename", REGTYPE, "bad\udcff\udcfename"),  # not UTF-8: kept as bytes
        (b"z" * 200 + b"\xff", REGTYPE, "z" * 200 + "\udcff"),  # ... and in a PAX path (hdrcharset=BINARY)
    ],
)
def test_names_read_back_as_written(name: bytes, kind: bytes, expected: str) -> None:
    info = _one(name, kind)
    assert info.name == expected
    assert (info.mode, info.uid, info.gid, info.mtime, info.type) == (0o640, 1000, 1001, 1700000000, kind)
    assert info.uname == info.gname == ""


def test_only_what_ustar_cannot_hold_gets_a_pax_header() -> None:
    assert len(member_header(b"a" * 100, REGTYPE, mode=0o644, uid=0, gid=0, mtime=0)) == 512
    assert len(member_header(b"a/" * 60 + b"b", REGTYPE, mode=0o644, uid=2097151, gid=0, mtime=0)) == 512
    assert len(member_header(b"a" * 101, REGTYPE, mode=0o644, uid=0, gid=0, mtime=0)) > 512


def test_long_links_big_ids_and_sizes_use_pax_records() -> None:
    target = b"/opt/" + b"t" * 300
    link = _one(b"l", SYMTYPE, link=target, uid=3_000_000, gid=4_000_000)
    assert link.issym() and link.linkname == target.decode()
    assert (link.uid, link.gid) == (3_000_000, 4_000_000)
    hard = _one(b"h", LNKTYPE, link=b"usr/bin/python3")
    assert hard.islnk() and hard.linkname == "usr/bin/python3"
    header = member_header(b"huge", REGTYPE, mode=0o644, uid=0, gid=0, mtime=0, size=9 << 30)
    with tarfile.open(fileobj=io.BytesIO(header), mode="r|") as stream:
        assert stream.next().size == 9 << 30  # type: ignore[union-attr]
    assert _one(b"fifo", FIFOTYPE).isfifo()
    assert _one(b"s", mode=0o4755).mode == 0o4755  # set-uid kept; the file type bits are not mode bits


def test_the_checksum_is_what_tarfile_and_posix_compute() -> None:
    header = member_header(b"etc/passwd", REGTYPE, mode=0o644, uid=0, gid=0, mtime=1, size=5)
    assert tarfile.TarInfo.frombuf(header, "utf-8", "surrogateescape").name == "etc/passwd"  # checks it
    assert header[148:156] == b"%06o\0 " % sum(header[:148] + b" " * 8 + header[156:])


def test_the_stream_joins_headers_and_ranges_of_the_source() -> None:
    source = os.urandom(12 << 20)
    sizes = [0, 1, 511, 512, 513, 5000] + [200_000] * 30 + [3 << 20, 300_000]  # windows and big reads
    members, expected, offset = [], {}, 7
    for index, size in enumerate(sizes):
        name = f"f{index}"
        members.append(TarMember(member_header(name.encode(), REGTYPE, mode=0o644, uid=0, gid=0, mtime=0,
                                               size=size), offset, size))
        expected[name] = source[offset : offset + size]
        offset += size + 3
    members.insert(3, TarMember(member_header(b"dir", DIRTYPE, mode=0o755, uid=0, gid=0, mtime=0)))
    reads: list[int] = []

    def pread(at: int, size: int) -> bytes:
        reads.append(size)
        return source[at : at + size]

    chunks = list(tar_chunks(members, pread))
    data = b"".join(chunks)
    assert len(data) == archive_size(members) and len(data) % 512 == 0
    assert max(len(chunk) for chunk in chunks) < 2 << 20
    assert len(reads) < 20  # windows and 1 MiB blocks, not one read per file
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as archive:
        got = {info.name: archive.extractfile(info).read() for info in archive if info.isreg()}  # type: ignore[union-attr]
        assert archive.getmember("dir").isdir()
    assert got == expected


def test_a_source_that_ends_early_is_an_oserror() -> None:
    members = [TarMember(member_header(b"a", REGTYPE, mode=0o644, uid=0, gid=0, mtime=0, size=100), 0, 100)]
    with pytest.raises(OSError, match="ends 40 bytes early"):
        list(tar_chunks(members, lambda at, size: bytes(60)))
    big = [TarMember(member_header(b"b", REGTYPE, mode=0o644, uid=0, gid=0, mtime=0, size=1 << 20), 0, 1 << 20)]
    with pytest.raises(OSError, match="early"):
        list(tar_chunks(big, lambda at, size: b"" if at else bytes(1000)))
