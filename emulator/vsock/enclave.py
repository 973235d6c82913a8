"""VSOCK for code inside an enclave: one API over nitro-emu's Unix sockets or real AF_VSOCK.

Standard library only: this module runs inside enclave images (``pip install --no-deps``
nitro-emu there, see docs/vsock.md).

    listener = vsock_enclave.listen(5000)       # a server on VSOCK port 5000
    conn, (cid, port) = listener.accept()       # the parent connects as (3, ephemeral)
    sock = vsock_enclave.connect_parent(8000)   # reach the parent's port 8000

Transport (docs/architecture.md "VSOCK mirror"): under the runtime dir ``/run/nitro-emu``
(``$NITRO_EMU_VSOCK_ROOT`` overrides it) an enclave listener on port P is the Unix socket
``vsock/<P>`` and the parent's listener on P is ``parent/<P>``. A connecting socket first
binds the abstract name ``\\0nitro-emu-vsock:<cid>:<port>`` so the accepting side learns its
(CID, port). On real Nitro (no runtime dir, ``$NITRO_EMU_CID`` unset, ``socket.AF_VSOCK``
present) the same calls use AF_VSOCK, so enclave code runs unchanged on both.

This module also holds the mechanics the host side (``emulator.vsock.host``) shares.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import random
import socket
import stat
from typing import Optional, Tuple, Union

__all__ = [
    "ABSTRACT_PREFIX",
    "DEFAULT_ROOT",
    "ENV_CID",
    "ENV_ROOT",
    "PARENT_CID",
    "VMADDR_CID_ANY",
    "VMADDR_CID_HOST",
    "VMADDR_CID_HYPERVISOR",
    "VMADDR_CID_LOCAL",
    "VMADDR_PORT_ANY",
    "InvalidAddressError",
    "Listener",
    "UnknownCidError",
    "abstract_name",
    "bind_ephemeral",
    "bind_listener",
    "check_cid",
    "check_port",
    "connect",
    "connect_parent",
    "connect_path",
    "emulated",
    "is_probe",
    "listen",
    "local_address",
    "own_cid",
    "parse_peer",
    "peer_address",
    "short_path",
]

ENV_CID = "NITRO_EMU_CID"
ENV_ROOT = "NITRO_EMU_VSOCK_ROOT"
DEFAULT_ROOT = "/run/nitro-emu"

VMADDR_CID_HYPERVISOR = 0
VMADDR_CID_LOCAL = 1
VMADDR_CID_HOST = 2
PARENT_CID = 3  # the parent instance, as seen from every enclave
VMADDR_CID_ANY = 0xFFFFFFFF
VMADDR_PORT_ANY = 0xFFFFFFFF
MAX_U32 = 0xFFFFFFFF

ABSTRACT_PREFIX = "nitro-emu-vsock:"
PROBE_PREFIX = b"\0nitro-emu-vsock-probe:"
EPHEMERAL_FIRST, EPHEMERAL_LAST = 1024, 0x7FFFFFFF  # architecture.md "VSOCK mirror"
SUN_PATH_MAX = 107  # bytes of sun_path usable for a filesystem name (108 with the NUL)

Address = Tuple[int, int]


class InvalidAddressError(ValueError):
    """A CID or port that is not a VSOCK address (u32, and not a reserved value)."""


class UnknownCidError(OSError):
    """No enclave (or parent) answers to this CID: errno ``ENODEV``."""

    def __init__(self, cid: int, hint: str) -> None:
        super().__init__(errno.ENODEV, f"no VSOCK peer with CID {cid}: {hint}")
        self.cid = cid


def check_port(port: object, *, allow_any: bool = False) -> int:
    """Return ``port`` if it is a VSOCK port (0..0xFFFFFFFF, ANY only when allowed)."""
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= MAX_U32:
        raise InvalidAddressError(
            f"VSOCK port must be an integer in 0..{MAX_U32} (u32), got {port!r}"
        )
    if port == VMADDR_PORT_ANY and not allow_any:
        raise InvalidAddressError(
            f"VSOCK port {port} is VMADDR_PORT_ANY; connect to a concrete port"
        )
    return port


def check_cid(cid: object) -> int:
    """Return ``cid`` if it is a u32 CID that can be connected to."""
    if not isinstance(cid, int) or isinstance(cid, bool) or not 0 <= cid <= MAX_U32:
        raise InvalidAddressError(f"VSOCK CID must be an integer in 0..{MAX_U32}, got {cid!r}")
    if cid == VMADDR_CID_ANY:
        raise InvalidAddressError(f"VSOCK CID {cid} is VMADDR_CID_ANY; connect to a concrete CID")
    return cid


def abstract_name(cid: int, port: int) -> bytes:
    """The abstract Unix name a connecting socket binds to carry its (CID, port)."""
    return b"\0" + f"{ABSTRACT_PREFIX}{cid}:{port}".encode("ascii")


def parse_peer(
    name: Union[str, bytes, Tuple[int, int], None], *, local_cid: Optional[int] = None
) -> Address:
    """The (CID, port) that a Unix socket address stands for; (ANY, ANY) if none.

    An abstract ``nitro-emu-vsock:<cid>:<port>`` name carries both. A listener's path
    stands for its port: ``parent/<P>`` is (3, P), ``<cid>/vsock/<P>`` on the host is
    (cid, P), and ``/run/nitro-emu/vsock/<P>`` in an enclave is (``local_cid``, P).
    """
    if isinstance(name, tuple):  # real AF_VSOCK already gives (cid, port)
        return (int(name[0]), int(name[1]))
    raw = name.encode("utf-8", "surrogateescape") if isinstance(name, str) else (name or b"")
    text = raw.decode("ascii", "replace")
    unknown = (VMADDR_CID_ANY, VMADDR_PORT_ANY)
    if text.startswith("\0"):
        body = text[1:]
        if body.startswith(ABSTRACT_PREFIX):
            cid_text, _, port_text = body[len(ABSTRACT_PREFIX) :].partition(":")
            if cid_text.isdecimal() and port_text.isdecimal():
                return (int(cid_text), int(port_text))
        return unknown
    parts = text.rsplit("/", 3)
    if len(parts) < 3 or not parts[-1].isdecimal():
        return unknown
    port = int(parts[-1])
    if parts[-2] == "parent":
        return (PARENT_CID, port)
    if parts[-2] == "vsock":
        if parts[-3].isdecimal():
            return (int(parts[-3]), port)
        if local_cid is not None:
            return (local_cid, port)
    return (VMADDR_CID_ANY, port)


def bind_ephemeral(sock: socket.socket, own_cid: int) -> int:
    """Bind ``sock`` to a free abstract name for ``own_cid`` and return the port it got."""
    rng = random.SystemRandom()
    for _ in range(64):
        port = rng.randint(EPHEMERAL_FIRST, EPHEMERAL_LAST)
        try:
            sock.bind(abstract_name(own_cid, port))
            return port
        except OSError as error:
            if error.errno != errno.EADDRINUSE:
                raise
    raise OSError(errno.EADDRNOTAVAIL, "no free ephemeral VSOCK port after 64 tries")


@contextlib.contextmanager
def short_path(path: str):  # type: ignore[no-untyped-def]
    """Yield a path to ``path`` that fits ``sun_path`` (via /proc/self/fd/<dirfd>/<name>)."""
    if len(os.fsencode(path)) <= SUN_PATH_MAX:
        yield path
        return
    directory, name = os.path.split(path)
    dir_fd = os.open(directory, os.O_PATH | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{dir_fd}/{name}"
    finally:
        os.close(dir_fd)


def connect_path(sock: socket.socket, path: str) -> None:
    """Connect ``sock`` to the listener at ``path``; no socket file there is ECONNREFUSED."""
    try:
        with short_path(path) as usable:
            sock.connect(usable)
    except (FileNotFoundError, NotADirectoryError) as error:
        raise ConnectionRefusedError(
            errno.ECONNREFUSED, f"connection refused: nobody listens at {path}"
        ) from error


def is_probe(name: Union[str, bytes, None]) -> bool:
    """True for the address of a liveness probe (see :func:`bind_listener`), not a peer."""
    raw = name.encode("utf-8", "surrogateescape") if isinstance(name, str) else (name or b"")
    return raw.startswith(PROBE_PREFIX)


def _is_live_listener(path: str) -> bool:
    # Connecting is the only test that works across network namespaces (/proc/net/unix
    # shows only its own). The probe's name lets our listeners drop it unseen.
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.setblocking(False)
    try:
        probe.bind(PROBE_PREFIX + f"{os.getpid()}:{random.getrandbits(48)}".encode())
        with short_path(path) as usable:
            probe.connect(usable)
        return True
    except BlockingIOError:  # EAGAIN: alive, backlog full
        return True
    except OSError:
        return False
    finally:
        probe.close()


class Listener:
    """A listening VSOCK port: ``accept()`` gives ``(socket, (cid, port))`` of the peer.

    Closing it removes its socket file (only if that file is still this listener's).
    """

    def __init__(self, sock: socket.socket, cid: int, port: int, path: Optional[str]) -> None:
        self.socket = sock
        self.cid = cid
        self.port = port
        self.path = path
        self._inode = os.stat(path).st_ino if path else None

    @property
    def address(self) -> Address:
        """This listener's own VSOCK address (its CID, its port)."""
        return (self.cid, self.port)

    def fileno(self) -> int:
        return self.socket.fileno()

    def settimeout(self, timeout: Optional[float]) -> None:
        self.socket.settimeout(timeout)

    def accept(self) -> Tuple[socket.socket, Address]:
        """Wait for a connection; return it with the peer's (CID, port)."""
        while True:
            conn, raw = self.socket.accept()
            if not is_probe(raw):
                conn.setblocking(True)
                return conn, parse_peer(raw)
            conn.close()  # another process checking that this port is alive

    def close(self) -> None:
        """Stop listening and remove the socket file."""
        if self.path is not None and self._inode is not None:
            with contextlib.suppress(OSError):
                if os.stat(self.path).st_ino == self._inode:
                    os.unlink(self.path)
            self._inode = None
        self.socket.close()

    def __enter__(self) -> "Listener":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Listener vsock {self.cid}:{self.port} at {self.path}>"


def bind_listener(directory: str, port: int, *, backlog: int = 128) -> Tuple[socket.socket, int]:
    """Bind and listen on ``<directory>/<port>``; return the socket and the port.

    A socket file left by a dead process is replaced; a live listener makes this raise
    ``EADDRINUSE``. The check and the bind happen under an exclusive ``flock`` on the
    directory, so two processes racing for one port cannot both win.
    """
    os.makedirs(directory, exist_ok=True)
    with contextlib.suppress(OSError):
        os.chmod(directory, 0o777)  # architecture.md: runtime dirs 0777 (root without DAC)
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(dir_fd, fcntl.LOCK_EX)
        if port == VMADDR_PORT_ANY:
            port = _free_port(directory)
        path = os.path.join(directory, str(port))
        if os.path.lexists(path):
            if not stat.S_ISSOCK(os.lstat(path).st_mode):
                raise FileExistsError(errno.EEXIST, f"{path} exists and is not a socket")
            if _is_live_listener(path):
                raise OSError(errno.EADDRINUSE, f"VSOCK port {port} is already listened on ({path})")
            os.unlink(path)  # stale: its listener died without cleaning up
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with short_path(path) as usable:
                sock.bind(usable)
            os.chmod(path, 0o666)
            sock.listen(backlog)
        except BaseException:
            sock.close()
            raise
        return sock, port
    finally:
        os.close(dir_fd)  # releases the flock


def _free_port(directory: str) -> int:
    rng = random.SystemRandom()
    for _ in range(64):
        port = rng.randint(EPHEMERAL_FIRST, EPHEMERAL_LAST)
        if not os.path.lexists(os.path.join(directory, str(port))):
            return port
    raise OSError(errno.EADDRNOTAVAIL, "no free VSOCK port after 64 tries")


# --- the enclave's view -------------------------------------------------------------------


def _root() -> str:
    return os.environ.get(ENV_ROOT) or DEFAULT_ROOT


def emulated() -> bool:
    """True inside a nitro-emu enclave; False on real Nitro (AF_VSOCK)."""
    if os.environ.get(ENV_CID) or os.environ.get(ENV_ROOT) or os.path.isdir(DEFAULT_ROOT):
        return True
    if hasattr(socket, "AF_VSOCK"):
        return False
    raise OSError(
        errno.EAFNOSUPPORT,
        f"no VSOCK transport: not in a nitro-emu enclave ({DEFAULT_ROOT} absent, "
        f"${ENV_CID} unset) and this Python has no socket.AF_VSOCK",
    )


def own_cid() -> int:
    """This enclave's CID (``$NITRO_EMU_CID`` under nitro-emu, the kernel's on real Nitro)."""
    if not emulated():
        return _real_local_cid()
    raw = os.environ.get(ENV_CID, "")
    if not raw.isdecimal():
        raise OSError(
            errno.EADDRNOTAVAIL,
            f"${ENV_CID} is {raw!r}; nitro-emu sets it to the enclave's CID in every enclave",
        )
    return int(raw)


def _real_local_cid() -> int:
    """The kernel's local CID (IOCTL_VM_SOCKETS_GET_LOCAL_CID); ANY if it cannot say."""
    import array

    buf = array.array("I", [0])
    try:
        with open("/dev/vsock", "rb") as dev:
            fcntl.ioctl(dev, 0x7B9, buf, True)
    except OSError:
        return VMADDR_CID_ANY
    return int(buf[0])


def listen(port: int, *, backlog: int = 128) -> Listener:
    """Listen on VSOCK ``port`` of this enclave (VMADDR_PORT_ANY picks a free one)."""
    check_port(port, allow_any=True)
    if not emulated():
        # typeshed declares AF_VSOCK on Linux only: the ignore is for mypy on other platforms.
        sock = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)  # type: ignore[attr-defined, unused-ignore]
        try:
            sock.bind((VMADDR_CID_ANY, port))
            sock.listen(backlog)
        except BaseException:
            sock.close()
            raise
        return Listener(sock, own_cid(), sock.getsockname()[1], None)
    cid = own_cid()
    sock, bound = bind_listener(os.path.join(_root(), "vsock"), port, backlog=backlog)
    return Listener(sock, cid, bound, os.path.join(_root(), "vsock", str(bound)))


