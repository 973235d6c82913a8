"""The per-enclave supervisor: ``python -m emulator.enclave.supervisor --enclave-id ID ...``.

nitro-cli runs one detached "enclave process" per enclave (``src/enclave_proc``); this is
ours. ``run-enclave`` writes the enclave's record, starts this module, and the two talk over
two pipes. On ``--ready-fd`` the supervisor writes lines:

0. ``CHILD <pid>``, from the intermediate process of the double fork: who to kill should the
   supervisor never say more (run-enclave gives up on it after a while; nothing is left).
1. ``PID <pid> <start-ticks>``: it has detached (double fork, new session); its pid is the
   enclave's ProcessID.
2. ``NSM``: the enclave's fake NSM serves at ``run/<cid>/nsm.sock``.
3. ``READY`` once the container runs and the NSM answers, or ``ERROR <code> <message>``.

Meanwhile run-enclave creates the container (it has the Docker client at hand, so this
overlaps the supervisor's start-up) and, after ``NSM``, starts it and writes
``STARTED <container-id>`` on ``--control-fd``. If that pipe closes first, run-enclave gave
up: the supervisor removes everything and exits.

From then on the supervisor owns the container and waits. When the container exits (or on
SIGTERM, which is what ``terminate-enclave`` sends) it writes ``logs/<id>.log`` (why, and the
last output) and removes the container, the runtime dir and the record. A forked watchdog
holds a pipe to the supervisor: if the supervisor is SIGKILLed, the pipe hits EOF and the
watchdog removes the container and the dirs within a second or two.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from emulator.enclave.state import (
    STATE_RUNNING,
    STATE_TERMINATING,
    EnclaveInfo,
    home_lock,
    process_start_ticks,
    read_record,
    write_record,
)
from emulator.enclave.reaper import cleanup_enclave, remove_containers, remove_dirs, write_exit_log
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


def make_runtime_dirs(settings: Settings, cid: int) -> Path:
    """``run/<cid>`` with ``vsock/`` and the ``parent/`` mount point, all 0777."""
    run_dir = settings.run_dir(cid)
    for path in (settings.run_root, settings.parent_dir, run_dir, run_dir / "vsock", run_dir / "parent"):
        _mkdir_shared(path)
    return run_dir


def _read_control(fd: int, timeout: float) -> str | None:
    """One line from run-enclave's control pipe, or None on EOF / timeout."""
    import select

    data = b""
    deadline = time.monotonic() + timeout
    while b"\n" not in data:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            return None
        chunk = os.read(fd, 256)
        if not chunk:
            return None
        data += chunk
    return data.split(b"\n", 1)[0].decode()


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
        self._server: Any = None  # fake_nsm.server.NsmServer
        self._client: Any = None  # docker.DockerClient
        self._container: Any = None
        self._link: Any = None  # emulator.transport.base.Link
        self.lost_reason: str | None = None
        self.container_id: str | None = None

    # --- start -------------------------------------------------------------------------------

    def start_nsm(self) -> None:
        """Make the runtime dir, serve the enclave's NSM, and link it into the engine."""
        make_runtime_dirs(self.settings, self.enclave.cid)
        self._start_nsm()
        transport = self._transport()
        if transport.name != "host":
            from emulator.enclave.container import labels
            from emulator.engine.client import docker_client

            self._client = docker_client()
            self._link = transport.link(
                self._client, self.settings, self.enclave, labels(self.settings, self.enclave, self.pid),
                on_lost=self._lost, log=lambda line: print(line, file=sys.stderr, flush=True),
            )

    def _transport(self) -> Any:
        from emulator.transport.selection import transport_of

        return transport_of(self.enclave)

    def _lost(self, reason: str) -> None:
        """The link to the engine broke: the enclave cannot reach its NSM any more; end it."""
        self.lost_reason = reason
        self.wake.set()

    def adopt_container(self, container_id: str) -> None:
        """Take over the container run-enclave started; check that the NSM answers.

        No Docker call here: the engine is busy starting the container, and the enclave's
        first request should not wait behind ours. :meth:`wait` connects afterwards.
        """
        self.container_id = container_id
        self._check_nsm()

    def _start_nsm(self) -> None:
        from emulator.enclave.clock import EnclaveClock
        from emulator.enclave.faults import nsm_fault_plan
        from emulator.enclave.resources import open_home_ca
        from fake_nsm.device import NsmDevice
        from fake_nsm.document_signer import DocumentSigner
        from fake_nsm.server import NsmServer

        measurements = {
            int(key[3:]): value
            for key, value in self.enclave.measurements.items()
            if key.startswith("PCR")
        }
        ca = open_home_ca(self.settings)
        clock = EnclaveClock(self.settings, self.enclave.enclave_id)  # enclave time, changeable live
        signer = DocumentSigner(ca, self.enclave.enclave_id, clock=clock.now)
        device = NsmDevice(
            module_id=self.enclave.enclave_id,
            signer=signer,
            measurements=measurements,
            debug_mode=self.enclave.debug_mode,
            instance_id=self.enclave.instance_id,
        )
        faults = nsm_fault_plan(self.settings, self.enclave.enclave_id)
        self._server = NsmServer(self.run_dir / "nsm.sock", device, faults=faults).start()

    def _check_nsm(self) -> None:
        from fake_nsm.client import NsmClient, SocketTransport

        with NsmClient(SocketTransport(self.run_dir / "nsm.sock", timeout=5.0)) as client:
            description = client.describe_nsm()
        if description.module_id != self.enclave.enclave_id:
            raise BootFailure(36, f"the enclave's NSM answered for {description.module_id!r}")

    # --- run ---------------------------------------------------------------------------------

    def mark_running(self) -> None:
        container_id = self.container_id
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
        import docker.errors

        from emulator.engine.client import docker_client

        if self._client is None:
            self._client = docker_client()
        try:
            self._container = self._client.containers.get(self.container_id)
        except docker.errors.NotFound:
            return  # removed behind our back: nothing to wait for
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
            if self.terminate_requested or self.lost_reason:
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
        if self.lost_reason:
            return f"nitro-emu stopped it: {self.lost_reason}", output
        if state.get("OOMKilled"):
            return (f"out of memory (OOM): the enclave used more than its {self.enclave.memory_mib} MiB "
                    f"(--memory) and was killed (exit status {code})"), output
        if code == 137:
            return f"killed (SIGKILL, exit status {code})", output
        return f"its program exited with status {code}", output

    def abort(self, reason: str) -> None:
        """Start-up failed: remove everything, including a container run-enclave made."""
        self._unlink()
        if self._server is not None:
            self._server.stop()
        cleanup_enclave(self.settings, self.enclave.enclave_id, enclave=self.enclave,
                        reason=reason, client=self._client)
        self._done()

    def _unlink(self) -> None:
        if self._link is not None:
            self._link.close()
            self._link = None

    def _done(self) -> None:
        if self._client is not None:
            self._client.close()
        os.write(self.watchdog_fd, _WATCHDOG_DONE)
        os.close(self.watchdog_fd)

    def finish(self, reason: str | None = None) -> None:
        """Record why the enclave ended and remove everything it had."""
        output = ""
        if reason is None:
            reason, output = self._exit_reason()
        write_exit_log(self.settings, self.enclave, self.enclave.enclave_id, reason, output)
        self._unlink()
        if self._server is not None:
            self._server.stop()
        if self._client is not None:  # no client yet: no container was made
            remove_containers(self._client, self.settings, self.enclave.enclave_id)
            self._transport().remove(self._client, self.settings, self.enclave.enclave_id)
        remove_dirs(self.settings, self.enclave.enclave_id, self.enclave.cid)
        self._done()


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m emulator.enclave.supervisor")
    parser.add_argument("--enclave-id", required=True)
    parser.add_argument("--ready-fd", type=int, required=True)
    parser.add_argument("--control-fd", type=int, required=True)
    parser.add_argument("--start-timeout", type=float, default=120.0)
    return parser.parse_args(argv)


