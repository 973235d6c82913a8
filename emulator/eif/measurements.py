"""PCR measurements of an enclave image, computed as AWS does.

nitro-facts §3.1/§3.2 (aws-nitro-enclaves-image-format ``src/defs/eif_hasher.rs``):
a measurement is a plain streaming SHA-384 of the measured bytes (``EifHasher`` without
cache), then "extended" into a zeroed register: ``PCR = SHA384(0^48 || SHA384(bytes))``.
"""

from __future__ import annotations

import collections
import hashlib
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

#: ``format!("{:?}", Sha384::new())`` as nitro-cli <= 1.4 prints it (nitro-facts §3.5).
#: nitro-cli 1.5 prints ``"Sha512_48 { .. }"``; callers may pass that instead.
HASH_ALGORITHM = "Sha384 { ... }"
PCR_LENGTH = 48
_ZERO_REGISTER = bytes(PCR_LENGTH)


class PcrHasher:
    """Streams bytes into one measurement (``EifHasher::new_without_cache``)."""

    def __init__(self) -> None:
        self._digest = hashlib.sha384()

    def update(self, data: bytes | bytearray | memoryview) -> None:
        """Measure more bytes."""
        self._digest.update(data)

    def copy(self) -> PcrHasher:
        """An independent hasher that has measured the same bytes so far."""
        twin = PcrHasher()
        twin._digest = self._digest.copy()
        return twin

    def pcr(self) -> bytes:
        """The register value: the digest extended into a zeroed PCR."""
        return hashlib.sha384(_ZERO_REGISTER + self._digest.digest()).digest()


class ThreadedPcrHasher(PcrHasher):
    """A :class:`PcrHasher` that measures in a thread of its own, in order.

    hashlib releases the GIL while it hashes a block, so the measurements of one stream
    (PCR0 and PCR2 both cover the application ramdisk; the CRC is computed beside them) run
    on several cores instead of one after the other. :meth:`update` queues the block, which
    must not change afterwards (pass ``bytes``); at most a few blocks wait. :meth:`pcr` and
    :meth:`copy` wait for the queue; :meth:`close` ends the thread (use it as a context manager).
    """

    _MAX_QUEUED = 4

    def __init__(self) -> None:
        super().__init__()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nitro-emu-pcr")
        self._queued: collections.deque[Future[None]] = collections.deque()

    def __enter__(self) -> ThreadedPcrHasher:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self._queued.append(self._pool.submit(self._digest.update, bytes(data) if not isinstance(data, bytes) else data))
        while len(self._queued) > self._MAX_QUEUED:
            self._queued.popleft().result()

    def _drain(self) -> None:
        while self._queued:
            self._queued.popleft().result()

    def copy(self) -> PcrHasher:
        self._drain()
        return super().copy()

    def pcr(self) -> bytes:
        self._drain()
        return super().pcr()

    def close(self) -> None:
        """Wait for the queued blocks (their errors are dropped) and end the thread."""
        for future in self._queued:
            future.cancel()
        self._queued.clear()
        self._pool.shutdown(wait=True)


def pcr_of(*parts: bytes) -> bytes:
    """The PCR value of the concatenation of ``parts``."""
    hasher = PcrHasher()
    for part in parts:
        hasher.update(part)
    return hasher.pcr()


def pcr_of_stream(chunks: Iterable[bytes]) -> bytes:
    """The PCR value of a stream of chunks (e.g. a file read in blocks)."""
    hasher = PcrHasher()
    for chunk in chunks:
        hasher.update(chunk)
    return hasher.pcr()


@dataclass(frozen=True)
class Measurements:
    """PCR0/1/2 (and PCR8 when signed) of an enclave image file.

    Attributes:
        pcr0: kernel, cmdline and every ramdisk.
        pcr1: kernel, cmdline and the first (boot) ramdisk.
        pcr2: the remaining (application) ramdisks.
        pcr8: the signing certificate (DER), only for a signed image.
    """

    pcr0: bytes
    pcr1: bytes
    pcr2: bytes
    pcr8: bytes | None = None

    def pcrs(self) -> dict[int, bytes]:
        """The registers by index, as an NSM device would hold them."""
        registers = {0: self.pcr0, 1: self.pcr1, 2: self.pcr2}
        if self.pcr8 is not None:
            registers[8] = self.pcr8
        return registers

    def to_nitro_cli_json(self, hash_algorithm: str = HASH_ALGORITHM) -> dict[str, str]:
        """nitro-cli's ``Measurements`` map: a BTreeMap, so keys come out sorted."""
        entries = {"HashAlgorithm": hash_algorithm}
        entries.update({f"PCR{index}": value.hex() for index, value in self.pcrs().items()})
        return dict(sorted(entries.items()))
