"""What run-enclave hands out and checks: CPUs, memory, CIDs, names, enclave ids.

Each check raises the :class:`~emulator.errors.NitroCliError` nitro-cli raises for it
(aws/aws-nitro-enclaves-cli ``src/common/commands_parser.rs``,
``src/enclave_proc/cpu_info.rs``, ``src/enclave_proc/resource_manager.rs``, ``src/lib.rs``
``new_enclave_name``), with one line saying what to do.

The emulated CPU pool plays ``/sys/module/nitro_enclaves/parameters/ne_cpus``, which
nitro-enclaves-allocator fills from ``/etc/nitro_enclaves/allocator.yaml`` (aws-nitro-enclaves-cli
``bootstrap/nitro-enclaves-allocator``): either ``cpu_count: N`` or ``cpu_pool: 2,3,6-9``, never
both, and never CPU 0 (it stays with the parent). Here the same two knobs are
``$NITRO_EMU_CPU_COUNT`` (CPUs ``1..N``) and ``$NITRO_EMU_CPU_POOL`` (a list); by default the
pool is 31 CPUs, ``1-31`` (a 32-vCPU parent; AWS's allocator.yaml reserves 2). The pool is per
state dir: each ``NITRO_EMU_HOME`` (each pytest-xdist worker) has all of it. Pool CPUs are
virtual: the container is pinned to host CPUs (:func:`host_cpuset`), so ``nproc`` inside
equals the CPU count up to the host's core count.
"""

from __future__ import annotations

import os
import re
import secrets
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from emulator.nitro_cli_errors import nitro_cli_error
from emulator.settings import Settings

if TYPE_CHECKING:
    from ca import TestCA

ENV_CPU_POOL = "NITRO_EMU_CPU_POOL"
ENV_CPU_COUNT = "NITRO_EMU_CPU_COUNT"
#: The pool without either knob: CPUs 1-31, as on a 32-vCPU parent that gives all but CPU 0.
DEFAULT_CPU_COUNT = 31
#: The highest CPU id a pool may name (the kernel's largest NR_CPUS, CONFIG_NR_CPUS_RANGE_END).
MAX_CPU_ID = 8191

#: nitro-cli refuses memory below 4x the EIF size (ENCLAVE_MEMORY_EIF_SIZE_RATIO).
EIF_SIZE_RATIO = 4
#: The Nitro driver's smallest enclave (NE_ERR_ENCLAVE_MEM_MIN_SIZE), in MiB.
MIN_MEMORY_MIB = 64
#: The CIDs an enclave may not take: hypervisor, local, host, parent (commands_parser.rs).
RESERVED_CIDS = frozenset({0, 1, 2, 3})
MAX_CID = 0xFFFFFFFF
#: Auto-assigned CIDs start here (real enclaves usually get 16, 17, ...) [inferred].
FIRST_AUTO_CID = 16

INSTANCE_ID_FILE = "instance-id"
_INSTANCE_ID = re.compile(r"^i-[0-9a-f]{17}$")
_MEMORY = re.compile(r"^(\d+)([MmGgTt]?)$")


def parse_memory(text: str) -> int:
    """``--memory`` as nitro-cli reads it: MiB, or with an ``M``/``G``/``T`` suffix."""
    match = _MEMORY.match(text.strip())
    if match is None:
        raise nitro_cli_error(
            "InvalidArgument", "memory", text,
            detail="Give the memory in MiB, e.g. --memory 512 (or 2G).",
        )
    factor = {"": 1, "m": 1, "g": 1024, "t": 1024 * 1024}[match.group(2).lower()]
    return int(match.group(1)) * factor


def parse_int_argument(name: str, text: str) -> int:
    """An unsigned integer flag (``--cpu-count``, ``--enclave-cid``...) or E03."""
    if not text.strip().isdecimal():
        raise nitro_cli_error("InvalidArgument", name, text, detail=f"--{name} takes a whole number.")
    return int(text)


