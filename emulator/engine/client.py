"""One place that opens the Docker engine and turns its failures into our errors."""

from __future__ import annotations

import os
import socket

import docker
import docker.errors
from docker.utils import kwargs_from_env

from emulator.errors import EmulatorError

_DEFAULT_SOCKET = "/var/run/docker.sock"


class EngineUnavailableError(EmulatorError):
    """No Docker engine answers (not installed, not started, or no permission)."""


def _unix_socket_path() -> str | None:
    """The engine's Unix socket path, or None when it is reached another way (tcp, ssh)."""
    base_url = kwargs_from_env().get("base_url") or f"unix://{_DEFAULT_SOCKET}"
    for prefix in ("unix://", "http+unix://"):
        if base_url.startswith(prefix):
            return "/" + base_url[len(prefix) :].lstrip("/")
    return None


def _check_unix_socket(path: str) -> None:
    # docker-py leaves its socket unclosed when a Unix connect fails; look first ourselves.
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(10)
        probe.connect(path)
    finally:
        probe.close()


def image_exists(client: docker.DockerClient, tag: str) -> bool:
    """Whether the engine has an image by this name (other engine errors propagate)."""
    try:
        client.images.get(tag)
    except docker.errors.ImageNotFound:
        return False
    return True


def docker_client() -> docker.DockerClient:
    """A client of the engine named by ``DOCKER_HOST`` (or the local socket), checked alive."""
    path = _unix_socket_path()
    try:
        if path is not None:
            _check_unix_socket(path)
        client = docker.from_env()
    except (docker.errors.DockerException, OSError) as error:
        where = path or os.environ.get("DOCKER_HOST", "")
        raise EngineUnavailableError(
            f"no Docker engine answers at {where} ({error}); start it (e.g. `sudo systemctl "
            "start docker`) or point DOCKER_HOST at one, and check that your user may use it"
        ) from error
    try:
        client.ping()
    except (docker.errors.DockerException, OSError) as error:
        client.close()
        raise EngineUnavailableError(f"the Docker engine does not answer a ping ({error})") from error
    return client
