"""The on-disk record of each enclave: ``enclaves/<enclave-id>/enclave.json``.

One :class:`EnclaveInfo` per enclave, written atomically (temporary file + rename) under
the home's lock, so that concurrent ``run-enclave`` calls never pick the same CID or name
and a reaper never deletes a record that is being written (docs/architecture.md "State
directory"). The record names its supervisor by pid *and* process start time, so a
recycled pid never passes for a live supervisor.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from emulator.settings import Settings

RECORD_NAME = "enclave.json"
SUPERVISOR_LOG = "supervisor.log"
LOCK_NAME = ".lock"

# nitro-cli's states and flags (src/enclave_proc/resource_manager.rs, EnclaveState; §3.5).
STATE_EMPTY = "EMPTY"
STATE_RUNNING = "RUNNING"
STATE_TERMINATING = "TERMINATING"
FLAGS_NONE = "NONE"
FLAGS_DEBUG = "DEBUG_MODE"


@dataclass(frozen=True)
class EnclaveInfo:
    """One enclave as ``describe-enclaves`` knows it, plus what the emulator needs to own it.

    Attributes:
        enclave_id: ``i-<17 hex>-enc<16 hex>``; also the attestation ``module_id``.
        name: the enclave name (unique among running enclaves).
        cid: the enclave's VSOCK CID (>= 4).
        process_id: the pid of its supervisor (nitro-cli's "enclave process").
        cpu_ids: the CPU ids given to the enclave (from the emulated CPU pool).
        memory_mib: the memory given to the enclave, in MiB.
        state: ``EMPTY`` (booting), ``RUNNING`` or ``TERMINATING``.
        flags: ``NONE`` or ``DEBUG_MODE``.
        measurements: the EIF's build measurements as nitro-cli prints them
            (``HashAlgorithm``, ``PCR0``, ``PCR1``, ``PCR2`` and ``PCR8`` when signed).
        eif_path: the absolute path of the EIF it runs.
        instance_id: the emulated parent instance id (PCR4, prefix of the enclave id).
        started_at_ms: the start time in ms since the epoch (also in the enclave id).
        image_name: the EIF's image name (``describe-enclaves --metadata``).
        image_version: the EIF's image version.
        metadata: the EIF's metadata, as ``describe-eif`` prints it.
        image_tag: the local Docker image the enclave's container runs.
        host_cpus: the host CPUs the container is pinned to (``cpuset_cpus``).
        container_id: the container's id once created.
        process_start: the supervisor's start time in clock ticks (``/proc/<pid>/stat``).
    """

    enclave_id: str
    name: str
    cid: int
    process_id: int
    cpu_ids: tuple[int, ...]
    memory_mib: int
    state: str
    flags: str
    measurements: Mapping[str, str]
    eif_path: str
    instance_id: str
    started_at_ms: int
    image_name: str | None = None
    image_version: str | None = None
    metadata: Mapping[str, Any] | None = None
    image_tag: str = ""
    host_cpus: tuple[int, ...] = ()
    container_id: str | None = None
    process_start: int | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def debug_mode(self) -> bool:
        return self.flags == FLAGS_DEBUG

    def to_nitro_cli_json(self, *, kind: str = "describe", metadata: bool = False) -> dict[str, Any]:
        """The object nitro-cli prints for this enclave, keys in nitro-cli's order (§3.5).

        Args:
            kind: ``"run"`` (run-enclave), ``"describe"`` (describe-enclaves) or
                ``"terminate"`` (terminate-enclave).
            metadata: add ``ImageName``, ``ImageVersion`` and ``Metadata``
                (``describe-enclaves --metadata``).
        """
        if kind == "terminate":
            return {"EnclaveName": self.name, "EnclaveID": self.enclave_id, "Terminated": True}
        out: dict[str, Any] = {
            "EnclaveName": self.name,
            "EnclaveID": self.enclave_id,
            "ProcessID": self.process_id,
            "EnclaveCID": self.cid,
            "NumberOfCPUs": len(self.cpu_ids),
            "CPUIDs": list(self.cpu_ids),
            "MemoryMiB": self.memory_mib,
        }
        if kind == "run":
            return out
        if kind != "describe":
            raise ValueError(f"unknown output kind {kind!r}: use run, describe or terminate")
        out["State"] = self.state
        out["Flags"] = self.flags
        out["Measurements"] = dict(self.measurements)
        if metadata:
            out["ImageName"] = self.image_name
            out["ImageVersion"] = self.image_version
            out["Metadata"] = dict(self.metadata) if self.metadata is not None else None
        return out

    def to_record(self) -> dict[str, Any]:
        """The JSON-ready dict stored in ``enclave.json``."""
        data = asdict(self)
        data["cpu_ids"] = list(self.cpu_ids)
        data["host_cpus"] = list(self.host_cpus)
        data["measurements"] = dict(self.measurements)
        return data

    @classmethod
    def from_record(cls, data: Mapping[str, Any]) -> EnclaveInfo:
        """Read back :meth:`to_record` output (unknown keys are ignored)."""
        known = {f for f in cls.__dataclass_fields__}
        values = {k: v for k, v in data.items() if k in known}
        values["cpu_ids"] = tuple(values.get("cpu_ids", ()))
        values["host_cpus"] = tuple(values.get("host_cpus", ()))
        return cls(**values)

    def evolve(self, **changes: Any) -> EnclaveInfo:
        """A copy with some fields changed."""
        return replace(self, **changes)


@contextlib.contextmanager
def home_lock(settings: Settings) -> Iterator[None]:
    """Hold the home's exclusive lock (allocation of CIDs, names, and reaping)."""
    settings.ensure_home()
    fd = os.open(settings.home / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the flock


def record_path(settings: Settings, enclave_id: str) -> Path:
    return settings.enclave_dir(enclave_id) / RECORD_NAME


def write_record(settings: Settings, info: EnclaveInfo) -> None:
    """Write (or replace) the record atomically; the caller holds :func:`home_lock`."""
    directory = settings.enclave_dir(info.enclave_id)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=directory, prefix=".enclave-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(info.to_record(), handle, indent=2, sort_keys=True)
        os.replace(temporary, directory / RECORD_NAME)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def read_record(settings: Settings, enclave_id: str) -> EnclaveInfo | None:
    """The record of this enclave, or None when there is none (or it is unreadable)."""
    try:
        data = json.loads(record_path(settings, enclave_id).read_text())
        return EnclaveInfo.from_record(data)
    except (OSError, ValueError, TypeError):
        return None


def list_records(settings: Settings) -> list[EnclaveInfo]:
    """Every readable record of this home, oldest first."""
    try:
        names = os.listdir(settings.enclaves_dir)
    except FileNotFoundError:
        return []
    records = [read_record(settings, name) for name in names]
    return sorted((r for r in records if r is not None), key=lambda r: (r.started_at_ms, r.enclave_id))


def process_start_ticks(pid: int) -> int | None:
    """The start time of a live, non-zombie process in clock ticks, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = stat[stat.rindex(b")") + 2 :].split()
    if fields[0] in (b"Z", b"X"):
        return None
    return int(fields[19])  # field 22 (starttime) of proc(5)


def supervisor_alive(info: EnclaveInfo) -> bool:
    """True while the enclave's supervisor process (the very one recorded) runs."""
    if info.process_id <= 0:
        return False
    ticks = process_start_ticks(info.process_id)
    if ticks is None:
        return False
    return info.process_start is None or ticks == info.process_start
