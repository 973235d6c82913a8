"""The newc cpio reader and writer (emulator/eif/cpio.py): no Docker needed."""

from __future__ import annotations

import gzip
import io
import tempfile
from collections.abc import Callable

import pytest

from emulator.eif.cpio import CpioFormatError, CpioLimits, CpioReader, CpioWriter, inflate
from emulator.eif.cpio_index import CpioIndex, FileRange

from .nitro_cli_ramdisks import DIR, FILE, LINK, customer_ramdisk

Entries = Callable[..., list[tuple[str, int, bytes]]]


def _streamed(data: bytes, limits: CpioLimits | None = None, chunk: int = 7) -> list[tuple[str, int, bytes]]:
    reader = CpioReader((data[i : i + chunk] for i in range(0, len(data), chunk)), source="test", limits=limits)
    return [(entry.name, entry.mode, b"".join(reader.data())) for entry in reader]


def _indexed(data: bytes, limits: CpioLimits | None = None) -> list[tuple[str, int, bytes]]:
    """As run-enclave reads a nitro-cli ramdisk: inflated into a spool, then indexed by header."""
    with tempfile.TemporaryFile() as spool:
        inflate([data[i : i + 7] for i in range(0, len(data), 7)], spool, source="test", limits=limits)
        spool.flush()
        index = CpioIndex(FileRange(spool.fileno(), 0, spool.tell()), name="test", limits=limits)
        return [(entry.name, entry.mode, index.read(entry, 1 << 30)) for entry in index]


@pytest.fixture(params=["streamed", "indexed"])
def entries(request: pytest.FixtureRequest) -> Entries:
    """Each test runs against both readers: CpioReader (chunks) and CpioIndex (headers of a file)."""
    return _streamed if request.param == "streamed" else _indexed


def _archive(*entries: tuple[str, int, bytes], crc: bool = False) -> bytes:
    out = io.BytesIO()
    writer = CpioWriter(out, crc=crc)
    for name, mode, data in entries:
        writer.add(name, mode, data)
    writer.finish()
    return out.getvalue()


def test_round_trip_in_small_chunks_keeps_names_modes_and_data(entries: Entries) -> None:
    data = _archive(("rootfs", DIR, b""), ("rootfs/a", FILE, b"hello"), ("rootfs/l", LINK, b"a"))
    assert len(data) % 512 == 0
    assert data.startswith(b"070701")
    assert entries(data) == [("rootfs", DIR, b""), ("rootfs/a", FILE, b"hello"), ("rootfs/l", LINK, b"a")]


def test_the_writer_numbers_inodes_from_721_as_linuxkit() -> None:
    reader = CpioReader([_archive(("a", FILE, b""), ("b", FILE, b""))], source="test")
    assert [entry.ino for entry in reader] == [721, 722]


def test_gzip_and_concatenated_archives_are_read(entries: Entries) -> None:
    first, second = _archive(("a", FILE, b"1")), _archive(("b", FILE, b"2"))
    assert [name for name, _, _ in entries(first + second)] == ["a", "b"]
    assert [name for name, _, _ in entries(gzip.compress(first) + gzip.compress(second))] == ["a", "b"]
    assert entries(customer_ramdisk([], compress=True)) == entries(customer_ramdisk([]))


def test_a_crc_archive_with_a_good_checksum_reads(entries: Entries) -> None:
    assert entries(_archive(("a", FILE, b"payload"), crc=True)) == [("a", FILE, b"payload")]


def test_a_checksum_mismatch_names_the_entry(entries: Entries) -> None:
    out = io.BytesIO()
    writer = CpioWriter(out, crc=True)
    writer.add("rootfs/bin/app", FILE, b"payload", check=12345)
    writer.finish()
    with pytest.raises(CpioFormatError, match=r"E35.*rootfs/bin/app.*CRC mismatch") as caught:
        entries(out.getvalue())
    assert caught.value.entry == "rootfs/bin/app"
    assert caught.value.code == 35


@pytest.mark.parametrize("cut", [50, 120, 200])
def test_a_truncated_archive_is_refused(entries: Entries, cut: int) -> None:
    data = _archive(("rootfs/big", FILE, b"x" * 100), ("rootfs/next", FILE, b"y"))
    with pytest.raises(CpioFormatError, match="truncated"):
        entries(data[:cut])


def test_an_archive_without_its_trailer_is_truncated(entries: Entries) -> None:
    data = _archive(("a", FILE, b"1"))
    with pytest.raises(CpioFormatError, match="truncated"):
        entries(data[: data.index(b"TRAILER!!!") - 110])


def test_a_truncated_gzip_stream_is_refused(entries: Entries) -> None:
    data = gzip.compress(_archive(("a", FILE, b"z" * 5000)))
    with pytest.raises(CpioFormatError, match="truncated"):
        entries(data[: len(data) // 2])


def test_garbage_is_not_a_cpio(entries: Entries) -> None:
    with pytest.raises(CpioFormatError, match="no newc cpio header"):
        entries(b"PK\x03\x04" + b"\0" * 200)


def test_other_compressions_are_named(entries: Entries) -> None:
    with pytest.raises(CpioFormatError, match="xz-compressed"):
        entries(b"\xfd7zXZ\0" + b"\0" * 100)


def test_a_name_without_its_nul_is_refused(entries: Entries) -> None:
    data = bytearray(_archive(("abc", FILE, b"")))
    data[110 + 3] = ord("x")
    with pytest.raises(CpioFormatError, match="NUL"):
        entries(bytes(data))


def test_entry_count_limit(entries: Entries) -> None:
    data = _archive(*[(f"f{i}", FILE, b"") for i in range(10)])
    assert len(entries(data, CpioLimits(max_entries=10))) == 10
    with pytest.raises(CpioFormatError, match=r"more than 9 entries.*bomb") as caught:
        entries(data, CpioLimits(max_entries=9))
    assert caught.value.entry == "f9"


def test_a_header_claiming_a_huge_file_is_refused_before_its_data_is_read(entries: Entries) -> None:
    out = io.BytesIO()
    CpioWriter(out).add("rootfs/huge", FILE, b"", size=0xFFFFFFFF)  # no data follows at all
    with pytest.raises(CpioFormatError, match=r"rootfs/huge.*passes 1048576 bytes"):
        entries(out.getvalue(), CpioLimits(max_bytes=1 << 20))


def test_a_gzip_bomb_stops_at_the_limit(entries: Entries) -> None:
    # 64 MiB of zeros inside one entry compresses to ~64 KiB; the cap is 1 MiB
    raw = _archive(("rootfs/zeros", FILE, bytes(64 << 20)))
    bomb = gzip.compress(raw, compresslevel=9)
    assert len(bomb) < 1 << 20
    with pytest.raises(CpioFormatError, match="bomb"):
        entries(bomb, CpioLimits(max_bytes=1 << 20, max_entries=10))
