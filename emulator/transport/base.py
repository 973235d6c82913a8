"""The seam between the runtime and where an enclave's sockets live (docs/transport.md).

The runtime (``emulator.enclave``) does everything else the same way for every transport:
records, CPUs and CIDs, the supervisor and its NSM on the host, the container's isolation,
console, terminate, the reaper. A transport answers five questions:

- :meth:`Transport.prepare`: what to make in the engine before the enclave's container
  (the engine transport: the shared volume);
- :meth:`Transport.mounts`: what the enclave's container mounts at ``/run/nitro-emu``;
- :meth:`Transport.populate`: what to copy into it after the container is created;
- :meth:`Transport.link`: in the supervisor, how the enclave's sockets reach the host's
  (nothing for the host transport; the companion and its relay for the engine transport);
- :meth:`Transport.remove` / :meth:`Transport.reap`: what to remove with an enclave, and what
  killed processes left.

A cluster backend would be one more implementation of this class.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from emulator.settings import Settings

if TYPE_CHECKING:
    import docker

    from emulator.enclave.state import EnclaveInfo

#: In the enclave: the runtime dir (NSM socket, VSOCK listeners, the shim).
ENCLAVE_RUN_DIR = "/run/nitro-emu"


class Link(abc.ABC):
    """What a supervisor holds open for its enclave's sockets while it runs."""

    @abc.abstractmethod
    def close(self) -> None:
        """Stop carrying streams (the enclave is ending)."""


class Transport(abc.ABC):
    """How an enclave's runtime dir is shared between the enclave and the host."""

    name: str = ""

    def prepare(self, client: docker.DockerClient, settings: Settings, enclave: EnclaveInfo,
                labels: Mapping[str, str]) -> None:
        """Make what the enclave's container refers to (default: nothing)."""

    @abc.abstractmethod
    def mounts(self, settings: Settings, enclave: EnclaveInfo, run_dir: Path,
               extra_mounts: Mapping[str, tuple[str, bool]]) -> dict[str, dict[str, str]]:
        """The ``volumes`` argument of the enclave's container.

        ``extra_mounts`` maps host directories to read-only places under ``/run/nitro-emu``
        (the shim's library, nitro-cli's init).
        """

    def populate(self, container: Any, extra_mounts: Mapping[str, tuple[str, bool]]) -> None:
        """Fill the container's runtime dir after it is created (default: nothing)."""

    def link(self, client: docker.DockerClient, settings: Settings, enclave: EnclaveInfo,
             labels: Mapping[str, str], on_lost: Callable[[str], None],
             log: Callable[[str], None]) -> Link | None:
        """In the supervisor, once its NSM serves: connect the enclave's sockets to the host's."""
        return None

    def remove(self, client: docker.DockerClient, settings: Settings, enclave_id: str) -> None:
        """Remove what :meth:`prepare` made (the containers are removed by the caller)."""

    def reap(self, client: docker.DockerClient, settings: Settings, live_ids: set[str]) -> list[str]:
        """Remove what enclaves that are no longer live left in the engine; the ids reaped."""
        return []
