"""Writing and reading Enclave Image Files (nitro-facts §3.3), streaming their sections.

The writer emits sections in EifBuilder's order (Kernel, Cmdline, Metadata, Ramdisk x n,
[Signature]) while measuring them, then fills in the header and its CRC. The reader
validates the layout, recomputes the CRC and PCR0/1/2/8 exactly as
aws-nitro-enclaves-image-format's ``EifReader`` does, and keeps only small sections in memory.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from emulator.eif.format import (
    DEFAULT_CPUS,
    DEFAULT_MEMORY,
    EIF_VERSION,
    HEADER_SIZE,
    SECTION_HEADER_SIZE,
    EifFormatError,
    EifHeader,
    SectionHeader,
    SectionType,
    crc32,
    crc32_combine,
    header_crc_input,
)
from emulator.eif.signing import SignatureSection, parse_signature_section
from emulator.errors import NitroCliError
from emulator.eif.measurements import Measurements, PcrHasher, ThreadedPcrHasher

CHUNK = 1 << 20
_KNOWN_TYPES = frozenset(int(kind) for kind in SectionType if kind != SectionType.INVALID)
#: Sections the reader keeps in memory; larger metadata/signature sections are refused.
_SMALL_SECTION_LIMIT = 16 << 20

#: A ramdisk given as bytes, or as a function that writes it into a binary stream.
RamdiskSource = bytes | Callable[[BinaryIO], None]


class EifFileError(NitroCliError):
    """The EIF cannot be opened or read (nitro-cli's E19, file operation failure)."""

    def __init__(self, path: object, operation: str, reason: str) -> None:
        super().__init__(
            19,
            f"File operation failure: {operation} {path}: {reason}. Check the --eif-path.",
        )
        self.path = path


class Signer(Protocol):
    """What the writer needs to add a signature section (see ``emulator.eif.signing``)."""

    @property
    def pcr8(self) -> bytes: ...

    def signature_section(self, pcr0: bytes) -> bytes: ...


class _MeasuringWriter:
    """A write-only stream into the EIF that feeds the section's CRC and PCR hashers."""

    def __init__(self, out: BinaryIO, hashers: Sequence[PcrHasher]) -> None:
        self._out = out
        self._hashers = hashers
        self.crc = 0
        self.size = 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        view = memoryview(data)
        self._out.write(view)
        self.crc = crc32(view, self.crc)
        for hasher in self._hashers:
            hasher.update(view)
        self.size += len(view)
        return len(view)

    def flush(self) -> None:
        self._out.flush()


@dataclass
class _Layout:
    offsets: list[int] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    crc: int = 0  # CRC of everything after the header
    length: int = 0


def _write_section(
    out: BinaryIO,
    layout: _Layout,
    section_type: SectionType,
    source: RamdiskSource,
    hashers: Sequence[PcrHasher] = (),
) -> None:
    offset = out.tell()
    out.write(bytes(SECTION_HEADER_SIZE))  # placeholder until the size is known
    writer = _MeasuringWriter(out, hashers)
    if isinstance(source, bytes):
        writer.write(source)
    else:
        source(writer)  # type: ignore[arg-type]
    end = out.tell()
    header = SectionHeader(int(section_type), 0, writer.size).pack()
    out.seek(offset)
    out.write(header)
    out.seek(end)
    section_crc = crc32_combine(crc32(header), writer.crc, writer.size)
    layout.crc = crc32_combine(layout.crc, section_crc, SECTION_HEADER_SIZE + writer.size)
    layout.length += SECTION_HEADER_SIZE + writer.size
    layout.offsets.append(offset)
    layout.sizes.append(writer.size)


def _write_header(out: BinaryIO, layout: _Layout, template: EifHeader) -> None:
    """Write the header at offset 0: ``template``'s fields, the layout's sections, the CRC."""
    header = replace(
        template,
        num_sections=len(layout.offsets),
        section_offsets=tuple(layout.offsets),
        section_sizes=tuple(layout.sizes),
        crc32=0,
    )
    prefix = header_crc_input(header.pack())
    total = crc32_combine(crc32(prefix), layout.crc, layout.length)
    out.seek(0)
    out.write(replace(header, crc32=total).pack())


def write_eif(
    output: Path,
    *,
    kernel: bytes,
    cmdline: bytes,
    metadata: bytes,
    ramdisks: Sequence[RamdiskSource],
    signer: Signer | None = None,
    arm64: bool = False,
    default_memory: int = DEFAULT_MEMORY,
    default_cpus: int = DEFAULT_CPUS,
) -> Measurements:
    """Write an EIF v4 atomically (a temporary file renamed into place).

    Args:
        output: the file to create or replace.
        kernel, cmdline, metadata: the small sections' data (metadata is the JSON).
        ramdisks: the boot ramdisk first, then the application ramdisk(s); a callable
            source streams its data into the file.
        signer: adds a signature section over PCR0 and sets PCR8.
        arm64: set the header's aarch64 flag.

    Returns:
        The PCRs of the written image.
    """
    if not ramdisks:
        raise ValueError("an EIF needs at least one ramdisk")
    output = Path(output)
    image, boot, app = PcrHasher(), PcrHasher(), PcrHasher()
    layout = _Layout()
    handle, temporary = tempfile.mkstemp(prefix=f".{output.name}.", dir=output.parent or ".")
    try:
        with os.fdopen(handle, "w+b") as out:
            out.write(bytes(HEADER_SIZE))
            _write_section(out, layout, SectionType.KERNEL, kernel, (image, boot))
            _write_section(out, layout, SectionType.CMDLINE, cmdline, (image, boot))
            _write_section(out, layout, SectionType.METADATA, metadata)
            for index, ramdisk in enumerate(ramdisks):
                measured = (image, boot) if index == 0 else (image, app)
                _write_section(out, layout, SectionType.RAMDISK, ramdisk, measured)
            pcr0 = image.pcr()
            pcr8 = None
            if signer is not None:
                _write_section(out, layout, SectionType.SIGNATURE, signer.signature_section(pcr0))
                pcr8 = signer.pcr8
            _write_header(
                out, layout, EifHeader(EIF_VERSION, 1 if arm64 else 0, default_memory, default_cpus, 0, (), ())
            )
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)  # mkstemp made it 0600; a build output is not secret
        os.replace(temporary, output)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return Measurements(pcr0, boot.pcr(), app.pcr(), pcr8)


