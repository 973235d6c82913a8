"""Enclaves for tests: the context managers behind the pytest plugin, usable without pytest.

    from emulator.testing.handles import enclave

    with enclave(dockerfile_dir="my-enclave/") as running:   # a dir with a Dockerfile
        sock = running.connect(5000)          # waits while the enclave boots
        document = running.attest(nonce=b"n") # verified against the test CA

:class:`EnclaveFactory` is the session-wide piece (one state dir, cached EIF builds, every
enclave it started terminated on ``close``); :func:`enclave` wraps one factory and one
enclave. ``emulator.testing.pytest_plugin`` exposes both as fixtures.

Errors (all :class:`EnclaveTestError`, an :class:`~emulator.errors.EmulatorError`):

EnclaveTestError
 +-- EnclaveSpecError     a bad marker/argument value (names the field and what is allowed)
 +-- EnclaveBuildError    the Dockerfile or the EIF build failed (shows the build's last lines)
 +-- EnclaveDiedError     the enclave stopped while in use (shows its last output)
"""

from __future__ import annotations

import contextlib
import re
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from emulator.testing.images import BuiltEnclave, EnclaveBuilder
from emulator.testing.spec import (
    EnclaveBuildError,
    EnclaveDiedError,
    EnclaveSpec,
    EnclaveSpecError,
    EnclaveTestError,
    home_env,
    indent,
    minimum_memory_mib,
    tail,
)
from emulator.errors import EmulatorError
from emulator.settings import Settings

__all__ = [
    "EnclaveBuildError",
    "EnclaveDiedError",
    "EnclaveFactory",
    "EnclaveHandle",
    "EnclaveSpec",
    "EnclaveSpecError",
    "EnclaveTestError",
    "enclave",
    "minimum_memory_mib",
    "tail",
]

_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


