"""Which transport an enclave gets: ``NITRO_EMU_TRANSPORT=host|engine|auto`` (default auto).

``auto`` picks ``host`` only when a probe proves it works: a container of this engine, with a
directory that nitro-emu made on the host bind-mounted, reads a nonce from a file there and
sends it back through a Unix socket listening there. Docker Desktop, Colima, remote and most
rootless engines fail one of the two (the path is not there, or sockets do not cross the
file-sharing layer), so they get ``engine``, without guessing from names. The answer is kept
in ``~/.cache/nitro-emu/transport/`` per engine (its ID, ``DOCKER_HOST`` and this process's
mount namespace); delete the directory to probe again.

``host`` where the probe fails is refused with the reason, at once, rather than an enclave
whose NSM never answers.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import socket
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from emulator.errors import EmulatorError
from emulator.settings import Settings
from emulator.transport.base import Transport

if TYPE_CHECKING:
    import docker

    from emulator.enclave.state import EnclaveInfo

ENV_TRANSPORT = "NITRO_EMU_TRANSPORT"
CHOICES = ("auto", "host", "engine")
_PROBE_TIMEOUT_S = 30.0
_memo: dict[str, tuple[bool, str]] = {}
_memo_lock = threading.Lock()


class TransportChoiceError(EmulatorError):
    """An unknown ``NITRO_EMU_TRANSPORT``, or ``host`` on an engine that cannot see the host."""


@dataclass(frozen=True)
class Choice:
    """The transport picked, and why (for describe-enclaves and the pytest header)."""

    name: str
    reason: str

    def describe(self) -> str:
        return f"{self.name} ({self.reason})"


def transport_named(name: str) -> Transport:
    """The transport object for a record's ``transport`` (``host`` when absent)."""
    if name == "engine":
        from emulator.transport.engine import EngineTransport

        return EngineTransport()
    from emulator.transport.host import HostTransport

    return HostTransport()


def transport_of(enclave: EnclaveInfo | None) -> Transport:
    """The transport an enclave's record names; for no record, the one that leaves things
    in the engine to remove (engine), since nobody knows which it had."""
    if enclave is None:
        return transport_named("engine")
    return transport_named(str(enclave.extra.get("transport", "host")))


def every_transport() -> list[Transport]:
    """Each transport once (the reaper asks each what killed processes left)."""
    return [transport_named(name) for name in ("host", "engine")]


def requested() -> str:
    value = os.environ.get(ENV_TRANSPORT, "auto").strip().lower() or "auto"
    if value not in CHOICES:
        raise TransportChoiceError(
            f"{ENV_TRANSPORT}={value!r} is not a transport; use one of {', '.join(CHOICES)}"
        )
    return value


def choose(settings: Settings, client: docker.DockerClient) -> Choice:
    """The transport for the next enclave (probing the engine once, see the module doc)."""
    wanted = requested()
    if wanted == "engine":
        return Choice("engine", f"{ENV_TRANSPORT}=engine")
    sees, why = host_paths_visible(settings, client)
    if wanted == "host":
        if not sees:
            raise TransportChoiceError(
                f"{ENV_TRANSPORT}=host, but this Docker engine cannot use the host's files: {why}. "
                f"It runs in another VM or machine (Docker Desktop, a remote or rootless engine) or "
                f"another mount namespace; use {ENV_TRANSPORT}=engine (or auto)"
            )
        return Choice("host", f"{ENV_TRANSPORT}=host; {why}")
    return Choice("host", why) if sees else Choice("engine", why)


def _cache_key(client: docker.DockerClient) -> str:
    """Which engine, reached how, from which mount namespace: what the answer depends on."""
    engine_id = str(client.info().get("ID") or "")
    try:
        namespace = os.readlink("/proc/self/ns/mnt")
    except OSError:
        namespace = ""
    text = "\0".join((engine_id, os.environ.get("DOCKER_HOST", ""), namespace))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def probe_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/nitro-emu/transport`` (``~/.cache/...``): one answer per engine."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "nitro-emu" / "transport"