@dataclass(frozen=True)
class Section:
    """One section of a read EIF: where its data lies in the file."""

    index: int
    section_type: int
    flags: int
    offset: int  # of the section header
    size: int  # of the data
    crc: int = 0  # CRC-32 of the section header and data (what the file's CRC combines)

    @property
    def data_offset(self) -> int:
        """Where the data starts."""
        return self.offset + SECTION_HEADER_SIZE


@dataclass(frozen=True)
class EifImage:
    """A parsed EIF: its header, sections, checks and measurements.

    Attributes:
        crc_ok: the header's CRC matches the file (describe-eif's ``CheckCRC``).
        signature_ok: describe-eif's ``SignatureCheck``; None when unsigned.
        metadata: the ``EifIdentityInfo`` JSON, None without a metadata section.
    """

    path: Path
    header: EifHeader
    sections: tuple[Section, ...]
    measurements: Measurements
    computed_crc: int
    metadata: dict[str, Any] | None
    signature: SignatureSection | None
    signature_ok: bool | None
    cmdline: bytes

    @property
    def crc_ok(self) -> bool:
        return self.header.crc32 == self.computed_crc

    @property
    def is_signed(self) -> bool:
        return self.signature is not None

    @property
    def version(self) -> int:
        return self.header.version

    @property
    def ramdisks(self) -> tuple[Section, ...]:
        """The ramdisk sections in file order (boot ramdisk first)."""
        return tuple(s for s in self.sections if s.section_type == SectionType.RAMDISK)

    @property
    def file_size(self) -> int:
        last = self.sections[-1]
        return last.data_offset + last.size

    def open(self) -> BinaryIO:
        """The file, open for reading (the caller closes it); E19 if it cannot be opened."""
        return _open(self.path)

    def iter_section(self, section: Section, start: int = 0, chunk: int = CHUNK) -> Iterator[bytes]:
        """Stream a section's data from ``start`` (relative to the data) to its end."""
        with _open(self.path) as stream:
            stream.seek(section.data_offset + start)
            remaining = section.size - start
            while remaining > 0:
                block = stream.read(min(chunk, remaining))
                if not block:
                    raise EifFormatError(self.path, f"section {section.index} is truncated")
                remaining -= len(block)
                yield block

    def read_section(self, section: Section, start: int = 0, length: int | None = None) -> bytes:
        """A (small) part of a section's data."""
        end = section.size if length is None else min(section.size, start + length)
        with _open(self.path) as stream:
            stream.seek(section.data_offset + start)
            return stream.read(max(0, end - start))


