"""The byte layout of an Enclave Image File (EIF) version 4.

nitro-facts §3.3 (aws-nitro-enclaves-image-format ``src/defs/mod.rs``): all integers are
big-endian. A 548-byte header, then sections, each a 12-byte section header and its data.
The header's CRC-32 (zlib's) covers the header without its last 4 bytes, then every section
header and data in file order.
"""

from __future__ import annotations

import enum
import struct
import zlib
from dataclasses import dataclass

from emulator.errors import NitroCliError

EIF_MAGIC = b".eif"
EIF_VERSION = 4
#: Versions whose header has the same layout (V2 added the CRC; V3 signature; V4 metadata).
READABLE_VERSIONS = frozenset({2, 3, 4})
MAX_SECTIONS = 32
HEADER_SIZE = 548
SECTION_HEADER_SIZE = 12
#: bit 0 of the header flags: built for aarch64 (``EIF_HDR_ARCH_ARM64``).
ARCH_ARM64_FLAG = 0x1
#: What EifBuilder writes as the image's default memory (1 GiB) and vCPU count.
DEFAULT_MEMORY = 1 << 30
DEFAULT_CPUS = 2

_HEADER_PREFIX = struct.Struct(">4sHHQQHH")  # magic..num_sections: 28 bytes
_SECTION_ARRAY = struct.Struct(f">{MAX_SECTIONS}Q")  # 256 bytes
_HEADER_SUFFIX = struct.Struct(">II")  # unused, eif_crc32
_SECTION_HEADER = struct.Struct(">HHQ")


class SectionType(enum.IntEnum):
    """``EifSectionType``; the numbers are on the wire."""

    INVALID = 0
    KERNEL = 1
    CMDLINE = 2
    RAMDISK = 3
    SIGNATURE = 4
    METADATA = 5


class EifFormatError(NitroCliError):
    """The file is not a well-formed EIF (nitro-cli's E35, EIF file parsing error)."""

    def __init__(self, path: object, problem: str) -> None:
        super().__init__(
            35,
            f"EIF file parsing error: {path}: {problem}. Rebuild it with "
            "`nitro-emu build-enclave` or check that the file was copied completely.",
        )
        self.path = path
        self.problem = problem


@dataclass(frozen=True)
class EifHeader:
    """The fixed 548-byte header (nitro-facts §3.3 table)."""

    version: int
    flags: int
    default_memory: int
    default_cpus: int
    num_sections: int
    section_offsets: tuple[int, ...]
    section_sizes: tuple[int, ...]
    crc32: int = 0

    @property
    def is_arm64(self) -> bool:
        """Whether the image was built for aarch64."""
        return bool(self.flags & ARCH_ARM64_FLAG)

    def pack(self) -> bytes:
        """The 548 header bytes."""
        offsets = self.section_offsets + (0,) * (MAX_SECTIONS - len(self.section_offsets))
        sizes = self.section_sizes + (0,) * (MAX_SECTIONS - len(self.section_sizes))
        return b"".join(
            (
                _HEADER_PREFIX.pack(
                    EIF_MAGIC,
                    self.version,
                    self.flags,
                    self.default_memory,
                    self.default_cpus,
                    0,  # reserved
                    self.num_sections,
                ),
                _SECTION_ARRAY.pack(*offsets),
                _SECTION_ARRAY.pack(*sizes),
                _HEADER_SUFFIX.pack(0, self.crc32),
            )
        )

    @classmethod
    def unpack(cls, data: bytes, path: object = "<eif>") -> EifHeader:
        """Parse and sanity-check a header; raise :class:`EifFormatError` naming the problem."""
        if len(data) < HEADER_SIZE:
            raise EifFormatError(path, f"the file has {len(data)} bytes, shorter than the 548-byte header")
        magic, version, flags, memory, cpus, _reserved, count = _HEADER_PREFIX.unpack_from(data, 0)
        if magic != EIF_MAGIC:
            raise EifFormatError(path, f"bad magic {magic!r} (expected b'.eif'): not an enclave image file")
        if version not in READABLE_VERSIONS:
            raise EifFormatError(path, f"unsupported EIF version {version} (this reader knows 2..4)")
        if not 0 < count <= MAX_SECTIONS:
            raise EifFormatError(path, f"num_sections is {count}; it must be 1..{MAX_SECTIONS}")
        offsets = _SECTION_ARRAY.unpack_from(data, 28)
        sizes = _SECTION_ARRAY.unpack_from(data, 284)
        _unused, crc = _HEADER_SUFFIX.unpack_from(data, 540)
        return cls(version, flags, memory, cpus, count, offsets[:count], sizes[:count], crc)


@dataclass(frozen=True)
class SectionHeader:
    """A section's 12-byte header: type, flags (0), data size."""

    section_type: int
    flags: int
    size: int

    def pack(self) -> bytes:
        """The 12 section-header bytes."""
        return _SECTION_HEADER.pack(self.section_type, self.flags, self.size)

    @classmethod
    def unpack(cls, data: bytes) -> SectionHeader:
        """Parse 12 bytes (the caller checks the length)."""
        return cls(*_SECTION_HEADER.unpack(data))


def header_crc_input(header: bytes) -> bytes:
    """The part of the header the CRC covers: all but its last 4 bytes."""
    return header[: HEADER_SIZE - 4]


# CRC-32 of a concatenation from the CRCs of its parts (the GF(2) method of zlib's
# crc32_combine). It lets the writer stream sections before it knows the header.
_CRC_POLY = 0xEDB88320


def _gf2_times(matrix: list[int], vector: int) -> int:
    result = 0
    row = 0
    while vector:
        if vector & 1:
            result ^= matrix[row]
        vector >>= 1
        row += 1
    return result


def _gf2_square(matrix: list[int]) -> list[int]:
    return [_gf2_times(matrix, matrix[row]) for row in range(32)]


def crc32_combine(crc1: int, crc2: int, length2: int) -> int:
    """``zlib.crc32(a + b)`` given ``crc32(a)``, ``crc32(b)`` and ``len(b)``."""
    if length2 <= 0:
        return crc1
    odd = [_CRC_POLY] + [1 << row for row in range(31)]  # one zero bit
    even = _gf2_square(odd)  # two zero bits
    odd = _gf2_square(even)  # four zero bits
    while True:
        even = _gf2_square(odd)
        if length2 & 1:
            crc1 = _gf2_times(even, crc1)
        length2 >>= 1
        if not length2:
            break
        odd = _gf2_square(even)
        if length2 & 1:
            crc1 = _gf2_times(odd, crc1)
        length2 >>= 1
        if not length2:
            break
    return (crc1 ^ crc2) & 0xFFFFFFFF


def crc32(data: bytes | bytearray | memoryview, start: int = 0) -> int:
    """zlib's CRC-32 (CRC-32/ISO-HDLC), continuing from ``start``."""
    return zlib.crc32(data, start) & 0xFFFFFFFF
