"""The enclave image: EIF v4 files, how they are built, measured, signed and cached.

| module | holds |
|---|---|
| ``format`` | the EIF header, section headers and CRC (nitro-facts §3.3) |
| ``file`` | writing, reading and signing (``sign-eif``) EIF files, section by section |
| ``build`` | ``build-enclave``: a Docker image -> an EIF |
| ``ramdisk`` | the application ramdisk: canonical archive of the image, and loading it back |
| ``boot_blobs`` | the fixed kernel/cmdline/bootstrap sections (PCR1) |
| ``measurements`` | PCR0/1/2/8 (AWS's EifHasher) |
| ``signing`` | the signature section and PCR8 |
| ``cache`` | run-enclave's cache of checked EIFs |
"""

from __future__ import annotations

from emulator.eif.build import build_eif
from emulator.eif.file import EifImage, Section, read_eif, sign_eif_file, write_eif
from emulator.eif.measurements import Measurements

__all__ = ["EifImage", "Measurements", "Section", "build_eif", "read_eif", "sign_eif_file", "write_eif"]
