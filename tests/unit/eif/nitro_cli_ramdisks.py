"""Test fixtures: ramdisks in nitro-cli's layout (nitro-facts §3.6), written with CpioWriter.

Shared by the unit tests of the cpio reader and the hostile cases, and by the integration
tests that build EIFs with AWS's crate.
"""

from __future__ import annotations

import gzip
import io
from collections.abc import Iterable, Sequence

from emulator.eif.cpio import CpioWriter

DIR, FILE, LINK = 0o040755, 0o100644, 0o120777
EXE = 0o100755
#: linuxkit's fixed mtime for the entries it makes itself (2017-04-18T16:30:00Z).
LINUXKIT_MTIME = 1492533000


def bootstrap_ramdisk() -> bytes:
    """``dev/``, ``init``, ``nsm.ko``: stand-ins with the names nitro-cli's blobs have."""
    out = io.BytesIO()
    writer = CpioWriter(out)
    writer.add("dev", DIR, mtime=LINUXKIT_MTIME)
    writer.add("init", EXE, b"\x7fELF not the SDK's init: nitro-emu never runs it\n", mtime=LINUXKIT_MTIME)
    writer.add("nsm.ko", EXE, b"\x7fELF not nsm.ko\n", mtime=LINUXKIT_MTIME)
    writer.finish()
    return out.getvalue()


def customer_ramdisk(
    files: Iterable[tuple[str, int, bytes]],
    *,
    cmd: Sequence[str] | bytes | None = ("/bin/true",),
    env: Sequence[str] | bytes | None = ("PATH=/usr/bin:/bin",),
    compress: bool = False,
    crc: bool = False,
    uid: int = 0,
) -> bytes:
    """``rootfs`` + ``files`` (paths under rootfs/) + linuxkit's dirs + ``cmd`` + ``env``.

    ``cmd``/``env``: a list of lines (each gets ``\\n``), raw bytes, or None to leave it out.
    """
    out = io.BytesIO()
    writer = CpioWriter(out, crc=crc)
    writer.add("rootfs", DIR, mtime=LINUXKIT_MTIME)
    for name, mode, data in files:
        writer.add(f"rootfs/{name}", mode, data, uid=uid, gid=uid, mtime=1700000000)
    for name in ("dev", "run", "sys", "var", "proc", "tmp"):
        writer.add(f"rootfs/{name}", DIR, mtime=LINUXKIT_MTIME)
    for name, value in (("cmd", cmd), ("env", env)):
        if value is None:
            continue
        data = value if isinstance(value, bytes) else "".join(f"{line}\n" for line in value).encode()
        writer.add(name, FILE, data, mtime=LINUXKIT_MTIME)
    writer.finish()
    raw = out.getvalue()
    return gzip.compress(raw, mtime=0) if compress else raw
