"""Running enclaves: run / describe / terminate / console, and what keeps them tidy.

| module | holds |
|---|---|
| ``runtime`` | run-enclave, describe-enclaves, terminate-enclave (the API and nitro-cli's rules) |
| ``supervisor`` | the per-enclave process: owns the container, serves its NSM |
| ``container`` | the container's isolation settings, labels and mounts |
| ``resources`` | memory, CPUs, CIDs, names; the home's test CA |
| ``state`` | the enclave records on disk (enclave.json) |
| ``console`` | ``console`` and why an enclave ended |
| ``reaper`` | removes what killed processes left behind |
| ``engine`` | the Docker client as nitro-cli's errors see it |
"""

from __future__ import annotations

from emulator.enclave.runtime import (
    describe_enclaves,
    enclave_logs,
    run_enclave,
    running_enclave,
    terminate_enclave,
)
from emulator.enclave.state import EnclaveInfo

__all__ = [
    "EnclaveInfo",
    "describe_enclaves",
    "enclave_logs",
    "run_enclave",
    "running_enclave",
    "terminate_enclave",
]