class EnclaveHandle:
    """One running enclave started by an :class:`EnclaveFactory`.

    Attributes:
        cid, enclave_id, name: as run-enclave reported them.
        measurements: the EIF's PCRs (index -> bytes), what build-enclave printed.
        debug_mode: whether it runs in debug mode.
        home: the state dir (``NITRO_EMU_HOME``) it lives in.
        eif_path: the EIF it runs.
    """

    def __init__(self, factory: EnclaveFactory, info: Any, built: BuiltEnclave, debug_mode: bool) -> None:
        self._factory = factory
        self.info = info
        self.cid: int = info.cid
        self.enclave_id: str = info.enclave_id
        self.name: str = info.name
        self.measurements: dict[int, bytes] = built.measurements.pcrs()
        self.eif_path: Path = built.eif_path
        self.debug_mode = debug_mode
        self.home: Path = factory.home
        self.terminated = False

    def __repr__(self) -> str:
        return f"<EnclaveHandle {self.name} cid={self.cid} id={self.enclave_id}>"

    def is_running(self) -> bool:
        """True while the enclave is booting or running."""
        from emulator.enclave.runtime import describe_enclaves

        if self.terminated:
            return False
        with home_env(self.home):
            return any(
                info.enclave_id == self.enclave_id and info.state in ("EMPTY", "RUNNING")
                for info in describe_enclaves()
            )

    def logs(self) -> str:
        """Everything the enclave printed so far (its exit log once it ended)."""
        from emulator.enclave.runtime import enclave_logs

        with home_env(self.home):
            try:
                return enclave_logs(self.enclave_id)
            except EmulatorError as error:
                exit_log = Settings(self.home).logs_dir / f"{self.enclave_id}.log"
                if exit_log.is_file():
                    return exit_log.read_text(errors="replace")
                return f"(no output available: {error})"

    def died_error(self, context: str = "") -> EnclaveDiedError:
        """An EnclaveDiedError carrying this enclave's last output."""
        return EnclaveDiedError(self.enclave_id, self.name, tail(self.logs()), context)

    def check_alive(self, context: str = "") -> None:
        """Raise EnclaveDiedError unless the enclave still runs (or was terminated on purpose)."""
        if not self.terminated and not self.is_running():
            raise self.died_error(context)

    def connect(self, port: int, *, timeout: float = 30.0) -> Any:
        """Connect to the enclave's VSOCK ``port``, waiting up to ``timeout`` s for a listener.

        Raises:
            EnclaveDiedError: the enclave stopped before it listened.
            ConnectionRefusedError: it runs but nothing listened on ``port`` in time.
        """
        from emulator.vsock import host as vsock

        deadline = time.monotonic() + timeout
        while True:
            try:
                with home_env(self.home):
                    return vsock.connect(self.cid, port, timeout=timeout)
            except (ConnectionRefusedError, FileNotFoundError) as error:
                self.check_alive(f"(while connecting to VSOCK port {port})")
                if time.monotonic() >= deadline:
                    raise ConnectionRefusedError(
                        error.errno,
                        f"enclave {self.name} runs but nothing listened on VSOCK port {port} "
                        f"within {timeout:.0f} s; its last output:\n{indent(tail(self.logs()))}",
                    ) from error
                time.sleep(0.1)

    def attest_raw(
        self, *, nonce: bytes | None = None, user_data: bytes | None = None, public_key: bytes | None = None
    ) -> bytes:
        """An attestation document (COSE_Sign1 bytes) from this enclave's NSM, unverified."""
        from fake_nsm.client import NsmClient, SocketTransport

        socket_path = Settings(self.home).run_dir(self.cid) / "nsm.sock"
        if not socket_path.exists():
            self.check_alive("(asking its NSM for an attestation document)")
        with NsmClient(SocketTransport(socket_path, timeout=30.0)) as nsm:
            return nsm.get_attestation_doc(user_data=user_data, nonce=nonce, public_key=public_key)

    def attest(
        self, *, nonce: bytes | None = None, user_data: bytes | None = None, public_key: bytes | None = None
    ) -> Any:
        """An attestation document from this enclave's NSM, verified and decoded.

        Verified against the factory's test CA root, the nonce, and (outside debug mode) the
        EIF's PCR0/1/2; returns a :class:`fake_nsm.document.AttestationDocument`. Use
        :meth:`attest_raw` for the bytes, to test your own verifier.
        """
        from fake_nsm.verifier import verify_attestation_document

        raw = self.attest_raw(nonce=nonce, user_data=user_data, public_key=public_key)
        expected = None if self.debug_mode else {i: v for i, v in self.measurements.items() if i in (0, 1, 2)}
        return verify_attestation_document(
            raw,
            trusted_roots=[self._factory.ca.root_der],
            nonce=nonce,
            expected_pcrs=expected,
            allow_debug=self.debug_mode,
        )

    @property
    def clock(self) -> Any:
        """This enclave's clock (an ``emulator.enclave.clock.EnclaveClock``): e.g.
        ``handle.clock.set_offset(-4 * 3600)`` makes its documents four hours old."""
        from emulator.enclave.clock import EnclaveClock

        return EnclaveClock(Settings(self.home), self.enclave_id)

    @property
    def faults(self) -> Any:
        """This enclave's NSM faults (a ``fake_nsm.faults.FaultControl``), e.g.
        ``handle.faults.add("Attestation", error="InternalError", count=1)``."""
        from emulator.enclave.faults import nsm_fault_control

        return nsm_fault_control(Settings(self.home), self.enclave_id)

    def terminate(self) -> None:
        """Terminate the enclave (idempotent; an enclave that already ended is fine)."""
        self._factory.terminate(self)