def host_paths_visible(settings: Settings, client: docker.DockerClient) -> tuple[bool, str]:
    """Whether this engine's containers see the host's files and Unix sockets, and why."""
    key = _cache_key(client)
    cache = probe_cache_dir() / f"{key}.json"
    with _memo_lock:
        if key in _memo:
            return _memo[key]
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            saved = json.loads(cache.read_text())
            _memo[key] = (bool(saved["host_paths"]), str(saved["why"]))
            return _memo[key]
        result = _probe(settings, client)
        with contextlib.suppress(OSError):  # no cache: probe again next time
            cache.parent.mkdir(parents=True, exist_ok=True)
            temporary = cache.with_name(f"{key}.{os.getpid()}.tmp")
            temporary.write_text(json.dumps({"host_paths": result[0], "why": result[1]}) + "\n")
            os.replace(temporary, cache)
        _memo[key] = result
        return result


def announced(client: docker.DockerClient | None) -> str:
    """The transport enclaves get, as far as is known without probing (the pytest header)."""
    wanted = requested()
    if wanted != "auto":
        return f"{wanted} ({ENV_TRANSPORT}={wanted})"
    if client is None:
        return "auto (no Docker engine answers)"
    try:
        saved = json.loads((probe_cache_dir() / f"{_cache_key(client)}.json").read_text())
        return f"{'host' if saved['host_paths'] else 'engine'} (auto: {saved['why']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "auto (this engine is probed when the first enclave starts)"


def _probe(settings: Settings, client: docker.DockerClient) -> tuple[bool, str]:
    import docker.errors
    from docker.types import Mount

    from emulator.transport.companion import ensure_companion_image

    image = ensure_companion_image(client)
    settings.ensure_home()
    settings.run_root.mkdir(exist_ok=True)
    directory = Path(tempfile.mkdtemp(prefix="probe-", dir=settings.run_root))
    os.chmod(directory, 0o777)
    nonce = secrets.token_hex(16).encode()
    (directory / "nonce").write_bytes(nonce)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    received: list[bytes] = []
    container = None
    try:
        listener.bind(str(directory / "probe.sock"))
        os.chmod(directory / "probe.sock", 0o666)
        listener.listen(1)
        listener.settimeout(_PROBE_TIMEOUT_S)

        def accept() -> None:
            with contextlib.suppress(OSError):
                conn, _ = listener.accept()
                with conn:
                    conn.settimeout(5)
                    received.append(conn.recv(64))

        waiter = threading.Thread(target=accept, daemon=True)
        waiter.start()
        try:
            container = client.containers.create(
                image=image, command=["--probe", "/probe"], network_mode="none",
                mounts=[Mount("/probe", str(directory), type="bind")], labels={"org.nitro-emu.probe": "1"},
            )
            container.start()
            status = container.wait(timeout=_PROBE_TIMEOUT_S).get("StatusCode")
            logs = container.logs().decode("utf-8", "replace").strip()
        except docker.errors.APIError as error:
            return False, f"a container cannot mount {directory} ({error.explanation or error})"
        except Exception as error:  # noqa: BLE001 - a hung probe is a failed probe
            return False, f"the probe container did not finish ({error})"
        # unblock the accept thread if the container never connected
        with contextlib.suppress(OSError):
            listener.shutdown(socket.SHUT_RDWR)
        waiter.join(5)
        if received and received[0] == nonce:
            return True, "its containers see this machine's files and Unix sockets"
        return False, f"a container does not reach a Unix socket made here ({logs or f'exit {status}'})"
    finally:
        if container is not None:
            with contextlib.suppress(docker.errors.APIError):
                container.remove(force=True)
        listener.close()
        shutil.rmtree(directory, ignore_errors=True)
