"""``build-enclave --format nitro-cli``: the customer ramdisk as upstream linuxkit's source writes it."""

from __future__ import annotations

import io
import tarfile

import pytest

from emulator.eif.cpio import CpioReader
from emulator.eif.nitro_cli_layout import convert_customer_ramdisk
from emulator.eif.nitro_cli_ramdisk import LINUXKIT_MTIME, NitroCliRamdiskError, cmd_and_env, write_nitro_cli_ramdisk

CONFIG = {"Cmd": ["python3", "/app/main.py", "two words"], "Entrypoint": ["/ignored"], "Env": ["A=1", "B=x y"]}


def export(*members: tuple[str, bytes, bytes | None, str]) -> io.BytesIO:
    """A ``docker export``-like tar: (name, type, data, linkname), mtime 1700000000, uid 5."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, kind, data, link in members:
            info = tarfile.TarInfo(name)
            info.type, info.mtime, info.uid, info.gid, info.linkname = kind, 1700000000, 5, 6, link
            info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o4711 if name == "bin/su" else 0o644
            if kind == tarfile.CHRTYPE:
                info.devmajor, info.devminor = 1, 3
            info.size = len(data or b"")
            archive.addfile(info, io.BytesIO(data) if data is not None else None)
    out.seek(0)
    return out


def ramdisk(source: io.BytesIO, config: dict = CONFIG) -> bytes:
    out = io.BytesIO()
    write_nitro_cli_ramdisk(source, config, out)
    return out.getvalue()


D, F, L, S, C = tarfile.DIRTYPE, tarfile.REGTYPE, tarfile.LNKTYPE, tarfile.SYMTYPE, tarfile.CHRTYPE
SAMPLE = (
    ("bin", D, None, ""), ("bin/su", F, b"su", ""), ("bin/sh", S, None, "dash"), ("dev", D, None, ""),
    ("dev/console", F, b"", ""), ("dev/null", C, None, ""), (".dockerenv", F, b"", ""), ("etc", D, None, ""),
    ("etc/hostname", F, b"abc\n", ""), ("etc/hosts", F, b"docker's\n", ""), ("etc/resolv.conf", F, b"ns\n", ""),
    ("usr/bin/python3", F, b"py", ""), ("usr/bin/python3.11", L, None, "usr/bin/python3"),
)


def test_entries_order_names_and_fields_follow_linuxkit() -> None:
    data = ramdisk(export(*SAMPLE))
    reader = CpioReader([data], source="test")
    entries = [(entry, b"".join(reader.data())) for entry in reader]
    names = [entry.name for entry, _ in entries]
    assert names == [
        "rootfs", "rootfs/bin/", "rootfs/bin/su", "rootfs/bin/sh", "rootfs/dev/", "rootfs/dev/null",
        "rootfs/etc/", "rootfs/etc/hosts", "rootfs/etc/resolv.conf", "rootfs/usr/bin/python3",
        "rootfs/usr/bin/python3.11",
        # the touch entries the export lacked (etc/hosts and etc/resolv.conf again, as upstream)
        "rootfs/dev/pts", "rootfs/dev/shm", "rootfs/etc/hosts", "rootfs/etc/mtab", "rootfs/etc/resolv.conf",
        "rootfs/proc", "rootfs/sys",
        "rootfs", "rootfs/dev", "rootfs/run", "rootfs/sys", "rootfs/var", "rootfs/proc", "rootfs/tmp", "cmd", "env",
    ]
    by_name = {entry.name: (entry, body) for entry, body in entries}  # the last of a name
    assert [entry.ino for entry, _ in entries] == list(range(721, 721 + len(entries)))
    su, _ = by_name["rootfs/bin/su"]
    assert (su.mode, su.uid, su.gid, su.mtime, su.nlink) == (0o104711, 5, 6, 1700000000, 1)
    assert by_name["rootfs/dev/"][0].mtime == LINUXKIT_MTIME  # a touch entry: mtime fixed
    assert by_name["rootfs/bin/"][0].nlink == 2
    null, _ = by_name["rootfs/dev/null"]
    assert (null.kind, null.rdevmajor, null.rdevminor) == (0o020000, 1, 3)
    link, target = by_name["rootfs/usr/bin/python3.11"]
    assert link.kind == 0o120000 and target == b"python3"  # a hard link as a relative symlink
    assert by_name["rootfs/etc/mtab"][1] == b"/proc/mounts"
    assert by_name["rootfs/etc/resolv.conf"][1] == b"/run/resolvconf/resolv.conf"
    assert by_name["rootfs/etc/hosts"][1].startswith(b"127.0.0.1       localhost\n")
    assert by_name["cmd"][1] == b"python3\n/app/main.py\ntwo words\n" and by_name["env"][1] == b"A=1\nB=x y\n"
    assert all(entry.mtime == LINUXKIT_MTIME and entry.uid == 0 for entry, _ in entries[-9:])


def test_header_bytes_are_gocpio_s() -> None:
    data = ramdisk(export(("bin", D, None, "")))
    # 070701, ino 721 = 0x2d1 in lower-case hex, device 3:1, trailer numbered, padded to 512
    assert data.startswith(b"070701000002d1000041ed")
    assert data[6 + 8 * 7 : 6 + 8 * 9] == b"0000000300000001"
    trailer = data.rindex(b"070701")
    entries = 1 + 1 + 9 + 9  # rootfs, bin/, the 9 touch entries, the 9 files
    assert data[trailer + 6 : trailer + 14] == b"%08x" % (721 + entries)
    assert len(data) % 512 == 0


def test_cmd_is_cmd_else_entrypoint_never_both() -> None:
    assert cmd_and_env({"Cmd": None, "Entrypoint": ["/e", "-x"], "Env": None}) == (b"/e\n-x\n", b"")
    with pytest.raises(NitroCliRamdiskError, match="neither CMD nor ENTRYPOINT") as caught:
        cmd_and_env({"Cmd": None, "Entrypoint": None})
    assert caught.value.code == 48


def test_our_nitro_cli_reader_loads_it_back() -> None:
    data = ramdisk(export(*SAMPLE))
    out = io.BytesIO()
    image = convert_customer_ramdisk(lambda: [data], out, source="test")
    assert image.cmd == (b"python3", b"/app/main.py", b"two words") and image.env == (b"A=1", b"B=x y")
    out.seek(0)
    with tarfile.open(fileobj=out) as archive:
        names = archive.getnames()
    assert "usr/bin/python3" in names and "etc/hostname" not in names and ".dockerenv" not in names
