"""``build-enclave --format nitro-cli``: the customer ramdisk in nitro-cli's layout (nitro-facts §3.6).

nitro-cli (``enclave_build/src/{lib.rs,docker.rs,yaml_generator.rs}``) runs its linuxkit with
``build --docker --format kernel+initrd-nogz`` on a YAML of ``prefix: rootfs/``, ``init:
[image]`` and ``files:`` (``rootfs/{dev,run,sys,var,proc,tmp}`` 0755, ``cmd`` and ``env``
0644). This module writes that archive the way **upstream** linuxkit's source does it
(``src/cmd/linuxkit/moby/build/image.go`` ``ImageTar``, ``moby/build/build.go``
``filesystem``, ``initrd/initrd.go`` ``copyTarEntry``, vendored ``surma/gocpio``):

1. ``rootfs`` (``tarPrefix`` of the prefix: 0755, linuxkit's fixed mtime);
2. the ``docker export`` of the image in export order under ``rootfs/``: ``exclude`` entries
   dropped, ``etc/hosts`` replaced, ``etc/resolv.conf`` a symlink to
   ``/run/resolvconf/resolv.conf``, the ``touch`` entries' mtimes fixed, hard links as relative
   symlinks, modes/owners/mtimes otherwise the export's, directory names with the trailing
   ``/`` Go's tar reader keeps;
3. the ``touch`` entries the export lacked, sorted (this includes ``etc/hosts`` and
   ``etc/resolv.conf`` again: upstream marks only untouched-by-``replace`` entries as found);
4. the ``files``: ``rootfs`` again (``filesystem`` creates each file's parent), the six
   directories, ``cmd``, ``env``;
5. gocpio's ``TRAILER!!!`` (numbered like an entry), padded to 512.

AWS's linuxkit binary is patched (``prefix`` is not an upstream key) and its source is not
published, so where the patch puts the prefix is inferred; docs/eif.md says what this means
for PCR2.
"""

from __future__ import annotations

import posixpath
import stat
import tarfile
from collections.abc import Sequence
from typing import Any, BinaryIO

from emulator.eif.cpio import CpioWriter
from emulator.errors import NitroCliError

#: linuxkit's ``defaultModTime``, 2017-04-18T16:30:00Z.
LINUXKIT_MTIME = 1492533000
PREFIX = "rootfs/"
RESOLV_SYMLINK = "/run/resolvconf/resolv.conf"  # moby/build/build.go resolvconfSymlink
_EXCLUDE = frozenset({".dockerenv", "Dockerfile", "dev/console", "dev/pts", "dev/shm", "etc/hostname"})
_HOSTS = (
    b"127.0.0.1       localhost\n::1     localhost ip6-localhost ip6-loopback\nfe00::0 ip6-localnet\n"
    b"ff00::0 ip6-mcastprefix\nff02::1 ip6-allnodes\nff02::2 ip6-allrouters\n"
)
_DIR, _REG, _LNK = stat.S_IFDIR, stat.S_IFREG, stat.S_IFLNK
#: image.go ``touch``, in sort.Strings order: name -> (type, permissions, symlink target)
_TOUCH: dict[str, tuple[int, int, str]] = {
    "dev/": (_DIR, 0o755, ""),
    "dev/pts/": (_DIR, 0o755, ""),
    "dev/shm/": (_DIR, 0o755, ""),
    "etc/": (_DIR, 0o755, ""),
    "etc/hosts": (_REG, 0o644, ""),
    "etc/mtab": (_LNK, 0o755, "/proc/mounts"),
    "etc/resolv.conf": (_LNK, 0o644, RESOLV_SYMLINK),  # resolv is set for init images
    "proc/": (_DIR, 0o755, ""),
    "sys/": (_DIR, 0o755, ""),
}
_FILES_DIRS = ("rootfs/dev", "rootfs/run", "rootfs/sys", "rootfs/var", "rootfs/proc", "rootfs/tmp")
_TYPES = {
    tarfile.REGTYPE: stat.S_IFREG, tarfile.AREGTYPE: stat.S_IFREG, tarfile.SYMTYPE: stat.S_IFLNK,
    tarfile.LNKTYPE: stat.S_IFLNK, tarfile.CHRTYPE: stat.S_IFCHR, tarfile.BLKTYPE: stat.S_IFBLK,
    tarfile.DIRTYPE: stat.S_IFDIR, tarfile.FIFOTYPE: stat.S_IFIFO,
}


