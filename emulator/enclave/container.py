"""The Docker container that plays one enclave: its settings, labels, and extensions.

docs/architecture.md "Enclave container": no network, a read-only root, tmpfs ``/tmp`` and
``/run`` inside the memory limit, no capabilities, ``no-new-privileges``, a pids limit,
memory = ``--memory`` MiB without swap, CPUs = the CPU count (``cpuset_cpus``), and no host
path but the enclave's runtime dir at ``/run/nitro-emu`` (and the parent's VSOCK dir
read-only at ``/run/nitro-emu/parent``).

Extensions: other pieces add mounts and environment through providers, functions
``(context: ContainerContext) -> ContainerExtras`` that the runtime passes to
:func:`collect_extras` (e.g. the LD_PRELOAD shim's read-only ``lib/`` mount and
``LD_PRELOAD``, from :mod:`emulator.shim.build`). This module imports none of them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emulator.enclave.state import EnclaveInfo
from emulator.settings import Settings
from emulator.transport.base import ENCLAVE_RUN_DIR, Transport
from emulator.transport.host import HostTransport

LABEL_PREFIX = "org.nitro-emu."
LABEL_ENCLAVE_ID = LABEL_PREFIX + "enclave-id"
LABEL_CID = LABEL_PREFIX + "cid"
LABEL_HOME = LABEL_PREFIX + "home"
LABEL_SUPERVISOR_PID = LABEL_PREFIX + "supervisor-pid"
#: An engine-transport companion's label naming its enclave. Not ``enclave-id``: that one
#: stays unique to the enclave's own container, which users and tests look up by it.
LABEL_COMPANION_OF = LABEL_PREFIX + "companion-of"

ENCLAVE_NSM_SOCKET = ENCLAVE_RUN_DIR + "/nsm.sock"
PIDS_LIMIT = 1024


@dataclass(frozen=True)
class ContainerContext:
    """What an extension provider may look at."""

    settings: Settings
    enclave: EnclaveInfo
    run_dir: Path


@dataclass(frozen=True)
class ContainerExtras:
    """Extra bind mounts (host path -> (container path, read_only)) and environment."""

    mounts: Mapping[str, tuple[str, bool]] = field(default_factory=dict)
    environment: Mapping[str, str] = field(default_factory=dict)


def container_name(enclave_id: str) -> str:
    return f"nitro-emu-{enclave_id}"


def labels(settings: Settings, enclave: EnclaveInfo, supervisor_pid: int) -> dict[str, str]:
    """The labels that tie a container to its enclave, home and supervisor."""
    return {
        LABEL_ENCLAVE_ID: enclave.enclave_id,
        LABEL_CID: str(enclave.cid),
        LABEL_HOME: str(settings.home),
        LABEL_SUPERVISOR_PID: str(supervisor_pid),
    }


#: What adds mounts and environment to an enclave's container (e.g. the LD_PRELOAD shim).
ExtensionProvider = Callable[[ContainerContext], ContainerExtras]


def collect_extras(context: ContainerContext, providers: Sequence[ExtensionProvider]) -> ContainerExtras:
    """Merge what each provider adds, in order (a later one wins on the same key)."""
    mounts: dict[str, tuple[str, bool]] = {}
    environment: dict[str, str] = {}
    for provider in providers:
        extras = provider(context)
        mounts.update(extras.mounts)
        environment.update(extras.environment)
    return ContainerExtras(mounts=mounts, environment=environment)


def image_environment(image_env: list[str] | None) -> dict[str, str]:
    """The image's ``Env`` list as a dict."""
    env: dict[str, str] = {}
    for item in image_env or ():
        key, _, value = item.partition("=")
        env[key] = value
    return env


def container_settings(
    settings: Settings,
    enclave: EnclaveInfo,
    *,
    supervisor_pid: int,
    run_dir: Path,
    extras: ContainerExtras | None = None,
    transport: Transport | None = None,
) -> dict[str, Any]:
    """The keyword arguments of ``docker.containers.create`` for this enclave.

    The image's own entrypoint, cmd, working dir and user apply (they are in the image
    loaded from the EIF); only the environment is added to. ``transport`` says what is
    mounted at ``/run/nitro-emu`` (:mod:`emulator.transport`; the host's dirs by default).
    """
    extras = extras or ContainerExtras()
    memory = f"{enclave.memory_mib}m"
    volumes = (transport or HostTransport()).mounts(settings, enclave, run_dir, extras.mounts)
    environment = {
        "NITRO_EMU_CID": str(enclave.cid),
        "NITRO_EMU_ENCLAVE_ID": enclave.enclave_id,
        "NITRO_EMU_NSM_SOCKET": ENCLAVE_NSM_SOCKET,
    }
    environment.update(extras.environment)
    return {
        "image": enclave.image_tag,
        "name": container_name(enclave.enclave_id),
        "labels": labels(settings, enclave, supervisor_pid),
        "environment": environment,
        "network_mode": "none",
        "read_only": True,
        # tmpfs pages are charged to the container's memory cgroup: they live within
        # --memory, as the enclave's initramfs-backed root does on Nitro.
        "tmpfs": {"/tmp": f"rw,nosuid,nodev,size={memory}", "/run": f"rw,nosuid,nodev,size={memory}"},
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges"],
        "pids_limit": PIDS_LIMIT,
        "mem_limit": memory,
        "memswap_limit": memory,
        "cpuset_cpus": ",".join(str(cpu) for cpu in enclave.host_cpus),
        "volumes": volumes,
        "detach": True,
        "stdin_open": False,
        "tty": False,
    }