def _open(path: Path) -> BinaryIO:
    try:
        return open(path, "rb")  # noqa: SIM115 - returned to the caller's with-block
    except FileNotFoundError as error:
        raise EifFileError(path, "Open", "no such file") from error
    except IsADirectoryError as error:
        raise EifFileError(path, "Open", "it is a directory") from error
    except OSError as error:
        raise EifFileError(path, "Open", error.strerror or str(error)) from error


def _read_exact(stream: BinaryIO, size: int, path: Path, what: str) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise EifFormatError(path, f"the file ends inside {what} (truncated?)")
    return data


def read_eif(path: Path | str) -> EifImage:
    """Parse and verify an EIF file, streaming its sections.

    Raises:
        EifFileError: the file cannot be opened (E19).
        EifFormatError: it is not a well-formed EIF (E35).
    """
    path = Path(path)
    # PCR0's and PCR1/PCR2's SHA-384 in threads of their own, beside this one's reads and CRC
    with ThreadedPcrHasher() as image, ThreadedPcrHasher() as boot, ThreadedPcrHasher() as app:
        return _read_eif(path, image, boot, app)


def _read_eif(path: Path, image: PcrHasher, boot: PcrHasher, app: PcrHasher) -> EifImage:
    with _open(path) as stream:
        file_size = os.fstat(stream.fileno()).st_size
        raw_header = stream.read(HEADER_SIZE)
        header = EifHeader.unpack(raw_header, path)
        crc = crc32(header_crc_input(raw_header))
        sections: list[Section] = []
        small: dict[int, bytes] = {}
        position = HEADER_SIZE
        ramdisk_count = 0
        for index in range(header.num_sections):
            declared_offset, declared_size = header.section_offsets[index], header.section_sizes[index]
            if declared_offset != position:
                raise EifFormatError(
                    path, f"section {index} is declared at offset {declared_offset}, found at {position}"
                )
            raw = _read_exact(stream, SECTION_HEADER_SIZE, path, f"the header of section {index}")
            section_crc = crc32(raw)
            section_header = SectionHeader.unpack(raw)
            kind = section_header.section_type
            if kind not in _KNOWN_TYPES:
                raise EifFormatError(path, f"section {index} has an invalid type {kind}")
            # nitro-cli 1.4's sign-eif, replacing a signature (image-format 0.5 write_signature),
            # leaves the header's size of that last section stale; AWS's reader trusts the
            # section header, so a last signature section is read by its own size.
            stale_signature_size = kind == SectionType.SIGNATURE and index == header.num_sections - 1
            if section_header.size != declared_size and not stale_signature_size:
                raise EifFormatError(
                    path,
                    f"section {index} holds {section_header.size} bytes but the header says {declared_size}",
                )
            declared_size = section_header.size
            if position + SECTION_HEADER_SIZE + declared_size > file_size:
                raise EifFormatError(path, f"section {index} runs past the end of the file (truncated?)")
            measured: tuple[PcrHasher, ...]
            if kind == SectionType.RAMDISK:
                measured = (image, boot) if ramdisk_count == 0 else (image, app)
                ramdisk_count += 1
            elif kind in (SectionType.KERNEL, SectionType.CMDLINE):
                measured = (image, boot)
            else:
                measured = ()
            keep = kind in (SectionType.METADATA, SectionType.SIGNATURE, SectionType.CMDLINE)
            if keep and declared_size > _SMALL_SECTION_LIMIT:
                raise EifFormatError(
                    path, f"section {index} ({SectionType(kind).name}) has {declared_size} bytes, too large"
                )
            kept = bytearray()
            remaining = declared_size
            while remaining:
                block = _read_exact(stream, min(CHUNK, remaining), path, f"section {index}")
                section_crc = crc32(block, section_crc)
                for hasher in measured:
                    hasher.update(block)
                if keep:
                    kept += block
                remaining -= len(block)
            if keep:
                small[kind] = bytes(kept)
            crc = crc32_combine(crc, section_crc, SECTION_HEADER_SIZE + declared_size)
            sections.append(Section(index, kind, section_header.flags, position, declared_size, section_crc))
            position += SECTION_HEADER_SIZE + declared_size
        if position != file_size:
            raise EifFormatError(path, f"{file_size - position} unexpected bytes after the last section")
    return _assemble(path, header, tuple(sections), crc, small, image, boot, app)


