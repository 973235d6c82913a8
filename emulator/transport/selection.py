"""Which transport an enclave gets: ``NITRO_EMU_TRANSPORT=host|engine|auto`` (default auto).

``auto`` picks ``host`` only when a probe proves it works: a container of this engine, with a
directory that nitro-emu made on the host bind-mounted, reads a nonce from a file there and
sends it back through a Unix socket listening there. Docker Desktop, Colima, remote and most
rootless engines fail one of the two (the path is not there, or sockets do not cross the
file-sharing layer), so they get ``engine``, without guessing from names. The answer is kept
in ``$NITRO_EMU_HOME/transport.json`` per engine (its ID and ``DOCKER_HOST``); delete the file
to probe again.

``host`` where the probe fails is refused with the reason, at once, rather than an enclave
whose NSM never answers.
"""

from __future__ import annotations

import contextlib
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

ENV_TRANSPORT = "NITRO_EMU_TRANSPORT"
CHOICES = ("auto", "host", "engine")
PROBE_FILE = "transport.json"
_PROBE_TIMEOUT_S = 30.0
_memo: dict[tuple[str, str, str], tuple[bool, str]] = {}
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


def _engine_key(client: docker.DockerClient) -> tuple[str, str]:
    engine_id = str(client.info().get("ID") or "")
    return engine_id, os.environ.get("DOCKER_HOST", "")


def host_paths_visible(settings: Settings, client: docker.DockerClient) -> tuple[bool, str]:
    """Whether this engine's containers see the host's files and Unix sockets, and why."""
    engine_id, docker_host = _engine_key(client)
    memo_key = (str(settings.home), engine_id, docker_host)
    cache = settings.home / PROBE_FILE
    with _memo_lock:
        if memo_key in _memo:
            return _memo[memo_key]
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            saved = json.loads(cache.read_text())
            if (saved["engine_id"], saved["docker_host"]) == (engine_id, docker_host):
                _memo[memo_key] = (bool(saved["host_paths"]), str(saved["why"]))
                return _memo[memo_key]
        result = _probe(settings, client)
        settings.ensure_home()
        temporary = cache.with_name(PROBE_FILE + ".tmp")
        temporary.write_text(json.dumps({"engine_id": engine_id, "docker_host": docker_host,
                                         "host_paths": result[0], "why": result[1]}) + "\n")
        os.replace(temporary, cache)
        _memo[memo_key] = result
        return result


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
