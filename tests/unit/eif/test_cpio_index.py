"""CpioIndex (emulator/eif/cpio_index.py): headers read, data skipped, offsets right."""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Iterator

import pytest

from emulator.eif.cpio import CpioFormatError, CpioWriter
from emulator.eif.cpio_index import CpioIndex, FileRange

from .nitro_cli_ramdisks import DIR, FILE


class CountingRange(FileRange):
    read = 0

    def pread(self, offset: int, size: int) -> bytes:
        data = super().pread(offset, size)
        self.read += len(data)
        return data


@pytest.fixture
def spool() -> Iterator[io.BufferedRandom]:
    with tempfile.TemporaryFile() as file:
        yield file  # type: ignore[misc]


def _write(spool: io.BufferedRandom, files: list[tuple[str, bytes]], *, prefix: bytes = b"") -> CountingRange:
    out = io.BytesIO()
    writer = CpioWriter(out)
    writer.add("rootfs", DIR)
    for name, data in files:
        writer.add(name, FILE, data)
    writer.finish()
    spool.write(prefix + out.getvalue() + b"tail")
    spool.flush()
    return CountingRange(spool.fileno(), len(prefix), len(out.getvalue()))


def test_large_files_are_skipped_not_read(spool: io.BufferedRandom) -> None:
    big = os.urandom(1 << 20)
    ramdisk = _write(spool, [(f"rootfs/big{i}", big) for i in range(8)] + [("cmd", b"/bin/true\n")])
    index = CpioIndex(ramdisk, name="test")
    found = {entry.name: entry for entry in index}
    assert ramdisk.read < 3 << 20  # of 8 MiB: the windows after each header, not every file
    assert index.read(found["cmd"], 100) == b"/bin/true\n"
    assert os.pread(spool.fileno(), 16, found["rootfs/big3"].data_offset) == big[:16]  # offsets of the range
    assert index.total_bytes == 8 * len(big) + 10 and index.entries == 10


def test_headers_across_window_edges_of_many_small_files(spool: io.BufferedRandom) -> None:
    files = [(f"rootfs/d/{'n' * (i % 200)}{i}", os.urandom(i * 37 % 5000)) for i in range(400)]
    index = CpioIndex(_write(spool, files, prefix=b"EIF section header"), name="test")
    read = [(entry.name, index.read(entry, 1 << 20)) for entry in index]
    assert read[1:] == files and read[0] == ("rootfs", b"")


def test_the_range_ends_the_archive_not_the_file(spool: io.BufferedRandom) -> None:
    ramdisk = _write(spool, [("rootfs/a", b"x" * 100)])
    cut = FileRange(ramdisk.fd, ramdisk.base, ramdisk.size - 300)  # the file goes on; the section does not
    with pytest.raises(CpioFormatError, match="truncated"):
        list(CpioIndex(cut, name="test"))


def test_an_entry_too_big_for_read_is_refused(spool: io.BufferedRandom) -> None:
    index = CpioIndex(_write(spool, [("cmd", b"x" * 5000)]), name="test")
    entry = [entry for entry in index if entry.name == "cmd"][0]
    with pytest.raises(CpioFormatError, match="5000 bytes, more than the 4096 allowed"):
        index.read(entry, 4096)
