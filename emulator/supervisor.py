"""The per-enclave supervisor: ``python -m emulator.supervisor --enclave-id ID --ready-fd N``.

nitro-cli runs one detached "enclave process" per enclave (``src/enclave_proc``); this is
ours. ``run-enclave`` writes the enclave's record, starts this module and reads lines from
the pipe ``--ready-fd``:

1. ``PID <pid> <start-ticks>``: the supervisor has detached (double fork, new session);
   its pid is the enclave's ProcessID.
2. ``READY`` once the container runs and the enclave's NSM answers, or
   ``ERROR <code> <message>`` after everything it made is removed again.

The supervisor serves the enclave's fake NSM at ``run/<cid>/nsm.sock``, owns the
container, and waits. When the container exits (or on SIGTERM, which is what
``terminate-enclave`` sends) it writes ``logs/<id>.log`` (why, and the last output) and
removes the container, the runtime dir and the record. A forked watchdog holds a pipe to
the supervisor: if the supervisor is SIGKILLed, the pipe hits EOF and the watchdog removes
the container and the dirs within a second or two.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from emulator.enclave_state import (
    STATE_RUNNING,
    STATE_TERMINATING,
    EnclaveInfo,
    home_lock,
    process_start_ticks,
    read_record,
    write_record,
)
from emulator.reaper import cleanup_enclave, remove_containers, remove_dirs, write_exit_log
from emulator.settings import Settings

#: What the supervisor tells its watchdog before it exits normally ("done, no cleanup").
_WATCHDOG_DONE = b"D"
_LOG_TAIL_LINES = 200


class BootFailure(Exception):
    """The enclave could not be started; carries nitro-cli's code."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _write_line(fd: int | None, line: str) -> None:
    if fd is None:
        return
    try:
        os.write(fd, (line.replace("\n", " ") + "\n").encode())
    except OSError:
        pass  # run-enclave went away; the enclave runs on regardless


def _mkdir_shared(path: Path) -> None:
    """A runtime dir: 0777 whatever the umask (docs/architecture.md "State directory")."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o777)


def _watchdog(fd: int, settings: Settings, enclave: EnclaveInfo, supervisor_pid: int) -> None:
    """Wait for the supervisor's pipe to close; clean up unless it said it was done."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    received = b""
    while True:
        try:
            chunk = os.read(fd, 64)
        except InterruptedError:
            continue
        if not chunk:
            break
        received += chunk
    if _WATCHDOG_DONE in received:
        return
    cleanup_enclave(
        settings, enclave.enclave_id, enclave=enclave,
        reason=f"its supervisor (pid {supervisor_pid}) was killed; the watchdog removed the enclave",
    )