def check_memory(memory_mib: int, eif_size: int) -> None:
    """nitro-cli's memory checks: more than 0, 4x the EIF size, the driver's 64 MiB."""
    if memory_mib <= 0:
        raise nitro_cli_error("InsufficientMemoryRequested", "memory", str(memory_mib))
    minimum = -(-eif_size // (1024 * 1024)) * EIF_SIZE_RATIO
    if memory_mib < minimum:
        raise nitro_cli_error(
            "InsufficientMemoryRequested", "memory", str(memory_mib), str(minimum),
            detail=f"Run with --memory {minimum} or more (4 times the EIF size).",
        )
    if memory_mib < MIN_MEMORY_MIB:
        raise nitro_cli_error(
            "IoctlFailure",
            detail=(f"The enclave's memory size is lower than the minimum supported "
                    f"({MIN_MEMORY_MIB} MiB); run with --memory {MIN_MEMORY_MIB} or more."),
        )


def cpu_pool() -> tuple[int, ...]:
    """The emulated enclave CPU pool: ``$NITRO_EMU_CPU_COUNT`` or ``$NITRO_EMU_CPU_POOL`` (E24)."""
    count_text = os.environ.get(ENV_CPU_COUNT, "").strip()
    pool_text = os.environ.get(ENV_CPU_POOL, "").strip()
    if count_text and pool_text:
        raise nitro_cli_error(
            "CpuError",
            detail=(f"${ENV_CPU_COUNT} and ${ENV_CPU_POOL} are both set; set only one (as allocator.yaml's "
                    "`cpu_count` conflicts with `cpu_pool`)."),
        )
    if not pool_text:
        if not count_text:
            return tuple(range(1, DEFAULT_CPU_COUNT + 1))
        if not count_text.isdecimal() or not 1 <= int(count_text) <= MAX_CPU_ID:
            raise nitro_cli_error(
                "CpuError", detail=f"${ENV_CPU_COUNT}={count_text!r} is not a CPU count from 1 to {MAX_CPU_ID}.",
            )
        return tuple(range(1, int(count_text) + 1))
    ids: list[int] = []
    for interval in pool_text.split(","):
        bounds = [part.strip() for part in interval.split("-")]
        if not all(part.isdecimal() for part in bounds) or len(bounds) not in (1, 2):
            raise nitro_cli_error(
                "CpuError", detail=f"${ENV_CPU_POOL}={pool_text!r} is not a CPU list like '1-7,9'.",
            )
        low, high = int(bounds[0]), int(bounds[-1])
        ids.extend(range(low, min(high, MAX_CPU_ID) + 1))
        if high > MAX_CPU_ID:
            raise nitro_cli_error("CpuError", detail=f"${ENV_CPU_POOL} names CPU {high}; the highest is {MAX_CPU_ID}.")
    if 0 in ids:
        raise nitro_cli_error(
            "CpuError", detail=f"${ENV_CPU_POOL}={pool_text!r} holds CPU 0, which stays with the parent instance.",
        )
    return tuple(sorted(set(ids)))


def pool_hint(pool: Sequence[int]) -> str:
    """Which knob made the pool, and how to change it (for E21 and E22)."""
    if os.environ.get(ENV_CPU_POOL, "").strip():
        source = f"${ENV_CPU_POOL}={os.environ[ENV_CPU_POOL].strip()}"
    elif os.environ.get(ENV_CPU_COUNT, "").strip():
        source = f"${ENV_CPU_COUNT}={len(pool)}: CPUs {_ranges(list(pool))}"
    else:
        source = f"the default {DEFAULT_CPU_COUNT} CPUs, {_ranges(list(pool))}"
    return (f"the pool is {source}; set ${ENV_CPU_COUNT}=N (allocator.yaml's cpu_count) or "
            f"${ENV_CPU_POOL}=LIST (its cpu_pool) to change it")


def allocate_cpus(
    cpu_count: int | None, cpu_ids: Sequence[int] | None, in_use: Iterable[int]
) -> tuple[int, ...]:
    """The CPU ids for a new enclave, checked as nitro-cli checks them (E20, E21, E22).

    Exactly one of ``cpu_count`` and ``cpu_ids`` is given. CPUs held by running enclaves
    are not in the pool any more (the Nitro driver moves them to the enclave).
    """
    if (cpu_count is None) == (cpu_ids is None):
        if cpu_count is None:
            raise nitro_cli_error("MissingArgument", "cpu-count", detail="Give --cpu-count N or --cpu-ids.")
        raise nitro_cli_error("ConflictingArgument", "cpu-count", "cpu-ids")
    busy = set(in_use)
    pool = cpu_pool()
    free = [cpu for cpu in pool if cpu not in busy]
    if cpu_ids is not None:
        ids = list(cpu_ids)
        if not ids:
            raise nitro_cli_error("MissingArgument", "cpu-ids")
        duplicates = sorted({cpu for cpu in ids if ids.count(cpu) > 1})
        if duplicates:
            raise nitro_cli_error(
                "InvalidCpuConfiguration", "cpu-ids", ", ".join(map(str, duplicates)),
                detail="List each CPU once.",
            )
        for cpu in ids:
            if cpu not in free:
                why = "is used by another enclave" if cpu in busy else "is not in the pool"
                raise nitro_cli_error(
                    "NoSuchCpuAvailableInPool", "cpu-ids", str(cpu),
                    detail=f"(CPU {cpu} {why}; free CPUs: {_ranges(free)}; {pool_hint(pool)}.)",
                )
        return tuple(ids)
    assert cpu_count is not None
    if cpu_count <= 0:
        raise nitro_cli_error("InvalidArgument", "cpu-count", str(cpu_count), detail="--cpu-count must be at least 1.")
    if cpu_count > len(free):
        raise nitro_cli_error(
            "InsufficientCpus", "cpu-count", str(cpu_count),
            detail=(f"({len(free)} of the pool's {len(pool)} CPUs are free, {len(pool) - len(free)} held by "
                    f"running enclaves; {pool_hint(pool)}.)"),
        )
    return tuple(free[:cpu_count])


def host_cpuset(cpu_ids: Sequence[int], host_cpus: int | None = None) -> tuple[int, ...]:
    """The host CPUs that carry an enclave's CPUs: as many as it has, up to the host's.

    Pool id ``n`` maps to host CPU ``n mod host_cpus``; collisions are filled with other
    host CPUs, so ``nproc`` inside is ``min(len(cpu_ids), host_cpus)``.
    """
    total = host_cpus or len(os.sched_getaffinity(0))
    available = sorted(os.sched_getaffinity(0)) if host_cpus is None else list(range(total))
    wanted = min(len(cpu_ids), len(available))
    chosen: list[int] = []
    for cpu in cpu_ids:
        host = available[cpu % len(available)]
        if host not in chosen and len(chosen) < wanted:
            chosen.append(host)
    for host in available:
        if len(chosen) >= wanted:
            break
        if host not in chosen:
            chosen.append(host)
    return tuple(sorted(chosen))


def check_cid(cid: int, in_use: dict[int, str]) -> None:
    """A requested ``--enclave-cid``: not well known, not the parent's, not taken."""
    if cid in (1, 2) or cid == MAX_CID:
        raise nitro_cli_error(
            "InvalidArgument", "enclave-cid", str(cid),
            detail=f"CID {cid} is a well-known CID, not to be used for enclaves; use 4 or more.",
        )
    if cid == 3:
        raise nitro_cli_error(
            "InvalidArgument", "enclave-cid", str(cid),
            detail="CID 3 is the CID of the parent VM, not to be used for enclaves; use 4 or more.",
        )
    if cid > MAX_CID:
        raise nitro_cli_error(
            "InvalidArgument", "enclave-cid", str(cid),
            detail=f"CID {cid} is higher than the maximum supported (u32 max) for a vsock device.",
        )
    if cid in in_use:
        raise nitro_cli_error(
            "IoctlFailure",
            detail=(f"The enclave CID {cid} is already used by enclave {in_use[cid]}; "
                    "pick another --enclave-cid or leave it out to get a free one."),
        )


def allocate_cid(requested: int | None, in_use: dict[int, str]) -> int:
    """The CID for a new enclave: the requested one (checked) or the lowest free >= 16."""
    if requested:  # 0 means auto-generate, as in nitro-cli
        check_cid(requested, in_use)
        return requested
    cid = FIRST_AUTO_CID
    while cid in in_use:
        cid += 1
    return cid


def enclave_name(requested: str | None, eif_path: str | Path, names_in_use: Iterable[str]) -> str:
    """nitro-cli's ``new_enclave_name``: the given name or the EIF stem, then ``_1``, ``_2``..."""
    base = requested if requested else Path(eif_path).name.removesuffix(".eif")
    taken = set(names_in_use)
    name, index = base, 0
    while name in taken:
        index += 1
        name = f"{base}_{index}"
    return name


def load_instance_id(settings: Settings, override: str | None = None) -> str:
    """The emulated parent instance id: the override, or one persisted per home.

    Real ids are ``i-`` + 17 hex digits (nitro-facts §2.2); the default looks like one
    (``i-0`` + 16 random hex digits) and stays the same for this home, so PCR4 does too.
    """
    if override is not None:
        if not _INSTANCE_ID.match(override):
            raise nitro_cli_error(
                "InvalidArgument", "instance-id", override,
                detail="An instance id is 'i-' followed by 17 lower-case hex digits.",
            )
        return override
    path = settings.home / INSTANCE_ID_FILE
    try:
        value = path.read_text().strip()
        if _INSTANCE_ID.match(value):
            return value
    except FileNotFoundError:
        pass
    value = "i-0" + secrets.token_hex(8)
    settings.ensure_home()
    temporary = path.with_name(f".{INSTANCE_ID_FILE}.{os.getpid()}")
    temporary.write_text(value + "\n")
    os.replace(temporary, path)
    return value


def new_enclave_id(instance_id: str, now_ms: int | None = None) -> tuple[str, int]:
    """``<instance-id>-enc<16 hex>``: 12 hex of start time in ms, then 4 random (§2.2)."""
    started = int(time.time() * 1000) if now_ms is None else now_ms
    suffix = f"{started & 0xFFFFFFFFFFFF:012x}{secrets.randbelow(0x10000):04x}"
    return f"{instance_id}-enc{suffix}", started


def _ranges(ids: Sequence[int]) -> str:
    if not ids:
        return "none"
    parts: list[str] = []
    start = prev = ids[0]
    for cpu in [*ids[1:], None]:
        if cpu is not None and cpu == prev + 1:
            prev = cpu
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if cpu is not None:
            start = prev = cpu
    return ",".join(parts)


def open_home_ca(settings: Settings, *, create: bool = True) -> TestCA:
    """The test CA of this state dir; created, named after its parent instance, if missing.

    Every piece that signs (supervisors, ``attest``, ``nsm serve``, the pytest plugin) opens
    the CA here, so that whichever runs first, the instance certificate's CN and PCR4 name
    the same instance id.
    """
    from ca import TestCA

    if not create:
        return TestCA.load(settings.ca_dir)
    settings.ensure_home()
    if (settings.ca_dir / "ca.json").is_file():
        return TestCA.load_or_create(settings.ca_dir)
    return TestCA.load_or_create(settings.ca_dir, instance_id=load_instance_id(settings))
