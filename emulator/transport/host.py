"""The host transport: the enclave bind-mounts its runtime dir from the host.

For a native Linux engine, which sees the host's files and reaches its Unix sockets: the
kernel connects the enclave's sockets to the host's directly; nothing relays a byte.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from emulator.settings import Settings
from emulator.transport.base import ENCLAVE_RUN_DIR, Transport

if TYPE_CHECKING:
    from emulator.enclave.state import EnclaveInfo

ENCLAVE_PARENT_DIR = ENCLAVE_RUN_DIR + "/parent"


class HostTransport(Transport):
    """``run/<cid>`` at ``/run/nitro-emu``, ``run/parent`` read-only at ``.../parent``."""

    name = "host"

    def mounts(self, settings: Settings, enclave: EnclaveInfo, run_dir: Path,
               extra_mounts: Mapping[str, tuple[str, bool]]) -> dict[str, dict[str, str]]:
        volumes: dict[str, dict[str, str]] = {
            str(run_dir): {"bind": ENCLAVE_RUN_DIR, "mode": "rw"},
            str(settings.parent_dir): {"bind": ENCLAVE_PARENT_DIR, "mode": "ro"},
        }
        for host, (inside, read_only) in extra_mounts.items():
            volumes[host] = {"bind": inside, "mode": "ro" if read_only else "rw"}
        return volumes
