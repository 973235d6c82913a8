"""Run, describe, terminate enclaves: the Python API under ``nitro-emu run-enclave`` & co.

::

    from emulator.enclave.runtime import run_enclave, terminate_enclave

    info = run_enclave("app.eif", memory_mib=512, cpu_count=2, debug_mode=True)
    print(info.to_nitro_cli_json(kind="run"))
    terminate_enclave(info.enclave_id)

    with running_enclave("app.eif", memory_mib=512, cpu_count=2) as info:
        ...                                   # terminated on exit, whatever happens

Every call first reaps what killed processes left (:mod:`emulator.enclave.reaper`). Failures raise
:class:`~emulator.errors.NitroCliError` with nitro-cli's code (issue 4, "Bad input").
Lifecycle and the supervisor: :mod:`emulator.enclave.supervisor`; the container:
:mod:`emulator.enclave.container`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from emulator.eif.cache import EifSummary, summarize_eif
from emulator.enclave.resources import (
    allocate_cid,
    allocate_cpus,
    check_memory,
    host_cpuset,
    load_instance_id,
    new_enclave_id,
)
from emulator.enclave.resources import enclave_name as unique_name
from emulator.enclave.state import (
    FLAGS_DEBUG,
    FLAGS_NONE,
    STATE_EMPTY,
    SUPERVISOR_LOG,
    EnclaveInfo,
    home_lock,
    list_records,
    read_record,
    supervisor_alive,
    write_record,
)
from emulator.errors import EmulatorError, NitroCliError
from emulator.nitro_cli_errors import nitro_cli_error
from emulator.enclave.clock import EnclaveClock, check_offset
from emulator.enclave.engine import enclave_engine
from emulator.enclave.reaper import cleanup_enclave, log_path, reap
from emulator.settings import Settings, get_settings

# Console streaming and exit reasons live next door; re-exported as part of this API.
from emulator.enclave.console import exit_reason, pop_exit_notices, stream_console  # noqa: E402

if TYPE_CHECKING:
    import docker

__all__ = [
    "EnclaveInfo",
    "describe_enclaves",
    "enclave_logs",
    "exit_reason",
    "find_enclave",
    "pop_exit_notices",
    "reap_now",
    "run_enclave",
    "running_enclave",
    "stream_console",
    "terminate_all",
    "terminate_enclave",
]

#: nitro-cli waits 90 s per started 6 GiB of EIF for the boot signal (resource_manager.rs).
BOOT_TIMEOUT_S = 90.0
#: How long terminate waits for the supervisor's graceful exit before SIGKILL.
TERMINATE_TIMEOUT_S = 15.0
_SPAWN_TIMEOUT_S = 20.0
#: Set in an engine-transport enclave whose launcher waits for its NSM socket (start early).
ENV_WAIT_NSM = "NITRO_EMU_WAIT_NSM"


class _Lines:
    """Lines from the supervisor's readiness pipe, with a deadline per line."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buffer = b""
        self.eof = False

    def readline(self, timeout: float) -> str | None:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([self.fd], [], [], left)
            if not ready:
                return None
            chunk = os.read(self.fd, 4096)
            if not chunk:
                self.eof = True
                return None  # EOF: the supervisor died
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.decode("utf-8", "replace")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


def _tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])


