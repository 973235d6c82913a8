"""Console streaming and exit reasons of enclaves (``nitro-emu console``, describe notices).

The console is the enclave container's output through the Docker log stream, from the
enclave's start (docs/runtime.md, Fidelity). Why an enclave ended is the first line of
``logs/<enclave-id>.log``, written by its supervisor (or watchdog, or the reaper).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from emulator.enclave.engine import enclave_engine
from emulator.enclave.state import EnclaveInfo
from emulator.nitro_cli_errors import nitro_cli_error
from emulator.enclave.reaper import log_path
from emulator.settings import get_settings

if TYPE_CHECKING:
    import docker


def exit_reason(enclave_id: str) -> str | None:
    """The first line of a finished enclave's log (why it ended), if it ended."""
    path = log_path(get_settings(), enclave_id)
    try:
        first = path.read_text(errors="replace").splitlines()[0]
    except (OSError, IndexError):
        return None
    return first.split(" ended: ", 1)[-1]


def stream_console(
    info: EnclaveInfo,
    write: Callable[[bytes], object],
    *,
    disconnect_timeout: float | None = None,
    client: docker.DockerClient | None = None,
) -> str | None:
    """Copy a debug-mode enclave's output to ``write`` as it comes (``nitro-cli console``).

    Returns why the enclave ended when it ended, or None when ``disconnect_timeout``
    seconds passed first. Raises E44 for an enclave not started in debug mode.
    """
    import docker.errors

    if not info.debug_mode:
        raise nitro_cli_error(
            "EnclaveConsoleConnectionFailure",
            detail=("The enclave was not started with the debug flag set, include '--debug-mode' "
                    "in the run-enclave command."),
        )
    docker_client = enclave_engine(client)
    try:
        container = docker_client.containers.get(info.container_id or "")
        stream = container.logs(stream=True, follow=True)
    except docker.errors.NotFound:
        return _await_exit_reason(info.enclave_id)
    except docker.errors.APIError as error:
        raise nitro_cli_error("EnclaveConsoleConnectionFailure", detail=str(error.explanation or error)) from error
    ended = threading.Event()

    def pump() -> None:
        try:
            for chunk in stream:
                write(chunk)
        except Exception:  # noqa: BLE001 - a closed stream ends the copy, as EOF does
            pass
        finally:
            ended.set()

    thread = threading.Thread(target=pump, name="console", daemon=True)
    thread.start()
    if not ended.wait(disconnect_timeout):
        with contextlib.suppress(Exception):
            stream.close()
        thread.join(2.0)
        return None
    thread.join(2.0)
    return _await_exit_reason(info.enclave_id)


def _await_exit_reason(enclave_id: str, timeout: float = 30.0) -> str | None:
    """The exit reason the supervisor writes just after its container stops."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reason = exit_reason(enclave_id)
        if reason is not None:
            return reason
        time.sleep(0.05)
    return None


def pop_exit_notices() -> list[tuple[str, str]]:
    """(enclave id, why it ended) of enclaves that ended since the last call in this home."""
    settings = get_settings()
    marker = settings.logs_dir / ".noticed"
    try:
        since = marker.stat().st_mtime_ns
    except FileNotFoundError:
        since = 0
    if not settings.logs_dir.is_dir():
        return []
    notices = []
    newest = since
    for path in sorted(settings.logs_dir.glob("*.log"), key=lambda p: p.stat().st_mtime_ns):
        mtime = path.stat().st_mtime_ns
        if mtime <= since:
            continue
        newest = max(newest, mtime)
        reason = exit_reason(path.stem)
        if reason is not None:
            notices.append((path.stem, reason))
    if newest > since:
        marker.touch()
        os.utime(marker, ns=(newest, newest))
    return notices