def _fork_detached(ready_fd: int) -> None:
    """The second fork of a double fork: the parent names its child on the pipe and exits.

    The child waits for that exit before it goes on, so that ``CHILD`` is on the pipe before
    the child's ``PID``: run-enclave reads them in that order, and under a start storm the
    child used to win the race, its ``CHILD`` line then read as the boot's answer (E36).
    """
    gate_read, gate_write = os.pipe()
    child = os.fork()
    if child > 0:
        os.close(gate_read)
        _write_line(ready_fd, f"CHILD {child}")
        os._exit(0)  # closes gate_write: the child's read below returns
    os.close(gate_write)
    os.read(gate_read, 1)  # EOF once the parent has exited (nothing is ever written)
    os.close(gate_read)


def _detach(ready_fd: int) -> None:
    """Double fork, as nitro-cli's enclave process does: reparented to init, own session."""
    if os.fork() > 0:
        os._exit(0)
    os.setsid()
    _fork_detached(ready_fd)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m emulator.enclave.supervisor``: detach, then :func:`serve`."""
    args = _parse(argv)
    settings = Settings.from_env()
    enclave = read_record(settings, args.enclave_id)
    if enclave is None:
        _write_line(args.ready_fd, f"ERROR 36 no record of enclave {args.enclave_id} in {settings.home}")
        return 1
    _detach(args.ready_fd)
    return serve(settings, enclave, args.ready_fd, args.control_fd, args.start_timeout)


def _preload() -> None:
    """Import what the supervisor needs before forking, so the child starts at once."""
    import ca  # noqa: F401
    import fake_nsm.client  # noqa: F401
    import fake_nsm.device  # noqa: F401
    import fake_nsm.document_signer  # noqa: F401
    import fake_nsm.server  # noqa: F401
    import emulator.engine.client  # noqa: F401


def spawn_forked(settings: Settings, enclave: EnclaveInfo, log: Path) -> tuple[int, int]:
    """Start the supervisor as a detached fork of this process; returns (status, control) fds.

    Faster than ``python -m emulator.enclave.supervisor`` (no interpreter start-up, the modules are
    loaded already): the child double-forks and closes every inherited descriptor but its
    pipes, so it holds none of the caller's sockets or files.
    """
    import gc

    _preload()
    ready_read, ready_write = os.pipe()
    control_read, control_write = os.pipe()
    log_fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child, which never returns
        code = 1
        try:
            gc.freeze()  # the caller's objects are never finalized here (their fds are closed)
            os.setsid()
            _fork_detached(ready_write)
            os.chdir("/")  # hold no directory of the caller busy
            with contextlib.suppress(OSError), open("/proc/self/comm", "w") as comm:
                comm.write("nitro-emu-encl")  # ps/top name; the command line stays the caller's
            devnull = os.open(os.devnull, os.O_RDONLY)
            os.dup2(devnull, 0)
            os.dup2(log_fd, 1)
            os.dup2(log_fd, 2)
            keep = sorted({0, 1, 2, ready_write, control_read})
            for low, high in zip([-1] + keep, keep + [os.sysconf("SC_OPEN_MAX")]):
                if high > low + 1:  # closerange(n, n) would close everything from n
                    os.closerange(low + 1, high)
            for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD, signal.SIGALRM, signal.SIGPIPE):
                signal.signal(signum, signal.SIG_DFL)
            signal.signal(signal.SIGPIPE, signal.SIG_IGN)
            sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
            sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
            code = serve(settings, enclave, ready_write, control_read)
        except BaseException:  # noqa: BLE001 - the child must never return into the caller
            import traceback

            traceback.print_exc()
        finally:
            os._exit(code)
    os.close(ready_write)
    os.close(control_read)
    os.close(log_fd)
    os.waitpid(child, 0)
    return ready_read, control_write


def serve(settings: Settings, enclave: EnclaveInfo, ready_fd: int, control_fd: int,
          start_timeout: float = 120.0) -> int:
    """The detached supervisor's life: report, start the NSM, adopt the container, wait, clean up."""
    pid = os.getpid()
    _write_line(ready_fd, f"PID {pid} {process_start_ticks(pid)}")
    read_end, write_end = os.pipe()
    if os.fork() == 0:  # the watchdog
        os.close(write_end)
        os.close(ready_fd)
        os.close(control_fd)
        try:
            _watchdog(read_end, settings, enclave, pid)
        finally:
            os._exit(0)
    os.close(read_end)
    supervisor = Supervisor(settings, enclave, write_end)
    signal.signal(signal.SIGTERM, supervisor.on_sigterm)
    signal.signal(signal.SIGINT, supervisor.on_sigterm)
    try:
        supervisor.start_nsm()
        _write_line(ready_fd, "NSM")
        line = _read_control(control_fd, start_timeout)
        if line is None or not line.startswith("STARTED "):
            raise BootFailure(36, "run-enclave gave up before the container started")
        supervisor.adopt_container(line.split(" ", 1)[1])
        supervisor.mark_running()
    except BaseException as error:  # noqa: BLE001 - report, clean up, exit
        code = error.code if isinstance(error, BootFailure) else 36
        message = error.message if isinstance(error, BootFailure) else f"{type(error).__name__}: {error}"
        print(f"enclave {enclave.enclave_id} failed to start: {message}", file=sys.stderr, flush=True)
        supervisor.abort(f"it failed to start: {message}")
        _write_line(ready_fd, f"ERROR {code} {message}")
        return 1
    finally:
        os.close(control_fd)
    _write_line(ready_fd, "READY")
    os.close(ready_fd)
    supervisor.wait()
    supervisor.finish()
    return 0


if __name__ == "__main__":
    sys.exit(main())
