"""One place that opens the Docker engine and turns its failures into our errors."""

from __future__ import annotations

import docker
import docker.errors

from emulator.errors import EmulatorError


class EngineUnavailableError(EmulatorError):
    """No Docker engine answers (not installed, not started, or no permission)."""


def docker_client() -> docker.DockerClient:
    """A client of the engine named by ``DOCKER_HOST`` (or the local socket), checked alive."""
    try:
        client = docker.from_env()
        client.ping()
    except (docker.errors.DockerException, OSError) as error:
        raise EngineUnavailableError(
            f"no Docker engine answers ({error}); start it (e.g. `sudo systemctl start docker`) "
            "or point DOCKER_HOST at one, and check that your user may use it"
        ) from error
    return client
