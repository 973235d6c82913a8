"""Remove what dead supervisors left behind: containers, records, runtime dirs.

Every nitro-emu command that touches enclaves calls :func:`reap` first (issue 4 item 4):

- a record (``enclaves/<id>/enclave.json``) whose supervisor is gone: its container, its
  runtime dir and the record go, and ``logs/<id>.log`` says the supervisor died;
- a container labelled with *this* home whose supervisor pid is dead (or whose record is
  gone): removed. Containers of other homes are never touched (docs/architecture.md);
- a runtime dir ``run/<cid>`` that no live record owns: removed (``run/parent`` stays).

:func:`cleanup_enclave` is also what a supervisor's watchdog runs when the supervisor is
killed, and what the supervisor itself runs when its enclave ends.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from emulator.enclave.container import LABEL_COMPANION_OF, LABEL_ENCLAVE_ID, LABEL_HOME, LABEL_SUPERVISOR_PID
from emulator.enclave.state import (
    EnclaveInfo,
    home_lock,
    list_records,
    process_start_ticks,
    supervisor_alive,
)
from emulator.settings import Settings

if TYPE_CHECKING:
    import docker

logger = logging.getLogger(__name__)


def log_path(settings: Settings, enclave_id: str) -> Path:
    """``logs/<enclave-id>.log``: what a finished enclave printed last and why it ended."""
    return settings.logs_dir / f"{enclave_id}.log"


def write_exit_log(
    settings: Settings, enclave: EnclaveInfo | None, enclave_id: str, reason: str, output: str = ""
) -> Path:
    """Record why an enclave ended (first line) and its last output; keeps an earlier log."""
    path = log_path(settings, enclave_id)
    if path.exists():
        return path
    settings.logs_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    name = f" ({enclave.name})" if enclave is not None else ""
    when = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    text = f"enclave {enclave_id}{name} ended: {reason}\nended at: {when}\n"
    if enclave is not None:
        text += f"cid: {enclave.cid}, memory: {enclave.memory_mib} MiB, flags: {enclave.flags}\n"
    text += "--- last output ---\n" + output
    if output and not output.endswith("\n"):
        text += "\n"
    temporary = path.with_suffix(".tmp")
    temporary.write_text(text)
    temporary.replace(path)
    return path


def _list_containers(client: docker.DockerClient, labels: list[str]) -> list[dict[str, Any]]:
    """Containers with all these labels (low-level: no per-container inspect that can race)."""
    return list(client.api.containers(all=True, filters={"label": labels}))


def _remove(client: docker.DockerClient, container_id: str) -> bool:
    import docker.errors

    try:
        client.api.remove_container(container_id, force=True)
    except docker.errors.NotFound:
        return False
    except docker.errors.APIError as error:
        if "already in progress" not in str(error):
            logger.warning("cannot remove container %s: %s", container_id[:12], error)
        return False
    return True


def remove_containers(client: docker.DockerClient, settings: Settings, enclave_id: str) -> None:
    """Force-remove this home's containers of one enclave: its own, and its companion's."""
    import docker.errors

    home = f"{LABEL_HOME}={settings.home}"
    try:
        found = _list_containers(client, [home, f"{LABEL_ENCLAVE_ID}={enclave_id}"])
        found += _list_containers(client, [home, f"{LABEL_COMPANION_OF}={enclave_id}"])
    except docker.errors.DockerException as error:
        logger.warning("cannot list containers of %s: %s", enclave_id, error)
        return
    for container in found:
        _remove(client, container["Id"])


def remove_dirs(settings: Settings, enclave_id: str, cid: int | None) -> None:
    """Remove an enclave's state dir and its runtime dir (never ``run/parent``)."""
    shutil.rmtree(settings.enclave_dir(enclave_id), ignore_errors=True)
    if cid is not None and cid > 3:
        shutil.rmtree(settings.run_dir(cid), ignore_errors=True)


def cleanup_enclave(
    settings: Settings,
    enclave_id: str,
    *,
    enclave: EnclaveInfo | None,
    reason: str,
    client: docker.DockerClient | None = None,
) -> None:
    """Remove everything of one enclave and write its exit log (if none was written)."""
    if client is None:
        from emulator.engine.client import docker_client

        with contextlib.suppress(Exception):
            client = docker_client()
    if client is not None:
        from emulator.transport.selection import transport_of

        remove_containers(client, settings, enclave_id)
        transport_of(enclave).remove(client, settings, enclave_id)
    write_exit_log(settings, enclave, enclave_id, reason)
    remove_dirs(settings, enclave_id, enclave.cid if enclave is not None else None)


def _pid_alive(text: str | None) -> bool:
    return text is not None and text.isdecimal() and process_start_ticks(int(text)) is not None


def reap(settings: Settings, client: docker.DockerClient | None = None) -> list[str]:
    """Remove what killed processes left in this home; returns the enclave ids reaped."""
    if not settings.home.exists():
        return []
    reaped: list[str] = []
    with home_lock(settings):
        live: list[EnclaveInfo] = []
        for record in list_records(settings):
            if supervisor_alive(record):
                live.append(record)
                continue
            pid = record.process_id
            cleanup_enclave(
                settings, record.enclave_id, enclave=record, client=client,
                reason=f"its supervisor (pid {pid}) is gone; nitro-emu removed the enclave",
            )
            reaped.append(record.enclave_id)
        live_ids = {record.enclave_id for record in live}
        live_cids = {record.cid for record in live}
        if client is not None:
            from emulator.transport.selection import every_transport

            reaped.extend(_reap_containers(settings, client, live_ids))
            for transport in every_transport():
                transport.reap(client, settings, live_ids)
        if settings.run_root.is_dir():
            for entry in settings.run_root.iterdir():
                if entry.name.isdecimal() and int(entry.name) not in live_cids:
                    shutil.rmtree(entry, ignore_errors=True)
    return reaped


def _reap_containers(settings: Settings, client: docker.DockerClient, live_ids: set[str]) -> list[str]:
    import docker.errors

    try:
        found = _list_containers(client, [f"{LABEL_HOME}={settings.home}"])
    except docker.errors.DockerException as error:
        logger.warning("cannot list this home's containers: %s", error)
        return []
    removed: list[str] = []
    for container in found:
        labels = container.get("Labels") or {}
        enclave_id = labels.get(LABEL_ENCLAVE_ID) or labels.get(LABEL_COMPANION_OF, "")
        if enclave_id in live_ids and _pid_alive(labels.get(LABEL_SUPERVISOR_PID)):
            continue
        if _remove(client, container["Id"]):
            removed.append(enclave_id)
    return removed
