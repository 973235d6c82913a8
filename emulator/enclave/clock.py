"""The enclave's clock: an offset from the host's, per enclave, changeable while it runs.

The NSM of an enclave dates its documents and picks its certificates at enclave time, so a
running enclave can produce documents from the past or the future, an expired leaf, or a
chain whose intermediate is about to expire (docs/testing-unhappy-paths.md). Nothing changes
the host's clock. The offset lives in ``enclaves/<id>/clock.json`` (host side only), read by
the supervisor at each document (one ``stat`` when unchanged).

    EnclaveClock(settings, enclave_id).set_offset(-86400)   # the enclave lives a day ago
"""

from __future__ import annotations

import json
import math
import os
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

from emulator.errors import EmulatorError
from emulator.settings import Settings

CLOCK_FILE = "clock.json"
#: The furthest an enclave's clock may be set from the host's (either way): 100 years.
MAX_OFFSET_S = 100 * 366 * 86400.0


class ClockError(EmulatorError):
    """An offset that is not a finite number of seconds within the limit."""


def check_offset(offset: object) -> float:
    """``offset`` as float seconds, refused unless finite and within ``MAX_OFFSET_S``."""
    if isinstance(offset, bool) or not isinstance(offset, (int, float)):
        raise ClockError(f"a clock offset is a number of seconds, not {offset!r}")
    value = float(offset)
    if not math.isfinite(value) or abs(value) > MAX_OFFSET_S:
        raise ClockError(f"clock offset {offset!r} s: a finite number within +-{MAX_OFFSET_S:.0f} s (100 years)")
    return value


class EnclaveClock:
    """The enclave-time clock of one enclave (the supervisor's, or a command's view of it)."""

    def __init__(self, settings: Settings, enclave_id: str) -> None:
        self.path: Path = settings.enclave_dir(enclave_id) / CLOCK_FILE
        self._lock = threading.Lock()
        self._seen: tuple[int, int] | None = None
        self._offset = 0.0

    def offset(self) -> float:
        """Seconds the enclave's clock is ahead of the host's (negative: behind)."""
        try:
            stat = self.path.stat()
            stamp = (stat.st_mtime_ns, stat.st_size)
        except FileNotFoundError:
            return 0.0
        with self._lock:
            if stamp != self._seen:
                try:
                    self._offset = check_offset(json.loads(self.path.read_text())["offset_seconds"])
                except (OSError, ValueError, KeyError, TypeError, ClockError):
                    self._offset = 0.0  # a broken file reads as the host's time
                self._seen = stamp
            return self._offset

    def set_offset(self, offset: float) -> float:
        value = check_offset(offset)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(CLOCK_FILE + ".tmp")
        temporary.write_text(json.dumps({"offset_seconds": value}) + "\n")
        os.replace(temporary, self.path)
        return value

    def now(self) -> datetime:
        """The enclave's time now (aware, UTC)."""
        return datetime.now(timezone.utc) + timedelta(seconds=self.offset())