class NitroCliRamdiskError(NitroCliError):
    """The image cannot be written in nitro-cli's layout (E48, EIF building error)."""

    def __init__(self, problem: str) -> None:
        super().__init__(48, f"EIF building error: {problem}")
        self.problem = problem


def cmd_and_env(config: dict[str, Any]) -> tuple[bytes, bytes]:
    """``cmd`` and ``env`` as nitro-cli's ``docker.rs`` writes them: CMD, else ENTRYPOINT, never both."""
    command: Sequence[str] | None = config.get("Cmd") or config.get("Entrypoint")
    if not command:
        raise NitroCliRamdiskError(
            "the image has neither CMD nor ENTRYPOINT, so nitro-cli has no command for the enclave"
        )
    env = config.get("Env") or []
    return ("".join(f"{arg}\n" for arg in command).encode(), "".join(f"{line}\n" for line in env).encode())


def _go_name(member: tarfile.TarInfo) -> str:
    # Go's archive/tar keeps the trailing "/" docker export gives directories; tarfile drops it.
    name = member.name.removeprefix("./")
    return f"{name}/" if member.isdir() else name


def write_nitro_cli_ramdisk(export: BinaryIO, config: dict[str, Any], out: BinaryIO) -> None:
    """Write the customer ramdisk of the image whose ``docker export`` tar is ``export``.

    Raises:
        NitroCliRamdiskError: no command, or an entry linuxkit cannot convert (E48).
    """
    cmd, env = cmd_and_env(config)
    writer = CpioWriter(out, gocpio=True)
    writer.add("rootfs", _DIR | 0o755, mtime=LINUXKIT_MTIME)
    found: set[str] = set()
    with tarfile.open(fileobj=export, mode="r|") as archive:
        for member in archive:
            name = _go_name(member)
            if name in _EXCLUDE:
                continue
            if name == "etc/hosts":
                writer.add(PREFIX + name, _mode(member), _HOSTS, uid=member.uid, gid=member.gid, mtime=LINUXKIT_MTIME)
                continue
            if name == "etc/resolv.conf":
                writer.add(PREFIX + name, _LNK | (member.mode & 0o7777), RESOLV_SYMLINK.encode(),
                           uid=member.uid, gid=member.gid, mtime=LINUXKIT_MTIME)
                continue
            mtime = int(member.mtime)
            if name in _TOUCH:
                found.add(name)
                mtime = LINUXKIT_MTIME
            _add_member(writer, archive, member, PREFIX + name, mtime)
    for name, (kind, permissions, target) in _TOUCH.items():
        if name in found:
            continue
        data = _HOSTS if name == "etc/hosts" else target.encode()
        writer.add(PREFIX + name.rstrip("/"), kind | permissions, data, mtime=LINUXKIT_MTIME)
    writer.add("rootfs", _DIR | 0o755, mtime=LINUXKIT_MTIME)  # filesystem(): each file's parent
    for name in _FILES_DIRS:
        writer.add(name, _DIR | 0o755, mtime=LINUXKIT_MTIME)
    writer.add("cmd", _REG | 0o644, cmd, mtime=LINUXKIT_MTIME)
    writer.add("env", _REG | 0o644, env, mtime=LINUXKIT_MTIME)
    writer.finish(trailer_ino=None)


def _mode(member: tarfile.TarInfo) -> int:
    kind = _TYPES.get(member.type)
    if kind is None:
        raise NitroCliRamdiskError(f"{member.name!r} has tar type {member.type!r}, which linuxkit cannot convert")
    return kind | (member.mode & 0o7777)  # gocpio assemble(): mode & 0xFFF | type << 12


def _add_member(writer: CpioWriter, archive: tarfile.TarFile, member: tarfile.TarInfo, name: str, mtime: int) -> None:
    mode = _mode(member)
    if member.isreg():
        extracted = archive.extractfile(member)
        if extracted is None:
            raise NitroCliRamdiskError(f"{member.name!r} cannot be read from the export")
        writer.add_stream(name, mode, extracted, member.size, uid=member.uid, gid=member.gid, mtime=mtime)
        return
    data = b""
    if member.islnk():
        # typeconv(): a hard link becomes a symlink relative to the link's directory
        target = PREFIX + member.linkname.removeprefix("./")
        data = posixpath.relpath(target, posixpath.dirname(name)).encode()
    elif member.issym():
        data = member.linkname.encode()
    rdev = (member.devmajor, member.devminor) if member.ischr() or member.isblk() else (0, 0)
    writer.add(name, mode, data, uid=member.uid, gid=member.gid, mtime=mtime, rdev=rdev)
