"""``vsock-proxy``: the parent's VSOCK port -> one allowlisted TCP service, as nitro-cli's.

Same contract as aws-nitro-enclaves-cli ``vsock_proxy/src/{main,proxy}.rs``:

- ``vsock-proxy LOCAL_PORT REMOTE_ADDR REMOTE_PORT [--config FILE] [-w N] [-4|-6]``; the
  config defaults to ``/etc/nitro_enclaves/vsock-proxy.yaml``;
- before listening, (REMOTE_ADDR, REMOTE_PORT) must be in the file's ``allowlist``: an entry
  whose port equals REMOTE_PORT and whose ``address`` is REMOTE_ADDR itself or resolves to
  the address REMOTE_ADDR resolves to. Otherwise (no file, no match) it refuses with
  "The given address and port are not allowed", and the file's own problems read as
  nitro-cli's ("Could not open the file", "Bad yaml format", "No allowlist field", ...);
- it then listens as the parent (CID 3) on LOCAL_PORT, and dials REMOTE_ADDR:REMOTE_PORT for
  each connection an enclave makes.

An enclave reaches a local service (the local KMS, say) through it exactly as it reaches
``kms.<region>.amazonaws.com`` on Nitro: allowlist the local address in a config file of the
same format (docs/kms.md has the recipe).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from emulator.errors import EmulatorError
from emulator.vsock.forward import Endpoint, Forwarder, from_enclave

DEFAULT_CONFIG = Path("/etc/nitro_enclaves/vsock-proxy.yaml")
DEFAULT_WORKERS = 4
NOT_ALLOWED = "The given address and port are not allowed"


class VsockProxyError(EmulatorError):
    """vsock-proxy refused to start; the message is nitro-cli's."""


@dataclass(frozen=True)
class AllowedService:
    """One ``allowlist`` entry: ``{address: HOST, port: PORT}``."""

    address: str
    port: int


def load_allowlist(path: Path) -> list[AllowedService]:
    """The allowlist of a vsock-proxy YAML file, refused with nitro-cli's messages."""
    import yaml

    try:
        content = path.read_text()
    except UnicodeDecodeError:
        raise VsockProxyError("Could not read the file") from None
    except OSError:
        raise VsockProxyError("Could not open the file") from None
    try:
        document: Any = yaml.safe_load(content)
    except yaml.YAMLError:
        raise VsockProxyError("Bad yaml format") from None
    services = document.get("allowlist") if isinstance(document, dict) else None
    if not isinstance(services, list):
        raise VsockProxyError("No allowlist field")
    allowed = []
    for raw in services:
        address = raw.get("address") if isinstance(raw, dict) else None
        if not isinstance(address, str):
            raise VsockProxyError("No address field")
        port = raw.get("port")
        if not isinstance(port, int) or isinstance(port, bool):
            raise VsockProxyError("No port field or invalid type")
        allowed.append(AllowedService(address, port & 0xFFFF))  # `port as u16`, as nitro-cli
    return allowed


def _resolve(host: str, family: int) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, None, family, socket.SOCK_STREAM)
    except socket.gaierror:
        raise VsockProxyError(f"DNS lookup failed for {host}") from None
    return [str(info[4][0]) for info in infos]


def check_allowlist(remote_host: str, remote_port: int, config: Path | None, *, family: int = 0) -> str:
    """The address to dial when (``remote_host``, ``remote_port``) is allowed by ``config``."""
    if config is None:
        raise VsockProxyError(NOT_ALLOWED)
    services = load_allowlist(config)
    (remote_addr, *_) = _resolve(remote_host, family)
    for service in services:
        if service.port != remote_port:
            continue
        if service.address == remote_host:
            return remote_addr
        if remote_addr in _resolve(service.address, family):
            return remote_addr
    raise VsockProxyError(NOT_ALLOWED)


def vsock_proxy(
    local_port: int,
    remote_host: str,
    remote_port: int,
    *,
    config: Path | None = DEFAULT_CONFIG,
    family: int = 0,
    log: TextIO | None = None,
) -> Forwarder:
    """Check the allowlist, then listen on the parent's VSOCK ``local_port`` (not yet serving).

    Raises:
        VsockProxyError: the pair is not allowed, or the config file is unusable, with the
            words nitro-cli's vsock-proxy uses.
    """
    if not 0 <= remote_port <= 0xFFFF:
        raise VsockProxyError("Remote port is not valid")
    if not 0 <= local_port <= 0xFFFFFFFF:
        raise VsockProxyError("Local port is not valid")
    try:
        check_allowlist(remote_host, remote_port, config, family=family)
    except VsockProxyError as error:
        raise VsockProxyError(f"Error at checking the allowlist: {error}") from None
    # Dial by name each time: the resolver's answer may change, as vsock-proxy re-resolves
    # when the DNS TTL runs out.
    return from_enclave(local_port, Endpoint(remote_host, remote_port), log=log)
