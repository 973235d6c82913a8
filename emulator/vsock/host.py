"""VSOCK on the host, as the parent instance (CID 3): connect to enclaves, listen for them.

    sock = vsock.connect(16, 5000)              # the enclave with CID 16, its port 5000
    with vsock.listen(8000) as listener:        # enclaves reach it at (3, 8000)
        conn, (cid, port) = listener.accept()

Addressing (docs/architecture.md "VSOCK mirror"): the enclave with CID c listens on port P at
``$NITRO_EMU_HOME/run/<c>/vsock/<P>``; the parent listens at ``run/parent/<P>``. The kernel
connects the two ends directly; nothing relays. Errors are ``OSError`` s with VSOCK's errnos:
unknown CID ``ENODEV`` (:class:`UnknownCidError`), nobody listening ``ECONNREFUSED``
(:class:`ConnectionRefusedError`), a port already listened on ``EADDRINUSE``; a malformed
CID or port raises :class:`InvalidAddressError` (a ``ValueError``).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from emulator.vsock import enclave as mechanics
from emulator.errors import EmulatorError
from emulator.settings import get_settings
from emulator.vsock.enclave import (
    PARENT_CID,
    VMADDR_CID_ANY,
    VMADDR_CID_HOST,
    VMADDR_CID_HYPERVISOR,
    VMADDR_CID_LOCAL,
    VMADDR_PORT_ANY,
    Address,
    Listener,
)

__all__ = [
    "PARENT_CID",
    "VMADDR_CID_ANY",
    "VMADDR_PORT_ANY",
    "InvalidAddressError",
    "UnknownCidError",
    "VsockListener",
    "VsockServer",
    "check_address",
    "connect",
    "listen",
    "open_connection",
    "peer_address",
    "start_server",
]

VsockListener = Listener
LIST_HINT = "list the running enclaves and their CIDs with `nitro-emu describe-enclaves`"


class InvalidAddressError(EmulatorError, mechanics.InvalidAddressError):
    """A CID or port that is not a VSOCK address."""


class UnknownCidError(EmulatorError, mechanics.UnknownCidError):
    """No enclave runs with this CID (errno ``ENODEV``)."""


def _checked(cid: int, port: int) -> None:
    try:
        mechanics.check_cid(cid)
        mechanics.check_port(port)
    except mechanics.InvalidAddressError as error:
        raise InvalidAddressError(str(error)) from None


def _target_path(cid: int, port: int) -> str:
    """The Unix path of the listener (cid, port), or UnknownCidError."""
    settings = get_settings()
    if cid in (PARENT_CID, VMADDR_CID_LOCAL):  # the parent talking to itself (loopback)
        return str(settings.parent_dir / str(port))
    if cid in (VMADDR_CID_HYPERVISOR, VMADDR_CID_HOST) or cid < 4:
        raise UnknownCidError(cid, f"CID {cid} is reserved and no enclave can have it; {LIST_HINT}")
    run_dir = settings.run_dir(cid)
    if not run_dir.is_dir():
        raise UnknownCidError(cid, f"no running enclave has this CID ({run_dir} is absent); {LIST_HINT}")
    return str(run_dir / "vsock" / str(port))


def _new_client_socket() -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        mechanics.bind_ephemeral(sock, PARENT_CID)
    except BaseException:
        sock.close()
        raise
    return sock


def connect(cid: int, port: int, *, timeout: float | None = None) -> socket.socket:
    """Connect to the enclave ``cid`` on VSOCK ``port`` and return the connected socket.

    Args:
        cid: the enclave's CID (as run-enclave reported it); 3 reaches the parent's own ports.
        port: the VSOCK port (u32) the enclave listens on.
        timeout: set on the socket before connecting and left there, as
            :func:`socket.create_connection` does; None blocks.

    Raises:
        UnknownCidError: no enclave has this CID (ENODEV).
        ConnectionRefusedError: the enclave exists but nobody listens on the port.
        InvalidAddressError: cid or port is not a u32 VSOCK address.
    """
    _checked(cid, port)
    path = _target_path(cid, port)
    sock = _new_client_socket()
    try:
        sock.settimeout(timeout)
        mechanics.connect_path(sock, path)
    except ConnectionRefusedError as error:
        sock.close()
        raise _refused(cid, port) from error
    except BaseException:
        sock.close()
        raise
    return sock


def listen(port: int, *, backlog: int = 128) -> Listener:
    """Listen as the parent (CID 3) on VSOCK ``port``; enclaves reach it at (3, ``port``).

    ``VMADDR_PORT_ANY`` picks a free port (see ``.port``). A socket file left by a dead
    process is replaced; a live listener on the port raises ``OSError(EADDRINUSE)``.
    """
    try:
        mechanics.check_port(port, allow_any=True)
    except mechanics.InvalidAddressError as error:
        raise InvalidAddressError(str(error)) from None
    directory = _parent_dir()
    sock, bound = mechanics.bind_listener(str(directory), port, backlog=backlog)
    return Listener(sock, PARENT_CID, bound, str(directory / str(bound)))


def _refused(cid: int, port: int) -> ConnectionRefusedError:
    """What :func:`connect` and :func:`open_connection` raise when nobody listens (ECONNREFUSED)."""
    return ConnectionRefusedError(errno.ECONNREFUSED, f"connection refused: nobody listens on VSOCK {cid}:{port}")


def _parent_dir() -> Path:
    settings = get_settings()
    settings.ensure_home()
    settings.run_root.mkdir(exist_ok=True)
    return settings.parent_dir


def peer_address(obj: socket.socket | asyncio.StreamWriter) -> Address:
    """The peer's (CID, port) of a connected socket or an asyncio stream writer."""
    if isinstance(obj, asyncio.StreamWriter):
        return mechanics.parse_peer(obj.get_extra_info("peername"))
    return mechanics.parse_peer(obj.getpeername())


