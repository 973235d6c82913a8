"""The engine transport's companion: its image, its volume, and the supervisor's link to it.

Per enclave (docs/transport.md): a Docker volume ``nitro-emu-<enclave-id>`` mounted at
``/run/nitro-emu`` in the enclave and in its companion container, which runs
:mod:`emulator.transport.relay` with its stdin and stdout attached to the enclave's supervisor
through the Docker API. The supervisor keeps the NSM, the CA and the record on the host; the
companion only carries streams, so nothing the enclave reaches is a host path and no key
enters the engine.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import tarfile
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from emulator.errors import EmulatorError
from emulator.transport import relay

if TYPE_CHECKING:
    import docker

logger = logging.getLogger(__name__)

COMPANION_REPOSITORY = "nitro-emu/companion"
_RELAY_IN_IMAGE = "/opt/nitro-emu/relay.py"
_HANDSHAKE_TIMEOUT_S = 20.0


class CompanionError(EmulatorError):
    """The companion container could not be built, started or reached."""


def companion_tag(base_tag: str) -> str:
    """The companion image's tag: a hash of the relay's source and the base image's name."""
    source = Path(relay.__file__).read_bytes()
    digest = hashlib.sha256(source + b"\0" + base_tag.encode()).hexdigest()[:12]
    return f"{COMPANION_REPOSITORY}:{digest}"


def ensure_companion_image(client: docker.DockerClient) -> str:
    """Build the companion image once (FROM the local base image); cached by its tag."""
    import docker.errors

    from emulator.engine.base_image import BaseImageError, ensure_base_image
    from emulator.engine.client import image_exists

    try:
        base = ensure_base_image(client)
    except BaseImageError as error:
        raise CompanionError(f"the companion image needs the base image: {error}") from error
    tag = companion_tag(base)
    if image_exists(client, tag):
        return tag
    dockerfile = (
        f"FROM {base}\n"
        f"COPY relay.py {_RELAY_IN_IMAGE}\n"
        f'ENTRYPOINT ["python3", "{_RELAY_IN_IMAGE}"]\n'
        "LABEL org.nitro-emu.companion-image=1\n"
    ).encode()
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as archive:
        for name, data in (("Dockerfile", dockerfile), ("relay.py", Path(relay.__file__).read_bytes())):
            member = tarfile.TarInfo(name)
            member.size, member.mode, member.mtime = len(data), 0o644, 0
            archive.addfile(member, io.BytesIO(data))
    context.seek(0)
    try:
        client.images.build(fileobj=context, custom_context=True, tag=tag, rm=True, pull=False,
                            network_mode="none")
    except (docker.errors.BuildError, docker.errors.APIError) as error:
        raise CompanionError(f"building the companion image {tag} FROM {base} failed: {error}") from error
    return tag


def volume_name(enclave_id: str) -> str:
    return f"nitro-emu-{enclave_id}"


def companion_name(enclave_id: str) -> str:
    return f"nitro-emu-{enclave_id}-companion"


def create_volume(client: docker.DockerClient, enclave_id: str, labels: Mapping[str, str]) -> str:
    """The enclave's shared volume, labelled like its containers (for the reaper)."""
    import docker.errors

    name = volume_name(enclave_id)
    try:
        client.volumes.create(name=name, labels=dict(labels))
    except docker.errors.APIError as error:
        raise CompanionError(f"Docker could not create the volume {name}: {error.explanation or error}") from error
    return name


def files_archive(files: Mapping[str, str]) -> bytes:
    """A tar of host directories (or files), each under its path relative to the volume's root.

    ``files`` maps a host directory to its place in the volume (``lib``); everything is owned
    by the companion's user and read-only to the enclave, as the host transport's
    read-only mounts are.
    """
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for host_dir, inside in sorted(files.items(), key=lambda item: item[1]):
            top = Path(host_dir)
            for path in [top, *(sorted(top.rglob("*")) if top.is_dir() else [])]:
                arcname = inside if path == top else f"{inside}/{path.relative_to(top)}"
                member = archive.gettarinfo(str(path), arcname=arcname)
                member.uid = member.gid = relay.COMPANION_UID
                member.uname = member.gname = ""
                member.mode = 0o755 if member.isdir() or member.mode & 0o111 else 0o644
                if member.isreg():
                    with open(path, "rb") as handle:
                        archive.addfile(member, handle)
                elif member.isdir():
                    archive.addfile(member)
    return buffer.getvalue()


class DockerStream:
    """Docker's attach framing (8-byte headers) taken off a stream; stderr goes to the log."""

    def __init__(self, on_stderr: Callable[[bytes], None]) -> None:
        self.header = bytearray()
        self.remaining = 0
        self.kind = 0
        self.on_stderr = on_stderr

    def __call__(self, data: bytes) -> bytes:
        out = bytearray()
        view = memoryview(data)
        index = 0
        while index < len(view):
            if self.remaining == 0:
                take = view[index:index + 8 - len(self.header)]
                self.header += take
                index += len(take)
                if len(self.header) == 8:
                    self.kind = self.header[0]
                    self.remaining = int.from_bytes(self.header[4:8], "big")
                    self.header.clear()
                continue
            chunk = view[index:index + self.remaining]
            index += len(chunk)
            self.remaining -= len(chunk)
            if self.kind == 1:
                out += chunk
            else:
                self.on_stderr(bytes(chunk))
        return bytes(out)