class Supervisor:
    """Owns one enclave: its NSM server, its container, its cleanup."""

    def __init__(self, settings: Settings, enclave: EnclaveInfo, watchdog_fd: int) -> None:
        self.settings = settings
        self.enclave = enclave
        self.watchdog_fd = watchdog_fd
        self.run_dir = settings.run_dir(enclave.cid)
        self.pid = os.getpid()
        self.wake = threading.Event()
        self.terminate_requested = False
        self.exit_status: dict[str, object] | None = None
        self._server = None  # fake_nsm.server.NsmServer
        self._client = None  # docker.DockerClient
        self._container = None

    # --- start -------------------------------------------------------------------------------

    def start(self) -> None:
        """Make the runtime dir, serve the NSM, create and start the container."""
        _mkdir_shared(self.settings.run_root)
        _mkdir_shared(self.settings.parent_dir)
        _mkdir_shared(self.run_dir)
        _mkdir_shared(self.run_dir / "vsock")
        _mkdir_shared(self.run_dir / "parent")  # mount point of run/parent (read-only)
        self._start_nsm()
        self._start_container()
        self._check_nsm()

    def _start_nsm(self) -> None:
        from ca import TestCA
        from fake_nsm.device import NsmDevice
        from fake_nsm.document_signer import DocumentSigner
        from fake_nsm.server import NsmServer

        measurements = {
            int(key[3:]): value
            for key, value in self.enclave.measurements.items()
            if key.startswith("PCR")
        }
        ca = TestCA.load_or_create(self.settings.ca_dir)
        signer = DocumentSigner(ca, self.enclave.enclave_id)
        device = NsmDevice(
            module_id=self.enclave.enclave_id,
            signer=signer,
            measurements=measurements,
            debug_mode=self.enclave.debug_mode,
            instance_id=self.enclave.instance_id,
        )
        self._server = NsmServer(self.run_dir / "nsm.sock", device).start()

    def _start_container(self) -> None:
        import docker.errors

        from emulator.docker_client import docker_client
        from emulator.enclave_container import ContainerContext, collect_extras, container_settings

        self._client = docker_client()
        extras = collect_extras(ContainerContext(self.settings, self.enclave, self.run_dir))
        kwargs = container_settings(
            self.settings, self.enclave, supervisor_pid=self.pid, run_dir=self.run_dir, extras=extras
        )
        try:
            self._container = self._client.containers.create(**kwargs)
            self._container.start()
        except docker.errors.ImageNotFound as error:
            raise BootFailure(36, f"the enclave image {self.enclave.image_tag} is gone from the engine "
                                  f"({error.explanation}); run the enclave again") from error
        except docker.errors.APIError as error:
            raise BootFailure(36, f"Docker could not start the enclave's container: "
                                  f"{error.explanation or error}") from error

    def _check_nsm(self) -> None:
        from fake_nsm.client import NsmClient, SocketTransport

        with NsmClient(SocketTransport(self.run_dir / "nsm.sock", timeout=5.0)) as client:
            description = client.describe_nsm()
        if description.module_id != self.enclave.enclave_id:
            raise BootFailure(36, f"the enclave's NSM answered for {description.module_id!r}")

    # --- run ---------------------------------------------------------------------------------

    def mark_running(self) -> None:
        container_id = self._container.id if self._container is not None else None
        with home_lock(self.settings):
            current = read_record(self.settings, self.enclave.enclave_id) or self.enclave
            self.enclave = current.evolve(state=STATE_RUNNING, container_id=container_id)
            write_record(self.settings, self.enclave)

    def _wait_for_exit(self) -> None:
        """Thread: block on the container's exit (a client of its own; reads time out)."""
        import docker
        import requests

        client = docker.from_env(timeout=3600)
        try:
            while True:
                try:
                    client.api.wait(self._container.id)
                    break
                except requests.exceptions.ReadTimeout:
                    continue
                except docker.errors.NotFound:
                    break
                except (docker.errors.DockerException, requests.exceptions.RequestException):
                    time.sleep(0.5)
        finally:
            client.close()
            self.wake.set()

    def on_sigterm(self, signum: int, frame: object) -> None:
        self.terminate_requested = True
        self.wake.set()

    def wait(self) -> None:
        """Until the container exits or terminate-enclave asks (SIGTERM)."""
        waiter = threading.Thread(target=self._wait_for_exit, name="container-wait", daemon=True)
        waiter.start()
        while not self.wake.wait(1.0):
            pass
        if self.terminate_requested:
            with home_lock(self.settings):
                current = read_record(self.settings, self.enclave.enclave_id)
                if current is not None:
                    write_record(self.settings, current.evolve(state=STATE_TERMINATING))

    # --- end ---------------------------------------------------------------------------------

    def _exit_reason(self) -> tuple[str, str]:
        """Why the container ended, and its last output (read before it is removed)."""
        import docker.errors

        if self._container is None:
            return "it never started", ""
        try:
            if self.terminate_requested:
                self._container.kill()
        except docker.errors.APIError:
            pass  # already stopped
        output = ""
        try:
            self._container.wait(timeout=10)
            self._container.reload()
            state = self._container.attrs.get("State", {})
            raw = self._container.logs(tail=_LOG_TAIL_LINES)
            output = raw.decode("utf-8", "replace")
        except Exception as error:  # noqa: BLE001 - the reason must be written whatever happens
            return f"unknown: the container could not be inspected ({error})", output
        code = state.get("ExitCode")
        if self.terminate_requested:
            return "terminated by terminate-enclave", output
        if state.get("OOMKilled"):
            return (f"out of memory (OOM): the enclave used more than its {self.enclave.memory_mib} MiB "
                    f"(--memory) and was killed (exit status {code})"), output
        if code == 137:
            return f"killed (SIGKILL, exit status {code})", output
        return f"its program exited with status {code}", output

    def finish(self, reason: str | None = None) -> None:
        """Record why the enclave ended and remove everything it had."""
        output = ""
        if reason is None:
            reason, output = self._exit_reason()
        write_exit_log(self.settings, self.enclave, self.enclave.enclave_id, reason, output)
        if self._server is not None:
            self._server.stop()
        if self._client is not None:  # no client yet: no container was made
            remove_containers(self._client, self.settings, self.enclave.enclave_id)
        remove_dirs(self.settings, self.enclave.enclave_id, self.enclave.cid)
        if self._client is not None:
            self._client.close()
        os.write(self.watchdog_fd, _WATCHDOG_DONE)
        os.close(self.watchdog_fd)


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m emulator.supervisor")
    parser.add_argument("--enclave-id", required=True)
    parser.add_argument("--ready-fd", type=int, required=True)
    return parser.parse_args(argv)


def _detach() -> None:
    """Double fork, as nitro-cli's enclave process does: reparented to init, own session."""
    if os.fork() > 0:
        os._exit(0)
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    ready_fd: int | None = args.ready_fd
    settings = Settings.from_env()
    enclave = read_record(settings, args.enclave_id)
    if enclave is None:
        _write_line(ready_fd, f"ERROR 36 no record of enclave {args.enclave_id} in {settings.home}")
        return 1
    _detach()
    pid = os.getpid()
    _write_line(ready_fd, f"PID {pid} {process_start_ticks(pid)}")
    read_end, write_end = os.pipe()
    if os.fork() == 0:  # the watchdog
        os.close(write_end)
        if ready_fd is not None:
            os.close(ready_fd)
        try:
            _watchdog(read_end, settings, enclave, pid)
        finally:
            os._exit(0)
    os.close(read_end)
    supervisor = Supervisor(settings, enclave, write_end)
    signal.signal(signal.SIGTERM, supervisor.on_sigterm)
    signal.signal(signal.SIGINT, supervisor.on_sigterm)
    try:
        supervisor.start()
        supervisor.mark_running()
    except BaseException as error:  # noqa: BLE001 - report, clean up, exit
        code = error.code if isinstance(error, BootFailure) else 36
        message = error.message if isinstance(error, BootFailure) else f"{type(error).__name__}: {error}"
        print(f"enclave {enclave.enclave_id} failed to start: {message}", file=sys.stderr, flush=True)
        supervisor.terminate_requested = True
        supervisor.finish(reason=f"it failed to start: {message}")
        _write_line(ready_fd, f"ERROR {code} {message}")
        return 1
    _write_line(ready_fd, "READY")
    if ready_fd is not None:
        os.close(ready_fd)
    supervisor.wait()
    supervisor.finish()
    return 0


if __name__ == "__main__":
    sys.exit(main())