class EnclaveFactory:
    """Builds EIFs (cached by content) and runs enclaves in one state dir.

    Args:
        home: the state dir (``NITRO_EMU_HOME``) for every enclave of this factory.
        docker_client: a Docker SDK client (default: from the environment).
        cache_dir: where EIFs are cached by image id (default ``$XDG_CACHE_HOME/nitro-emu/eif``).
        worker: a tag for names and CID ranges, unique per parallel worker (xdist's ``gw0``...).
    """

    def __init__(
        self,
        home: Path,
        *,
        docker_client: Any | None = None,
        cache_dir: Path | None = None,
        worker: str = "main",
    ) -> None:
        self.home = Path(home).absolute()
        Settings(self.home).ensure_home()
        self._docker = docker_client
        self._owns_docker = docker_client is None
        self.worker = worker
        self.builder = EnclaveBuilder(self._docker_client, cache_dir=cache_dir)
        digits = "".join(ch for ch in worker if ch.isdecimal())
        # Disjoint CID ranges per worker: gw0 -> 1016.., gw1 -> 2016.., main -> 16..
        self._next_cid = 16 + (1000 * (int(digits) + 1) if digits else 0)
        self._counter = 0
        self._lock = threading.Lock()
        self._ca: Any | None = None
        self.running: dict[str, EnclaveHandle] = {}

    def _docker_client(self) -> Any:
        if self._docker is None:
            from emulator.engine.client import docker_client

            self._docker = docker_client()
        return self._docker

    @property
    def ca(self) -> Any:
        """The test CA of this state dir (the one every enclave's NSM signs with)."""
        if self._ca is None:
            from emulator.enclave.resources import open_home_ca

            self._ca = open_home_ca(Settings(self.home))
        return self._ca

    def build(self, spec: EnclaveSpec) -> BuiltEnclave:
        """The EIF for a spec's image or Dockerfile dir (built once, then cached)."""
        try:
            if spec.dockerfile_dir is not None:
                return self.builder.from_dockerfile(Path(spec.dockerfile_dir), build_args=spec.build_args)
            assert spec.image is not None
            return self.builder.from_image(spec.image)
        except EnclaveBuildError:
            raise
        except EmulatorError as error:
            raise EnclaveBuildError(f"building the enclave image failed: {error}") from error

    def start(self, spec: EnclaveSpec, *, name: str | None = None) -> EnclaveHandle:
        """Build (or reuse) the EIF and run an enclave from it."""
        from emulator.enclave.runtime import describe_enclaves, run_enclave

        spec = spec.checked()
        built = self.build(spec)
        label = _NAME_UNSAFE.sub("-", name or "enclave").strip("-")[:40] or "enclave"
        self.ca  # noqa: B018 - create the CA before the supervisor looks for it
        with home_env(self.home):
            used = {info.cid for info in describe_enclaves()}
            with self._lock:  # parallel starts (threads) get distinct names and CIDs
                self._counter += 1
                enclave_name = f"{label}-{self.worker}-{self._counter}"
                while self._next_cid in used:
                    self._next_cid += 1
                cid, self._next_cid = self._next_cid, self._next_cid + 1
            info = run_enclave(
                built.eif_path,
                memory_mib=spec.memory_mib or minimum_memory_mib(built.eif_path),
                cpu_count=spec.cpu_count,
                enclave_cid=cid,
                debug_mode=spec.debug_mode,
                enclave_name=enclave_name,
                instance_id=spec.instance_id,
                clock_offset=spec.clock_offset,
            )
        handle = EnclaveHandle(self, info, built, spec.debug_mode)
        self.running[handle.enclave_id] = handle
        return handle

    def terminate(self, handle: EnclaveHandle) -> None:
        """Terminate one enclave of this factory (nothing happens when it already ended)."""
        from emulator.enclave.runtime import describe_enclaves, terminate_enclave

        self.running.pop(handle.enclave_id, None)
        if handle.terminated:
            return
        handle.terminated = True
        with home_env(self.home):
            if any(info.enclave_id == handle.enclave_id for info in describe_enclaves()):
                terminate_enclave(handle.enclave_id)

    def close(self, *, keep: Iterator[str] | frozenset[str] = frozenset()) -> None:
        """Terminate every enclave still running, except the ids in ``keep``."""
        kept = set(keep)
        errors = []
        for handle in list(self.running.values()):
            if handle.enclave_id in kept:
                continue
            try:
                self.terminate(handle)
            except EmulatorError as error:
                errors.append(f"{handle.name}: {error}")
        if self._docker is not None and self._owns_docker and not kept:
            with contextlib.suppress(Exception):
                self._docker.close()
            self._docker = None
        if errors:
            raise EnclaveTestError("could not terminate: " + "; ".join(errors))

    def __enter__(self) -> EnclaveFactory:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@contextlib.contextmanager
def enclave(
    *,
    image: str | None = None,
    dockerfile_dir: str | Path | None = None,
    memory_mib: int | None = None,
    cpu_count: int = 1,
    debug_mode: bool = False,
    instance_id: str | None = None,
    build_args: Mapping[str, str] | None = None,
    home: str | Path | None = None,
    name: str | None = None,
) -> Iterator[EnclaveHandle]:
    """Run one enclave for the block; terminate it (and clean its state) on exit.

    Without ``home``, a private temporary state dir is made and removed afterwards.
    """
    spec = EnclaveSpec(
        image=image,
        dockerfile_dir=Path(dockerfile_dir) if dockerfile_dir is not None else None,
        memory_mib=memory_mib,
        cpu_count=cpu_count,
        debug_mode=debug_mode,
        instance_id=instance_id,
        build_args=build_args,
    ).checked("enclave()")
    with contextlib.ExitStack() as stack:
        if home is None:
            home = stack.enter_context(tempfile.TemporaryDirectory(prefix="nitro-"))
        factory = stack.enter_context(EnclaveFactory(Path(home)))
        handle = factory.start(spec, name=name)
        yield handle