def _wait_gone(info: EnclaveInfo, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while supervisor_alive(info):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _spawn_supervisor(settings: Settings, info: EnclaveInfo) -> tuple[_Lines, int, int, int]:
    """Start the detached supervisor (E05 on failure).

    A fork of this process by default; ``NITRO_EMU_SUPERVISOR_EXEC=1`` runs
    ``python -m emulator.enclave.supervisor`` instead (slower: a fresh interpreter). Returns its
    status pipe, the write end of its control pipe, its pid and start ticks.
    """
    log = settings.enclave_dir(info.enclave_id) / SUPERVISOR_LOG
    try:
        if os.environ.get("NITRO_EMU_SUPERVISOR_EXEC") == "1":
            read_fd, control_write = _exec_supervisor(settings, info, log)
        else:
            from emulator.enclave.supervisor import spawn_forked

            read_fd, control_write = spawn_forked(settings, info, log)
    except OSError as error:
        raise nitro_cli_error("ProcessSpawnFailure", detail=f"({error}).") from error
    lines = _Lines(read_fd)
    deadline = time.monotonic() + _SPAWN_TIMEOUT_S
    child: int | None = None
    line = lines.readline(_SPAWN_TIMEOUT_S)
    if line is not None and line.startswith("CHILD "):
        child = int(line.split()[1]) if line.split()[1].isdecimal() else None
        line = lines.readline(max(0.0, deadline - time.monotonic()))
    parts = (line or "").split()
    if len(parts) == 3 and parts[0] == "PID" and parts[1].isdecimal() and parts[2].isdecimal():
        return lines, control_write, int(parts[1]), int(parts[2])
    lines.close()
    os.close(control_write)
    if child is not None:  # it never said it serves: leave no stray process behind
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(child, signal.SIGKILL)
    why = line if line and line.startswith("ERROR") else _tail(log) or "no answer"
    raise nitro_cli_error("ProcessSpawnFailure", detail=f"The enclave supervisor did not start: {why}")


def _exec_supervisor(settings: Settings, info: EnclaveInfo, log: Path) -> tuple[int, int]:
    read_fd, write_fd = os.pipe()
    control_read, control_write = os.pipe()
    env = dict(os.environ, NITRO_EMU_HOME=str(settings.home))
    try:
        with open(log, "ab") as log_file:
            launcher = subprocess.Popen(
                [sys.executable, "-m", "emulator.enclave.supervisor", "--enclave-id", info.enclave_id,
                 "--ready-fd", str(write_fd), "--control-fd", str(control_read)],
                stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file,
                pass_fds=(write_fd, control_read), env=env, start_new_session=True,
            )
    except OSError:
        os.close(read_fd)
        os.close(control_write)
        raise
    finally:
        os.close(write_fd)
        os.close(control_read)
    launcher.wait()
    return read_fd, control_write


def _create_container(settings: Settings, info: EnclaveInfo, client: docker.DockerClient) -> Any:
    """Create (not start) the enclave's container, labelled with its supervisor (E36)."""
    import docker.errors

    from emulator.enclave.container import ContainerContext, collect_extras, container_settings
    from emulator.enclave.nitro_cli_init import init_extras
    from emulator.enclave.supervisor import make_runtime_dirs
    from emulator.shim.build import container_extras as shim_extras
    from emulator.eif.nitro_cli_layout import LAYOUT_NITRO_CLI
    from emulator.shim.intercept import container_extras as intercept_extras
    from emulator.transport.selection import transport_of

    run_dir = make_runtime_dirs(settings, info.cid)
    # the interceptor last: its launcher, if any, runs first (nitro-cli EIFs: init serves it)
    extras = collect_extras(ContainerContext(settings, info, run_dir), (shim_extras, init_extras, intercept_extras))
    transport = transport_of(info)
    if transport.name == "engine" and extras.entrypoint_prefix and info.extra.get("eif_layout") != LAYOUT_NITRO_CLI:
        # The launcher holds the command until the companion's NSM socket is in the volume,
        # so the enclave can start while its companion does (``early`` in _boot).
        extras = dataclasses.replace(
            extras, environment={**extras.environment, ENV_WAIT_NSM: f"{_SPAWN_TIMEOUT_S:.0f}"})
    try:
        with _as_boot_failure():  # the transport's own failures are E36 too
            image_config = None
            if extras.entrypoint_prefix:
                image_config = client.images.get(info.image_tag).attrs.get("Config") or {}
            kwargs = container_settings(settings, info, supervisor_pid=info.process_id, run_dir=run_dir,
                                        extras=extras, image_config=image_config, transport=transport)
            kwargs.pop("detach", None)
            container = client.containers.create(**kwargs)
            try:
                transport.populate(container, extras.mounts)
                if extras.entrypoint_prefix and image_config is not None:
                    _check_command(client, str(container.id), kwargs, len(extras.entrypoint_prefix), image_config)
            except BaseException:
                container.remove(force=True)
                raise
            return container
    except docker.errors.ImageNotFound as error:
        raise nitro_cli_error(
            "EnclaveBootFailure",
            detail=f"The enclave image {info.image_tag} is gone from the engine; run the enclave again.",
        ) from error
    except docker.errors.APIError as error:
        raise nitro_cli_error(
            "EnclaveBootFailure", detail=f"Docker could not create the enclave: {error.explanation or error}"
        ) from error


@contextlib.contextmanager
def _as_boot_failure() -> Iterator[None]:
    """nitro-emu's own failures on the way to a boot (the transport's) as nitro-cli's E36."""
    try:
        yield
    except NitroCliError:
        raise
    except EmulatorError as error:
        raise nitro_cli_error("EnclaveBootFailure", detail=str(error)) from error


def _prepare_transport(settings: Settings, info: EnclaveInfo, client: docker.DockerClient) -> None:
    """What the enclave and its supervisor will both refer to (the engine transport's volume)."""
    from emulator.enclave.container import labels
    from emulator.transport.selection import transport_of

    with _as_boot_failure():
        transport_of(info).prepare(client, settings, info, labels(settings, info, supervisor_pid=0))


def _check_command(client: docker.DockerClient, container_id: str, kwargs: dict[str, Any], prefix: int,
                   image_config: dict[str, Any]) -> None:
    """Docker's own check that the command exists (``docker start``: "executable file not
    found") sees only a launcher in front of it (the syscall interceptor): repeat it on the
    created container, so such an enclave still fails to boot (E36) instead of exiting."""
    import docker.errors

    argv = [*kwargs["entrypoint"][prefix:], *kwargs.get("command", [])]
    name = argv[0]
    env = dict(item.partition("=")[::2] for item in image_config.get("Env") or [])
    if "/" in name:
        candidates = [name if name.startswith("/") else f"{image_config.get('WorkingDir') or '/'}/{name}"]
    else:
        path = env.get("PATH") or "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        candidates = [f"{directory or '.'}/{name}" for directory in path.split(":")]
    for candidate in candidates:
        try:
            stream, _ = client.api.get_archive(container_id, candidate)
        except docker.errors.NotFound:
            continue
        close = getattr(stream, "close", None)
        if close is not None:
            close()
        return
    raise nitro_cli_error(
        "EnclaveBootFailure",
        detail=f'Docker could not start the enclave: exec: "{name}": executable file not found in the image',
    )


def _start(container: Any) -> None:
    import docker.errors

    try:
        container.start()
    except docker.errors.APIError as error:
        raise nitro_cli_error(
            "EnclaveBootFailure", detail=f"Docker could not start the enclave: {error.explanation or error}"
        ) from error


def _boot(
    settings: Settings, info: EnclaveInfo, client: docker.DockerClient, lines: _Lines, control: int,
    boot_timeout: float,
) -> str | None:
    """Create the container while the supervisor starts the NSM, then start it.

    Returns the supervisor's last line (``READY``, ``ERROR ...``) or None if it went silent.
    """
    container = _create_container(settings, info, client)
    # An engine-transport enclave whose launcher waits for its NSM starts at once, while its
    # supervisor starts the companion; any other waits for the supervisor's NSM.
    environment = (container.attrs.get("Config") or {}).get("Env") or []
    early = any(item.startswith(ENV_WAIT_NSM + "=") for item in environment)
    if early:
        _start(container)
    line = lines.readline(boot_timeout)
    if line != "NSM":
        return line
    if not early:
        _start(container)
    os.write(control, f"STARTED {container.id}\n".encode())
    return lines.readline(boot_timeout)


def run_enclave(
    eif_path: str | os.PathLike[str],
    *,
    memory_mib: int,
    cpu_count: int | None = None,
    cpu_ids: Sequence[int] | None = None,
    enclave_cid: int | None = None,
    debug_mode: bool = False,
    enclave_name: str | None = None,
    instance_id: str | None = None,
    client: docker.DockerClient | None = None,
    boot_timeout: float = BOOT_TIMEOUT_S,
    on_started: Callable[[EnclaveInfo], None] | None = None,
    clock_offset: float = 0.0,
) -> EnclaveInfo:
    """Start an enclave from an EIF, as ``nitro-cli run-enclave`` does.

    Checks (nitro-cli's codes): the EIF opens (E19) and parses with a good CRC (E35);
    memory > 0 and >= 4x the EIF size (E26); CPUs from the pool (E20/E21/E22); the CID is
    not reserved (E03) nor in use (E29). The name defaults to the EIF's stem and is made
    unique (``name_1``...). Returns once the container runs and its NSM answers.

    Args:
        on_started: called with the record as soon as the enclave's CID is known
            (before the boot finishes), e.g. to print nitro-cli's "Started enclave" line.
        clock_offset: seconds the enclave's clock (its NSM's documents and certificates)
            is ahead of the host's; negative is behind (:mod:`emulator.enclave.clock`).
    """
    offset = check_offset(clock_offset)
    settings = get_settings()
    client = enclave_engine(client)
    reap(settings, client)
    summary: EifSummary = summarize_eif(settings, client, Path(eif_path))
    check_memory(memory_mib, summary.size)
    from emulator.transport.selection import choose

    with _as_boot_failure():  # NITRO_EMU_TRANSPORT: a bad choice is E36
        transport = choose(settings, client)
    instance = load_instance_id(settings, instance_id)
    with home_lock(settings):
        records = list_records(settings)
        cpus = allocate_cpus(cpu_count, cpu_ids, [cpu for r in records for cpu in r.cpu_ids])
        cid = allocate_cid(enclave_cid, {r.cid: r.enclave_id for r in records})
        name = unique_name(enclave_name, summary.path, [r.name for r in records])
        enclave_id, started = new_enclave_id(instance)
        info = EnclaveInfo(
            enclave_id=enclave_id, name=name, cid=cid, process_id=0, cpu_ids=cpus,
            memory_mib=memory_mib, state=STATE_EMPTY,
            flags=FLAGS_DEBUG if debug_mode else FLAGS_NONE,
            measurements=summary.measurements, eif_path=str(summary.path),
            instance_id=instance, started_at_ms=started, image_name=summary.image_name,
            image_version=summary.image_version, metadata=summary.metadata,
            image_tag=summary.image_tag, host_cpus=host_cpuset(cpus),
            extra={"eif_layout": summary.layout, "transport": transport.name,
                   "transport_reason": transport.reason},
        )
        write_record(settings, info)
        if offset:
            EnclaveClock(settings, enclave_id).set_offset(offset)
        try:
            _prepare_transport(settings, info, client)
            lines, control, pid, ticks = _spawn_supervisor(settings, info)
        except BaseException:
            cleanup_enclave(settings, enclave_id, enclave=info, client=client, reason="its supervisor did not start")
            raise
        info = info.evolve(process_id=pid, process_start=ticks)
        write_record(settings, info)
    if on_started is not None:
        on_started(info)
    failure: BaseException | None = None
    line: str | None = None
    try:
        line = _boot(settings, info, client, lines, control, boot_timeout)
    except BaseException as error:  # noqa: BLE001 - cleaned up below, then re-raised
        failure = error
    finally:
        os.close(control)  # the supervisor aborts if it has not been told STARTED
    if failure is None and line == "READY":
        lines.close()
        return read_record(settings, enclave_id) or info
    # Boot failed: the supervisor removes what it and we made; make sure it is gone.
    if failure is not None:
        lines.readline(10.0)  # the supervisor's own ERROR line, once it has cleaned up
    lines.close()
    if not _wait_gone(info, 10.0):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        _wait_gone(info, 5.0)
    supervisor_said = _tail(settings.enclave_dir(enclave_id) / SUPERVISOR_LOG, 5)  # gone after cleanup
    cleanup_enclave(settings, enclave_id, enclave=info, client=client, reason="it failed to boot")
    if failure is not None:
        raise failure
    if line and line.startswith("ERROR "):
        _, code, message = line.split(" ", 2)
        raise nitro_cli_error(int(code), detail=message)
    if line is not None:  # neither READY nor ERROR: name what came instead
        why = f"The enclave's supervisor said {line!r} instead of READY"
    elif lines.eof:
        why = f"The enclave's supervisor (pid {pid}) ended without a word"
    else:
        why = f"No ready signal within {boot_timeout:.0f} s"
    said = supervisor_said or _tail(log_path(settings, enclave_id), 3) or "nothing in its log"
    raise nitro_cli_error("EnclaveBootFailure", detail=f"{why}: {said}")


@contextlib.contextmanager
def running_enclave(eif_path: str | os.PathLike[str], **options: Any) -> Iterator[EnclaveInfo]:
    """:func:`run_enclave` as a context manager: the enclave is terminated on exit."""
    info = run_enclave(eif_path, **options)
    try:
        yield info
    finally:
        with contextlib.suppress(NitroCliError):
            terminate_enclave(info.enclave_id)


def describe_enclaves(*, client: docker.DockerClient | None = None) -> list[EnclaveInfo]:
    """The enclaves of this home that have booted (RUNNING or TERMINATING), oldest first."""
    settings = get_settings()
    reap(settings, _client_or_none(client))
    # An enclave whose exit log is written has ended, though its supervisor may still be
    # removing its containers: nitro-cli lists it no more.
    return [r for r in list_records(settings)
            if r.state != STATE_EMPTY and supervisor_alive(r) and not log_path(settings, r.enclave_id).exists()]


def _client_or_none(client: docker.DockerClient | None) -> docker.DockerClient | None:
    if client is not None:
        return client
    from emulator.engine.client import EngineUnavailableError, docker_client

    try:
        return docker_client()
    except EngineUnavailableError:
        return None  # reaping records and dirs still works; containers wait for the engine


def find_enclave(*, enclave_id: str | None = None, name: str | None = None) -> EnclaveInfo:
    """The running enclave with this id or name (E11 / E58 when there is none)."""
    settings = get_settings()
    records = [r for r in list_records(settings) if supervisor_alive(r)]
    if name is not None:
        matches = [r for r in records if r.name == name]
        if len(matches) != 1:
            problem = "No enclave matched the given name." if not matches else "Conflicting enclave names have been found."
            raise nitro_cli_error("EnclaveNamingError", detail=f"{problem} ({name!r}; see describe-enclaves)")
        return matches[0]
    for record in records:
        if record.enclave_id == enclave_id:
            return record
    ended = exit_reason(enclave_id) if enclave_id else None
    if ended is not None and enclave_id:  # ``and``: only narrows the type (ended implies an id)
        raise nitro_cli_error(
            "SocketError",
            detail=f"Enclave {enclave_id} has ended: {ended} (its last output is in "
            f"{log_path(settings, enclave_id)}).",
        )
    raise nitro_cli_error(
        "SocketError",
        detail=f"No running enclave has the id {enclave_id!r}; list them with describe-enclaves.",
    )


def terminate_enclave(
    enclave_id: str | None = None, *, name: str | None = None, timeout: float = TERMINATE_TIMEOUT_S
) -> EnclaveInfo:
    """Terminate one enclave (SIGTERM to its supervisor, SIGKILL after ``timeout``)."""
    settings = get_settings()
    reap(settings, _client_or_none(None))
    info = find_enclave(enclave_id=enclave_id, name=name)
    with contextlib.suppress(ProcessLookupError):
        os.kill(info.process_id, signal.SIGTERM)
    if not _wait_gone(info, timeout):
        with contextlib.suppress(ProcessLookupError):
            os.kill(info.process_id, signal.SIGKILL)
        _wait_gone(info, 5.0)
        cleanup_enclave(settings, info.enclave_id, enclave=info,
                        reason=f"terminate-enclave killed its supervisor after {timeout:.0f} s")
    return info


def terminate_all() -> list[EnclaveInfo]:
    """Terminate every running enclave of this home."""
    return [terminate_enclave(info.enclave_id) for info in describe_enclaves()]


def enclave_logs(enclave_id: str, *, client: docker.DockerClient | None = None) -> str:
    """What an enclave printed: so far while it runs; after it ended, why and its last output."""
    settings = get_settings()
    record = read_record(settings, enclave_id)
    if record is not None and record.container_id and supervisor_alive(record):
        import docker.errors

        try:
            raw = enclave_engine(client).containers.get(record.container_id).logs()
            return str(raw.decode("utf-8", "replace"))
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as error:  # 409: dead or being removed; its log is written
            if error.status_code != 409:
                raise
    path = log_path(settings, enclave_id)
    if path.exists():
        return path.read_text(errors="replace")
    raise nitro_cli_error(
        "SocketError", detail=f"No enclave with the id {enclave_id!r} ran in {settings.home}."
    )


def reap_now() -> list[str]:
    """Reap this home now (what every command does first)."""
    return reap(get_settings(), _client_or_none(None))