def _assemble(
    path: Path,
    header: EifHeader,
    sections: tuple[Section, ...],
    crc: int,
    small: dict[int, bytes],
    image: PcrHasher,
    boot: PcrHasher,
    app: PcrHasher,
) -> EifImage:
    metadata = None
    if SectionType.METADATA in small:
        try:
            metadata = json.loads(small[SectionType.METADATA])
        except (ValueError, UnicodeDecodeError) as error:
            raise EifFormatError(path, f"the metadata section is not JSON ({error})") from error
    signature = signature_ok = pcr8 = None
    pcr0 = image.pcr()
    if SectionType.SIGNATURE in small:
        signature = parse_signature_section(small[SectionType.SIGNATURE])
        pcr8 = signature.pcr8
        signature_ok = signature.verifies(pcr0)
    measurements = Measurements(pcr0, boot.pcr(), app.pcr(), pcr8)
    return EifImage(
        path,
        header,
        sections,
        measurements,
        crc,
        metadata,
        signature,
        signature_ok,
        small.get(SectionType.CMDLINE, b""),
    )



def sign_eif_file(path: Path | str, signer: Signer) -> Measurements:
    """Sign an existing EIF in place, as nitro-cli 1.4's ``sign-eif`` does.

    Like image-format 0.5's ``EifSigner::sign_image``: the signature section (over the file's
    PCR0) is written after the last section, or replaces the existing one, which must then be
    the last section (EifBuilder always writes it last); the header gains the section and a
    new CRC. Unlike nitro-cli, an EIF whose CRC does not match is refused: signing it would
    stamp a valid CRC on a corrupt file.

    Returns:
        The PCRs of the signed image (PCR0/1/2 unchanged, PCR8 of the signer's certificate).

    Raises:
        EifFileError: the file cannot be opened or written (E19).
        EifFormatError: it is not a well-formed EIF, its CRC does not match, or its signature
            section is not the last one (E35).
    """
    path = Path(path)
    eif = read_eif(path)
    if not eif.crc_ok:
        raise EifFormatError(
            path,
            f"its CRC {eif.header.crc32:#010x} does not match the content ({eif.computed_crc:#010x}), "
            "so it is corrupt or was modified; refusing to sign it",
        )
    signatures = [s for s in eif.sections if s.section_type == SectionType.SIGNATURE]
    if signatures and (len(signatures) > 1 or signatures[0] is not eif.sections[-1]):
        raise EifFormatError(path, "its signature section is not the last section; cannot re-sign it")
    layout = _Layout()
    for section in eif.sections:
        if section.section_type == SectionType.SIGNATURE:
            continue
        layout.offsets.append(section.offset)
        layout.sizes.append(section.size)
        layout.crc = crc32_combine(layout.crc, section.crc, SECTION_HEADER_SIZE + section.size)
        layout.length += SECTION_HEADER_SIZE + section.size
    data = signer.signature_section(eif.measurements.pcr0)  # before touching the file
    try:
        with open(path, "r+b") as out:
            if os.fstat(out.fileno()).st_size != eif.file_size:
                raise EifFormatError(path, "the file changed while it was being signed")
            out.seek(HEADER_SIZE + layout.length)
            _write_section(out, layout, SectionType.SIGNATURE, data)
            out.truncate()
            out.flush()
            os.fsync(out.fileno())  # the section is on disk before the header points at it
            _write_header(out, layout, eif.header)
    except OSError as error:
        raise EifFileError(path, "Write", error.strerror or str(error)) from error
    return replace(eif.measurements, pcr8=signer.pcr8)