# --- asyncio ---------------------------------------------------------------------------------


async def open_connection(
    cid: int, port: int, **kwargs: Any
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """asyncio twin of :func:`connect`: ``(reader, writer)`` to (``cid``, ``port``).

    Extra keyword arguments (``limit=``) go to :func:`asyncio.open_unix_connection`.
    """
    _checked(cid, port)
    path = _target_path(cid, port)
    sock = _new_client_socket()
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    try:
        with mechanics.short_path(path) as usable:
            await loop.sock_connect(sock, usable)
    except (FileNotFoundError, ConnectionRefusedError) as error:
        sock.close()
        raise _refused(cid, port) from error
    except BaseException:
        sock.close()
        raise
    return await asyncio.open_unix_connection(sock=sock, **kwargs)


class VsockServer:
    """An asyncio server listening as the parent on a VSOCK port; removes its file on close."""

    def __init__(self, server: asyncio.Server, listener: Listener) -> None:
        self.server = server
        self._listener = listener

    @property
    def port(self) -> int:
        return self._listener.port

    @property
    def address(self) -> Address:
        return self._listener.address

    def close(self) -> None:
        """Stop accepting and remove the socket file (open connections stay up)."""
        self.server.close()
        self._listener.close()

    async def wait_closed(self) -> None:
        await self.server.wait_closed()

    async def serve_forever(self) -> None:
        await self.server.serve_forever()

    async def __aenter__(self) -> VsockServer:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.wait_closed(), 5)


async def start_server(
    client_connected_cb: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None] | None],
    port: int,
    *,
    backlog: int = 128,
    **kwargs: Any,
) -> VsockServer:
    """asyncio twin of :func:`listen`: serve VSOCK ``port`` as the parent.

    ``client_connected_cb(reader, writer)`` runs per connection; :func:`peer_address` on the
    writer gives the enclave's (CID, port).
    """
    listener = listen(port, backlog=backlog)

    async def connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if mechanics.is_probe(writer.get_extra_info("peername")):
            writer.close()  # another process checking that this port is alive
            return
        result = client_connected_cb(reader, writer)
        if asyncio.iscoroutine(result):
            await result

    try:
        server = await asyncio.start_unix_server(connected, sock=listener.socket, **kwargs)
    except BaseException:
        listener.close()
        raise
    return VsockServer(server, listener)



def check_address(cid: int, port: int) -> None:
    """Raise :class:`InvalidAddressError` unless (cid, port) is a connectable VSOCK address."""
    _checked(cid, port)


def listener_path(cid: int, port: int) -> str:
    """The host path of the listener (cid, port), e.g. to wait for an enclave to listen.

    Raises :class:`UnknownCidError` if no enclave has ``cid``.
    """
    _checked(cid, port)
    return _target_path(cid, port)
