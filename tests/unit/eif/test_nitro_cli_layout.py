"""A nitro-cli customer ramdisk to a tar of rootfs/, and every hostile case (no Docker)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from emulator.eif.cpio import CpioFormatError, CpioLimits, CpioWriter
from emulator.eif.file import read_eif, write_eif
from emulator.eif.format import EifFormatError
from emulator.eif.nitro_cli_layout import (
    LAYOUT_NITRO_CLI,
    NitroCliConfigError,
    UnsafeRamdiskError,
    convert_customer_ramdisk,
    init_arguments,
    ramdisk_layout,
)

from .nitro_cli_ramdisks import DIR, EXE, FILE, LINK, bootstrap_ramdisk, customer_ramdisk


def _convert(data: bytes, limits: CpioLimits | None = None) -> tuple[dict[str, tarfile.TarInfo], dict[str, bytes], object]:
    out = io.BytesIO()
    image = convert_customer_ramdisk(lambda: [data], out, source="test.eif: application ramdisk", limits=limits)
    out.seek(0)
    with tarfile.open(fileobj=out) as archive:
        members = {member.name: member for member in archive.getmembers()}
        bodies = {
            name: archive.extractfile(member).read()  # type: ignore[union-attr]
            for name, member in members.items() if member.isreg()
        }
    return members, bodies, image


def test_rootfs_becomes_the_tar_with_modes_owners_mtimes_symlinks() -> None:
    data = customer_ramdisk(
        [("bin", DIR, b""), ("bin/app", EXE, b"#!/bin/sh\necho hi\n"), ("bin/sh", LINK, b"/usr/bin/dash")],
        cmd=["/bin/app", "--flag", "two words", ""], env=["A=1", "B=x=y", "EMPTY="], uid=1000,
    )
    members, bodies, image = _convert(data)
    assert bodies["bin/app"] == b"#!/bin/sh\necho hi\n"
    app = members["bin/app"]
    assert (app.mode, app.uid, app.gid, app.mtime) == (0o755, 1000, 1000, 1700000000)
    assert members["bin/sh"].issym() and members["bin/sh"].linkname == "/usr/bin/dash"
    assert {"dev", "run", "sys", "var", "proc", "tmp"} <= set(members)
    assert "cmd" not in members and "env" not in members and "rootfs" not in members
    assert image.cmd == (b"/bin/app", b"--flag", b"two words", b"")  # type: ignore[attr-defined]
    assert image.env == (b"A=1", b"B=x=y", b"EMPTY=")  # type: ignore[attr-defined]


def test_config_lines_are_read_as_init_c_reads_them() -> None:
    _, _, image = _convert(customer_ramdisk([], cmd=b"", env=b"A=1\nB=2"))  # empty cmd, no final \n
    assert image.cmd is None and image.env == (b"A=1", b"B=2")  # type: ignore[attr-defined]
    assert init_arguments(image) == ["2", b"A=1".hex(), b"B=2".hex(), "-"]  # type: ignore[arg-type]


def test_init_arguments_encode_every_line_including_empty_ones() -> None:
    _, _, image = _convert(customer_ramdisk([], cmd=["sh", ""], env=b""))
    assert init_arguments(image) == ["-", "2", b"sh".hex(), "="]  # type: ignore[arg-type]


def test_hard_links_are_kept_whichever_entry_carries_the_data() -> None:
    out = io.BytesIO()
    writer = CpioWriter(out)
    writer.add("rootfs", DIR)
    # GNU cpio: the data comes with the last link; the first two are empty
    writer.add("rootfs/a", FILE, b"", nlink=3, ino=9)
    writer.add("rootfs/b", FILE, b"", nlink=3, ino=9)
    writer.add("rootfs/c", FILE, b"shared", nlink=3, ino=9)
    # data first, then an empty link
    writer.add("rootfs/d", FILE, b"other", nlink=2, ino=10)
    writer.add("rootfs/e", FILE, b"", nlink=2, ino=10)
    writer.add("cmd", FILE, b"/bin/true\n")
    writer.add("env", FILE, b"")
    writer.finish()
    members, bodies, _ = _convert(out.getvalue())
    assert bodies["c"] == b"shared" and bodies["d"] == b"other"
    assert members["a"].islnk() and members["a"].linkname == "c"
    assert members["b"].islnk() and members["b"].linkname == "c"
    assert members["e"].islnk() and members["e"].linkname == "d"


def test_device_nodes_and_sockets_are_skipped_with_a_note() -> None:
    data = customer_ramdisk([("dev/null", 0o020666, b""), ("run/s", 0o140755, b""), ("fifo", 0o010644, b"")])
    members, _, image = _convert(data)
    assert "dev/null" not in members and "run/s" not in members
    assert members["fifo"].isfifo()
    notes = " ".join(image.notes)  # type: ignore[attr-defined]
    assert "rootfs/dev/null: a character device, skipped" in notes and "rootfs/run/s: a socket" in notes


def test_entries_outside_rootfs_are_noted_not_unpacked() -> None:
    out = io.BytesIO()
    writer = CpioWriter(out)
    writer.add("rootfs", DIR)
    writer.add("init", EXE, b"elf")
    writer.add("cmd", FILE, b"x\n")
    writer.add("env", FILE, b"")
    writer.finish()
    members, _, image = _convert(out.getvalue())
    assert "init" not in members
    assert any(note.startswith("init: outside rootfs/") for note in image.notes)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("name", "problem"),
    [("rootfs/../../etc/passwd", "'..'"), ("/etc/passwd", "absolute"), ("rootfs/a/../../x", "'..'"),
     ("../cmd", "'..'")],
)
def test_names_escaping_rootfs_are_refused_naming_the_entry(name: str, problem: str) -> None:
    out = io.BytesIO()
    writer = CpioWriter(out)
    writer.add("rootfs", DIR)
    writer.add(name, FILE, b"pwned")
    writer.add("cmd", FILE, b"x\n")
    writer.add("env", FILE, b"")
    writer.finish()
    with pytest.raises(UnsafeRamdiskError, match=problem) as caught:
        _convert(out.getvalue())
    assert caught.value.entry == name and caught.value.code == 35
    assert str(caught.value).startswith("[ E35 ]")


def test_writing_through_a_symlink_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    data = customer_ramdisk([("etc", LINK, str(outside).encode()), ("etc/pwned", FILE, b"pwned")])
    spool = io.BytesIO()
    with pytest.raises(UnsafeRamdiskError, match=r"rootfs/etc/pwned.*through the symlink rootfs/etc") as caught:
        convert_customer_ramdisk(lambda: [data], spool, source="test")
    assert caught.value.entry == "rootfs/etc/pwned"
    assert list(outside.iterdir()) == []  # nothing is ever unpacked onto the host's filesystem


def test_a_relative_symlink_out_then_a_directory_through_it_is_refused() -> None:
    data = customer_ramdisk([("up", LINK, b"../../.."), ("up/etc", DIR, b"")])
    with pytest.raises(UnsafeRamdiskError, match="through the symlink rootfs/up"):
        _convert(data)


def test_symlinks_pointing_anywhere_are_kept_when_nothing_writes_through_them() -> None:
    members, _, _ = _convert(customer_ramdisk([("etc", DIR, b""), ("etc/resolv.conf", LINK, b"/run/resolvconf/resolv.conf"),
                                               ("up", LINK, b"../../..")]))
    assert members["etc/resolv.conf"].linkname == "/run/resolvconf/resolv.conf"
    assert members["up"].linkname == "../../.."


@pytest.mark.parametrize("missing", ["cmd", "env"])
def test_a_missing_cmd_or_env_is_an_e35(missing: str) -> None:
    data = customer_ramdisk([], **{missing: None})  # type: ignore[arg-type]
    with pytest.raises(NitroCliConfigError, match=rf"E35.*no '{missing}' file"):
        _convert(data)


def test_cmd_must_be_a_regular_file() -> None:
    out = io.BytesIO()
    writer = CpioWriter(out)
    writer.add("cmd", LINK, b"/etc/shadow")
    writer.finish()
    with pytest.raises(NitroCliConfigError, match=r"'cmd'.*regular file"):
        _convert(out.getvalue())


def test_a_bomb_sized_rootfs_is_refused() -> None:
    data = customer_ramdisk([(f"f{i}", FILE, b"x" * 1000) for i in range(20)])
    with pytest.raises(CpioFormatError, match="bomb"):
        _convert(data, CpioLimits(max_bytes=10_000))


def test_a_crc_mismatch_in_the_customer_ramdisk_names_the_entry() -> None:
    data = bytearray(customer_ramdisk([("bin", DIR, b""), ("bin/app", FILE, b"payload")], crc=True))
    data[data.index(b"payload")] ^= 1
    with pytest.raises(CpioFormatError, match=r"'rootfs/bin/app'.*CRC mismatch"):
        _convert(bytes(data))


def _eif(tmp_path: Path, app: bytes) -> Path:
    path = tmp_path / "x.eif"
    write_eif(path, kernel=b"kernel", cmdline=b"console=ttyS0", metadata=json.dumps({}).encode(),
              ramdisks=[bootstrap_ramdisk(), app])
    return path


@pytest.mark.parametrize("compress", [False, True])
def test_the_layout_is_told_from_the_ramdisk_itself(tmp_path: Path, compress: bool) -> None:
    eif = read_eif(_eif(tmp_path, customer_ramdisk([], compress=compress)))
    assert ramdisk_layout(eif) == LAYOUT_NITRO_CLI


def test_an_unknown_application_ramdisk_is_an_e35(tmp_path: Path) -> None:
    eif = read_eif(_eif(tmp_path, b"\x00" * 600))
    with pytest.raises(EifFormatError, match="neither a nitro-emu archive nor a nitro-cli cpio"):
        ramdisk_layout(eif)


def test_a_path_named_twice_keeps_its_last_entry() -> None:
    data = customer_ramdisk([("dev", DIR, b""), ("etc", DIR, b""), ("etc/hosts", FILE, b"image"),
                             ("etc/hosts", FILE, b"127.0.0.1 localhost\n")])  # + linuxkit's rootfs/dev
    members, bodies, _ = _convert(data)
    assert bodies["etc/hosts"] == b"127.0.0.1 localhost\n"
    out = io.BytesIO()
    convert_customer_ramdisk(lambda: [data], out, source="test")
    out.seek(0)
    with tarfile.open(fileobj=out) as archive:
        names = archive.getnames()
    assert len(names) == len(set(names))  # docker import refuses duplicates


def test_a_symlink_replaced_later_still_guards_what_was_written_through_it() -> None:
    data = customer_ramdisk([("etc", LINK, b"/"), ("etc/pwned", FILE, b"x"), ("etc", DIR, b"")])
    with pytest.raises(UnsafeRamdiskError, match="through the symlink rootfs/etc"):
        _convert(data)
