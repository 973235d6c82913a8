"""nitro-emu's fixed boot blobs: the EIF's kernel, cmdline and first (boot) ramdisk.

On real Nitro these are AWS's Linux kernel, its cmdline and the init + nsm.ko ramdisk that
ship with nitro-cli; they make up PCR1, which is therefore the same for every image built by
one nitro-cli release (nitro-facts §3.1). nitro-emu runs enclaves as containers, so its blobs
are not a kernel: they are deterministic bytes stamped with the nitro-emu version, so PCR1 is
constant per nitro-emu release and changes when the release does.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from dataclasses import dataclass
from functools import lru_cache
from importlib import metadata

from emulator.eif.measurements import pcr_of

#: The distribution name in pyproject.toml.
DISTRIBUTION = "nitro-emulator"
#: Used when the package metadata is absent (running from a source tree that is not installed).
FALLBACK_VERSION = "0.1.0"
#: The size of the pseudo-kernel: large enough to look like a section, small on disk.
_KERNEL_SIZE = 64 * 1024
#: Modelled on nitro-cli's x86_64 blob cmdline (``blobs/x86_64/cmdline``).
_CMDLINE = (
    "reboot=k panic=30 pci=off nomodules console=ttyS0 i8042.noaux i8042.nomux "
    "i8042.nopnp i8042.dumbkbd random.trust_cpu=on nitro_emu.version={version}"
)


def nitro_emu_version() -> str:
    """The installed nitro-emu version (package metadata), or the source tree's fallback."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return FALLBACK_VERSION


@dataclass(frozen=True)
class BootBlobs:
    """The three measured boot sections, and the version they are stamped with."""

    version: str
    kernel: bytes
    cmdline: bytes
    boot_ramdisk: bytes

    @property
    def pcr1(self) -> bytes:
        """PCR1 of any image built with these blobs."""
        return pcr_of(self.kernel, self.cmdline, self.boot_ramdisk)

    @property
    def kernel_version(self) -> str:
        """What the EIF metadata reports as ``KernelVersion``."""
        return f"nitro-emu-{self.version}"


def _pseudo_kernel(version: str) -> bytes:
    # A SHAKE-256 stream keyed by the version, behind a readable banner: deterministic,
    # incompressible like a real bzImage, and different for every release.
    banner = f"nitro-emu boot blob: not a Linux kernel; version {version}\n".encode()
    body = hashlib.shake_256(b"nitro-emu kernel\0" + version.encode()).digest(_KERNEL_SIZE - len(banner))
    return banner + body


def _boot_ramdisk(version: str) -> bytes:
    # A canonical tar (mtime 0, root-owned) with one file that says what it is.
    content = json.dumps(
        {"bootstrap": "nitro-emu", "version": version, "init": "container entrypoint"},
        sort_keys=True,
        separators=(",", ":"),
    ).encode()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        info = tarfile.TarInfo("nitro-emu/boot.json")
        info.size = len(content)
        info.mode = 0o444
        info.mtime = 0
        archive.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


@lru_cache(maxsize=4)
def boot_blobs(version: str | None = None) -> BootBlobs:
    """The boot blobs of a nitro-emu version (default: this one)."""
    version = version or nitro_emu_version()
    return BootBlobs(
        version=version,
        kernel=_pseudo_kernel(version),
        cmdline=_CMDLINE.format(version=version).encode(),
        boot_ramdisk=_boot_ramdisk(version),
    )