def _raw_socket(attached: Any) -> Any:
    """The socket under docker-py's attach object (a SocketIO over Unix or TCP)."""
    sock = getattr(attached, "_sock", attached)
    if not hasattr(sock, "fileno") or not hasattr(sock, "recv"):
        raise CompanionError(f"this engine's attach stream ({type(attached).__name__}) is not a socket")
    return sock


class CompanionLink:
    """The supervisor's end: start the companion, attach, relay in a thread.

    Args:
        host_open, host_listen: the host-side resolvers (:mod:`emulator.transport.engine`).
        on_lost: called once if the companion's stream ends while the enclave runs.
    """

    def __init__(
        self,
        client: docker.DockerClient,
        *,
        enclave_id: str,
        image: str,
        volume: str,
        labels: Mapping[str, str],
        make_relay: Callable[[int, Callable[[bytes], bytes]], relay.Relay],
        initial: list[str],
        watch: tuple[str, str],
        on_lost: Callable[[str], None],
        log: Callable[[str], None],
    ) -> None:
        self.client = client
        self.enclave_id = enclave_id
        self.image = image
        self.volume = volume
        self.labels = dict(labels)
        self.make_relay = make_relay
        self.initial = initial
        self.watch_spec = watch
        self.on_lost = on_lost
        self.log = log
        self.container: Any = None
        self.relay: relay.Relay | None = None
        self._socket: Any = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stopping = False

    def start(self) -> CompanionLink:
        """Create, start and attach the companion; return once its listeners are bound."""
        import docker.errors

        try:
            self.container = self.client.containers.create(
                image=self.image, name=companion_name(self.enclave_id), labels=self.labels,
                network_mode="none", read_only=True, user="0:0",
                cap_drop=["ALL"], cap_add=["CHOWN", "DAC_OVERRIDE", "FOWNER"],
                security_opt=["no-new-privileges"], pids_limit=32, mem_limit="64m", memswap_limit="64m",
                volumes={self.volume: {"bind": relay.COMPANION_ROOT, "mode": "rw"}},
                # detach=False is how docker-py sets StdinOnce: stdin closes when we detach
                stdin_open=True, tty=False, detach=False,
            )
            self.container.start()
            attached = self.client.api.attach_socket(
                self.container.id, params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1})
        except docker.errors.APIError as error:
            raise CompanionError(f"the companion container did not start: {error.explanation or error}") from error
        self._socket = _raw_socket(attached)
        self._attached = attached  # keeps docker-py's response (and so the socket) alive
        demux = DockerStream(lambda data: self.log("companion: " + data.decode("utf-8", "replace").rstrip()))
        self.relay = self.make_relay(self._socket.fileno(), demux)
        self.relay.on_hello = lambda _info: self._ready.set()
        for name in self.initial:
            self.relay.announce(name)
        self.relay.watch(*self.watch_spec)
        self.relay.send_hello({"enclave_id": self.enclave_id})
        self._thread = threading.Thread(target=self._run, name="companion-relay", daemon=True)
        self._thread.start()
        if not self._ready.wait(_HANDSHAKE_TIMEOUT_S):
            raise CompanionError(f"the companion did not answer within {_HANDSHAKE_TIMEOUT_S:.0f} s: "
                                 f"{self._logs()}")
        return self

    def _logs(self) -> str:
        with contextlib.suppress(Exception):
            return str(self.container.logs(tail=5).decode("utf-8", "replace")).strip() or "no output"
        return "its logs are gone"

    def _run(self) -> None:
        assert self.relay is not None
        try:
            self.relay.run()
        except Exception as error:  # noqa: BLE001 - reported, then the enclave ends
            self.log(f"companion relay failed: {type(error).__name__}: {error}")
        finally:
            with contextlib.suppress(OSError):
                self._socket.close()
            if not self._stopping:
                self._ready.set()
                self.on_lost(f"its companion container's stream ended ({self._logs()})")

    def close(self) -> None:
        """Stop relaying; the companion sees EOF on stdin and exits (removed by the caller)."""
        self._stopping = True
        if self.relay is not None:
            self.relay.stop()
        if self._thread is not None:
            self._thread.join(5.0)
        with contextlib.suppress(Exception):
            self._socket.close()


def remove_volume(client: docker.DockerClient, volume: str, timeout: float = 10.0) -> None:
    """Remove a volume, retrying while a container that is being removed still holds it."""
    import docker.errors

    deadline = time.monotonic() + timeout
    while True:
        try:
            client.api.remove_volume(volume, force=True)
            return
        except docker.errors.NotFound:
            return
        except docker.errors.APIError as error:
            if time.monotonic() > deadline:
                logger.warning("cannot remove volume %s: %s", volume, error)
                return
            time.sleep(0.1)