def connect(cid: int, port: int, *, timeout: Optional[float] = None) -> socket.socket:
    """Connect to (``cid``, ``port``): the parent (3), or this enclave itself (own CID or 1)."""
    check_cid(cid)
    check_port(port)
    if not emulated():
        # typeshed declares AF_VSOCK on Linux only: the ignore is for mypy on other platforms.
        sock = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)  # type: ignore[attr-defined, unused-ignore]
        sock.settimeout(timeout)
        try:
            sock.connect((cid, port))
        except BaseException:
            sock.close()
            raise
        return sock
    mine = own_cid()
    if cid == PARENT_CID:
        path = os.path.join(_root(), "parent", str(port))
    elif cid in (mine, VMADDR_CID_LOCAL):
        path = os.path.join(_root(), "vsock", str(port))
    else:
        raise UnknownCidError(cid, f"an enclave reaches only the parent (CID {PARENT_CID})")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        bind_ephemeral(sock, mine)
        sock.settimeout(timeout)
        connect_path(sock, path)
    except BaseException:
        sock.close()
        raise
    return sock


def connect_parent(port: int, *, timeout: Optional[float] = None) -> socket.socket:
    """Connect to the parent instance (CID 3) on VSOCK ``port``."""
    return connect(PARENT_CID, port, timeout=timeout)


def peer_address(sock: socket.socket) -> Address:
    """The (CID, port) of the other end of a connected VSOCK socket."""
    return parse_peer(sock.getpeername(), local_cid=_maybe_own_cid())


def local_address(sock: socket.socket) -> Address:
    """The (CID, port) of this end of a connected VSOCK socket."""
    return parse_peer(sock.getsockname(), local_cid=_maybe_own_cid())


def _maybe_own_cid() -> Optional[int]:
    raw = os.environ.get(ENV_CID, "")
    return int(raw) if raw.isdecimal() else None
