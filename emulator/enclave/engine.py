"""The Docker client as the enclave commands see it: an engine that does not answer is
nitro-cli's ``EnclaveBootFailure`` (E39 family), with the engine's own reason."""

from __future__ import annotations

from typing import TYPE_CHECKING

from emulator.nitro_cli_errors import nitro_cli_error

if TYPE_CHECKING:
    import docker


def enclave_engine(client: docker.DockerClient | None = None) -> docker.DockerClient:
    """``client`` if given, else a client of the local engine; a dead engine is a nitro-cli error."""
    if client is not None:
        return client
    from emulator.engine.client import EngineUnavailableError, docker_client

    try:
        return docker_client()
    except EngineUnavailableError as error:
        raise nitro_cli_error("EnclaveBootFailure", detail=str(error)) from error
