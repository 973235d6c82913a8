"""Injected faults: make a server answer chosen requests badly, for the next N or until cleared.

One mechanism for the fake NSM (per enclave) and the local KMS: a :class:`FaultPlan` is a
list of rules kept in a JSON file, so that a CLI command or a test in another process can
add and clear faults of a running server, and ``describe-enclaves`` can show what is armed.

    plan = FaultPlan(path)                       # the server's, or anybody's view of it
    plan.add(Fault("Attestation", error="InternalError", count=2))
    fault = plan.take("Attestation")             # the server, per request: the rule that fires
    plan.clear()

A rule names a request (the NSM request or KMS operation name, or ``*`` for all) and one
action: ``error`` (an error code the server answers with), ``delay`` (seconds before the
normal answer), ``drop`` (close the connection without an answer) or ``truncate`` (send
half the answer, then close). ``count`` is how many requests it hits (None: until cleared).
The first matching rule fires; an exhausted rule is removed. The file is locked while read
and written (``fcntl.flock``), and re-read only when its modification time changes, so an
unarmed plan costs one ``stat`` per request.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ACTIONS = ("error", "delay", "drop", "truncate")
ANY = "*"
MAX_DELAY_S = 600.0


class FaultError(ValueError):
    """A fault rule that cannot be armed; the message says which field and why."""


@dataclass(frozen=True)
class Fault:
    """One rule: what it hits and what it does (exactly one of error/delay/drop/truncate)."""

    request: str
    error: str | None = None
    delay: float | None = None
    drop: bool = False
    truncate: bool = False
    count: int | None = None
    message: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.request, str) or not self.request:
            raise FaultError("a fault names the request it hits (or '*' for every request)")
        chosen = [self.error is not None, self.delay is not None, self.drop, self.truncate]
        if sum(chosen) != 1:
            raise FaultError("a fault does exactly one thing: error=CODE, delay=SECONDS, drop or truncate")
        if self.delay is not None and not 0 <= float(self.delay) <= MAX_DELAY_S:
            raise FaultError(f"delay={self.delay!r}: seconds in 0..{MAX_DELAY_S:.0f}")
        if self.count is not None and (not isinstance(self.count, int) or isinstance(self.count, bool) or self.count < 1):
            raise FaultError(f"count={self.count!r}: a positive number of requests, or None for until cleared")

    @property
    def action(self) -> str:
        if self.error is not None:
            return "error"
        if self.delay is not None:
            return "delay"
        return "drop" if self.drop else "truncate"

    def matches(self, request: str) -> bool:
        return self.request in (ANY, request)

    def describe(self) -> str:
        """One line, e.g. ``Attestation: error InternalError (2 left)``."""
        if self.error is not None:
            what = f"error {self.error}"
        elif self.delay is not None:
            what = f"delay {self.delay:g} s"
        else:
            what = "drop the connection" if self.drop else "truncate the answer"
        left = "until cleared" if self.count is None else f"{self.count} left"
        return f"{self.request}: {what} ({left})"

    def to_json(self) -> dict[str, Any]:
        return {key: value for key, value in asdict(self).items() if value is not None and value is not False}

    @classmethod
    def from_json(cls, raw: Any) -> Fault:
        if not isinstance(raw, dict):
            raise FaultError(f"a fault is a JSON object, not {raw!r}")
        known = {"request", "error", "delay", "drop", "truncate", "count", "message"}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise FaultError(f"unknown fault fields {unknown}; known: {sorted(known)}")
        return cls(**raw)


class FaultPlan:
    """The armed faults of one server, kept in ``path`` (or only in memory when None)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._rules: list[Fault] = []
        self._seen: tuple[int, int] | None = None  # (mtime_ns, size) of the file last read

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with self._lock:
            if self.path is None:
                yield
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            lock_path = self.path.with_name(self.path.name + ".lock")
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)

    def _stamp(self) -> tuple[int, int] | None:
        if self.path is None:
            return None
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return (0, 0)
        return (stat.st_mtime_ns, stat.st_size)

    def _load(self) -> None:
        """Re-read the file if it changed since the last read (call with the lock held)."""
        stamp = self._stamp()
        if self.path is None or stamp == self._seen:
            return
        try:
            raw = json.loads(self.path.read_text())
            rules = [Fault.from_json(item) for item in raw.get("faults", [])]
        except FileNotFoundError:
            rules = []
        except (ValueError, AttributeError, TypeError) as error:
            raise FaultError(f"{self.path} is not a fault plan: {error}") from error
        self._rules, self._seen = rules, stamp

    def _store(self) -> None:
        if self.path is None:
            return
        temporary = self.path.with_name(self.path.name + ".tmp")
        temporary.write_text(json.dumps({"faults": [rule.to_json() for rule in self._rules]}, indent=1) + "\n")
        os.chmod(temporary, 0o600)
        os.replace(temporary, self.path)
        self._seen = self._stamp()

    def add(self, fault: Fault) -> None:
        with self._locked():
            self._load()
            self._rules.append(fault)
            self._store()

    def clear(self, request: str | None = None) -> int:
        """Remove every rule (or those naming ``request``); how many were removed."""
        with self._locked():
            self._load()
            kept = [rule for rule in self._rules if request is not None and rule.request != request]
            removed = len(self._rules) - len(kept)
            self._rules = kept
            self._store()
            return removed

    def rules(self) -> list[Fault]:
        with self._locked():
            self._load()
            return list(self._rules)

    def take(self, request: str) -> Fault | None:
        """The rule that fires for this request, counted; None when nothing is armed for it."""
        if self.path is not None and self._stamp() == (0, 0) and not self._rules:
            return None  # the common case: no plan file, nothing to lock
        with self._locked():
            self._load()
            for position, rule in enumerate(self._rules):
                if not rule.matches(request):
                    continue
                if rule.count is not None:
                    left = rule.count - 1
                    if left:
                        self._rules[position] = Fault(**{**asdict(rule), "count": left})
                    else:
                        del self._rules[position]
                    self._store()
                return rule
            return None


