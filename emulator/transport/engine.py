"""The engine transport: nothing of the host's filesystem reaches the enclave.

For Docker Desktop, Colima, OrbStack, rootless and remote engines (docs/transport.md). The
enclave mounts a Docker volume at ``/run/nitro-emu``; its companion container mounts the same
volume and relays, over a Docker API attach stream, between the sockets there and the
enclave's runtime dir on the host (:mod:`emulator.transport.relay`):

=========================================  ==========================================
in the volume (the enclave's view)         on the host (what nitro-emu's API uses)
=========================================  ==========================================
``nsm.sock``                                ``run/<cid>/nsm.sock`` (the supervisor's NSM)
``vsock/<P>`` (the enclave listens)         ``run/<cid>/vsock/<P>`` (a mirror)
``parent/<P>`` (a mirror)                   ``run/parent/<P>`` (the parent listens)
=========================================  ==========================================

So the host API (``emulator.vsock.host``), the CLI and the shim on the parent's side work
unchanged, and the CA and the clock and fault files never leave the host.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from emulator.enclave.container import LABEL_COMPANION_OF, LABEL_ENCLAVE_ID, LABEL_HOME
from emulator.errors import EmulatorError
from emulator.settings import Settings
from emulator.transport import relay
from emulator.transport.base import ENCLAVE_RUN_DIR, Link, Transport
from emulator.transport.companion import (
    CompanionLink,
    create_volume,
    ensure_companion_image,
    files_archive,
    volume_name,
    remove_volume,
)
from emulator.vsock.enclave import VMADDR_PORT_ANY, abstract_name, connect_path, parse_peer, short_path

if TYPE_CHECKING:
    import docker

    from emulator.enclave.state import EnclaveInfo



#: Host paths an extension may mount that exist on the engine's machine too (a device node).
ENGINE_DEVICES = frozenset({"/dev/null"})


class EngineTransportError(EmulatorError):
    """Something under ``/run/nitro-emu`` cannot be carried into the engine."""


def _relative(inside: str) -> str:
    prefix = ENCLAVE_RUN_DIR + "/"
    if not inside.startswith(prefix) or ".." in inside.split("/"):
        raise EngineTransportError(f"{inside} is not under {ENCLAVE_RUN_DIR}: the engine transport shares only that")
    return inside[len(prefix):]


def _bind(sock: socket.socket, path: str) -> None:
    with short_path(path) as usable:
        sock.bind(usable)


def host_resolvers(settings: Settings, cid: int) -> tuple[relay.Resolver, relay.Resolver,
                                                          Callable[[str, str], str | None]]:
    """The host end's rules: what the companion may open, where mirrors go, whose CID calls."""
    run_dir = settings.run_dir(cid)

    def open_path(name: str) -> str:
        if name == "nsm.sock":
            return str(run_dir / "nsm.sock")
        port = relay.port_name(name, "parent")
        if port is not None:
            return str(settings.parent_dir / str(port))
        raise ValueError("an enclave may reach only its NSM and the parent's ports")

    def listen_path(name: str) -> str:
        port = relay.port_name(name, "vsock")
        if port is None:
            raise ValueError("an enclave announces only vsock/<port>")
        return str(run_dir / "vsock" / str(port))

    def peer_for(name: str, peer: str) -> str | None:
        # The enclave names its own port; its CID is the one it was given, whatever it claims.
        _, port = parse_peer("\0" + peer)
        return None if port == VMADDR_PORT_ANY else abstract_name(cid, port)[1:].decode("ascii")

    return open_path, listen_path, peer_for


class EngineLink(Link):
    def __init__(self, link: CompanionLink) -> None:
        self.companion = link

    def close(self) -> None:
        self.companion.close()


class EngineTransport(Transport):
    """A volume per enclave and a companion container that relays it to the host."""

    name = "engine"

    def prepare(self, client: docker.DockerClient, settings: Settings, enclave: EnclaveInfo,
                labels: Mapping[str, str]) -> None:
        create_volume(client, enclave.enclave_id, labels)

    def mounts(self, settings: Settings, enclave: EnclaveInfo, run_dir: Path,
               extra_mounts: Mapping[str, tuple[str, bool]]) -> dict[str, dict[str, str]]:
        volumes = {volume_name(enclave.enclave_id): {"bind": ENCLAVE_RUN_DIR, "mode": "rw"}}
        for host, (inside, read_only) in extra_mounts.items():
            if host in ENGINE_DEVICES:  # there on every engine's machine: mounted as is
                volumes[host] = {"bind": inside, "mode": "ro" if read_only else "rw"}
            else:
                _relative(inside)  # refused now, before anything is made
        return volumes

    def populate(self, container: Any, extra_mounts: Mapping[str, tuple[str, bool]]) -> None:
        import docker.errors

        files = {host: _relative(inside) for host, (inside, _read_only) in extra_mounts.items()
                 if host not in ENGINE_DEVICES}
        if not files:
            return
        try:
            container.put_archive(ENCLAVE_RUN_DIR, files_archive(files))
        except docker.errors.APIError as error:
            raise EngineTransportError(
                f"could not copy {sorted(files.values())} into the enclave's volume: {error.explanation or error}"
            ) from error

    def link(self, client: docker.DockerClient, settings: Settings, enclave: EnclaveInfo,
             labels: Mapping[str, str], on_lost: Callable[[str], None],
             log: Callable[[str], None]) -> Link | None:
        open_path, listen_path, peer_for = host_resolvers(settings, enclave.cid)

        def make_relay(fd: int, inbound: Callable[[bytes], bytes]) -> relay.Relay:
            return relay.Relay(fd, fd, open_path=open_path, listen_path=listen_path, parity=1,
                               inbound=inbound, peer_for=peer_for, connect=connect_path, bind=_bind, log=log)

        companion_labels = {key: value for key, value in labels.items() if key != LABEL_ENCLAVE_ID}
        companion_labels[LABEL_COMPANION_OF] = enclave.enclave_id
        link = CompanionLink(
            client, enclave_id=enclave.enclave_id, image=ensure_companion_image(client),
            volume=volume_name(enclave.enclave_id), labels=companion_labels, make_relay=make_relay,
            initial=["nsm.sock"], watch=(str(settings.parent_dir), "parent"), on_lost=on_lost, log=log,
        )
        try:
            link.start()
        except BaseException:
            link.close()
            raise
        return EngineLink(link)

    def remove(self, client: docker.DockerClient, settings: Settings, enclave_id: str) -> None:
        remove_volume(client, volume_name(enclave_id))

    def reap(self, client: docker.DockerClient, settings: Settings, live_ids: set[str]) -> list[str]:
        import docker.errors

        try:
            volumes = client.api.volumes(filters={"label": f"{LABEL_HOME}={settings.home}"})
        except docker.errors.DockerException:
            return []
        reaped = []
        for volume in (volumes or {}).get("Volumes") or []:
            enclave_id = (volume.get("Labels") or {}).get(LABEL_ENCLAVE_ID, "")
            if enclave_id in live_ids:
                continue
            with contextlib.suppress(docker.errors.APIError):
                client.api.remove_volume(volume["Name"], force=True)
                reaped.append(enclave_id)
        return reaped