def checked_fault(
    request: str,
    options: dict[str, Any],
    *,
    server: str,
    kind: str = "request",
    requests: Collection[str],
    errors: Collection[str],
    refuse: Callable[[str], Exception],
) -> Fault:
    """A :class:`Fault` naming one of ``requests`` (or ``*``/``all``) and one of ``errors``;
    anything else is ``refuse(message)``, the message listing what ``server`` has."""
    name = ANY if request in (ANY, "all") else request
    if name != ANY and name not in requests:
        raise refuse(f"unknown {server} {kind} {request!r}: one of {', '.join(sorted(requests))}, or all")
    error = options.get("error")
    if error is not None and error not in errors:
        raise refuse(f"a {server} fault's error is one of {', '.join(errors)}, not {error!r}")
    try:
        return Fault(name, **options)
    except (FaultError, TypeError) as problem:
        raise refuse(str(problem)) from problem


class FaultControl:
    """What tests and commands hold: arm (checked), clear and list one server's faults.

    Args:
        plan: the server's plan.
        check: ``check(request, options) -> Fault``; raises on a name or code the server
            does not have (the NSM's requests and ErrorCodes, KMS's operations and errors).
    """

    def __init__(self, plan: FaultPlan, check: Callable[[str, dict[str, Any]], Fault]) -> None:
        self.plan = plan
        self._check = check

    def add(self, request: str = ANY, **options: Any) -> Fault:
        """Arm a fault, e.g. ``add("Attestation", error="InternalError", count=1)``."""
        fault = self._check(request, options)
        self.plan.add(fault)
        return fault

    def clear(self, request: str | None = None) -> int:
        return self.plan.clear(request)

    def armed(self) -> list[str]:
        """One line per armed rule, as ``describe-enclaves`` shows them."""
        return [rule.describe() for rule in self.plan.rules()]
