"""The engine transport's relay: the NSM and (CID, port) streams over one byte stream.

Standard library only. This one file is the whole program of an enclave's companion
container (``python3 relay.py``: stdin and stdout are the stream, attached by the host's
supervisor through the Docker API) and, imported, the supervisor's end of the same protocol.

Each end owns Unix sockets in its own filesystem (the companion: the Docker volume it shares
with the enclave; the supervisor: the enclave's runtime dir on the host) and mirrors the
other end's listeners:

- ``LISTEN name`` asks the other end to listen on ``name`` (``nsm.sock``, ``vsock/<port>``,
  ``parent/<port>``) in its filesystem; ``UNLISTEN name`` takes that back. Each end watches a
  directory of real listeners (inotify, else a scan every 50 ms) and announces what appears.
- A connection accepted on a mirror becomes a channel: ``OPEN ch {"name", "peer"}``; the other
  end connects its real socket, binding ``peer`` (the abstract name that tells a VSOCK
  listener who calls), and answers ``OPENED ch`` or ``REFUSED ch errno``.
- ``DATA ch bytes`` carries a stream, at most ``WINDOW`` bytes ahead of the reader's ``ACK``
  (credit per channel, so one stalled stream never blocks the NSM or another stream);
  ``SHUT ch`` is one side's EOF (``shutdown(SHUT_WR)`` on the other), ``CLOSE ch`` a reset.
- ``HELLO`` answers ``HELLO``: the supervisor sends its listeners, then ``HELLO``; the
  companion's answer says all of them are bound.

A frame is ``>BII`` (kind, channel, payload length) and the payload. The companion never
speaks first, so attaching after it started loses nothing.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import selectors
import socket
import stat
import struct
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

FRAME = struct.Struct(">BII")
HELLO, LISTEN, UNLISTEN, OPEN, OPENED, REFUSED, DATA, ACK, SHUT, CLOSE = range(1, 11)
#: Bytes a sender may have in flight per channel before the reader acknowledges them.
WINDOW = 1 << 21
_CHUNK = 1 << 16
#: Stop reading local sockets while this much waits to go out on the stream.
_STREAM_HIGH_WATER = 4 << 20
_SCAN_INTERVAL_S = 0.05
_MAX_PAYLOAD = 1 << 20
COMPANION_ROOT = "/run/nitro-emu"
#: The owner of what the companion makes in the shared volume: not the enclave's root.
COMPANION_UID = 65534
PROBE_PREFIX = "\0nitro-emu-vsock-probe:"

Resolver = Callable[[str], str]


class RelayError(Exception):
    """The other end broke the protocol."""


def port_name(name: str, prefix: str) -> Optional[int]:
    """The port of ``<prefix>/<port>``, or None if ``name`` is not one."""
    head, _, tail = name.partition("/")
    if head != prefix or not tail.isdecimal() or len(tail) > 10 or int(tail) > 0xFFFFFFFF:
        return None
    return int(tail)


class _Channel:
    __slots__ = ("cid", "sock", "opened", "credit", "out", "unacked", "read_open", "shut_sent",
                 "remote_shut", "shut_done")

    def __init__(self, cid: int, sock: socket.socket, opened: bool) -> None:
        self.cid = cid
        self.sock = sock
        self.opened = opened
        self.credit = WINDOW
        self.out = bytearray()
        self.unacked = 0
        self.read_open = True
        self.shut_sent = False
        self.remote_shut = False
        self.shut_done = False


class _Inotify:
    """A non-blocking inotify fd on one directory (None where ctypes or inotify is missing)."""

    def __init__(self, directory: str) -> None:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        # IN_ATTRIB | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE | IN_DELETE_SELF
        mask = 0x004 | 0x040 | 0x080 | 0x100 | 0x200 | 0x400
        if libc.inotify_add_watch(fd, directory.encode(), mask) < 0:
            code = ctypes.get_errno()
            os.close(fd)
            raise OSError(code, f"inotify_add_watch {directory}")
        self.fd = fd

    def drain(self) -> None:
        with contextlib.suppress(BlockingIOError, InterruptedError):
            while os.read(self.fd, 65536):
                pass

    def close(self) -> None:
        os.close(self.fd)


class _Watch:
    """Socket files named by a port in one directory, announced as ``<prefix>/<port>``."""

    def __init__(self, directory: str, prefix: str) -> None:
        self.directory = directory
        self.prefix = prefix
        self.announced: Set[str] = set()
        self.inotify: Optional[_Inotify] = None
        with contextlib.suppress(Exception):
            self.inotify = _Inotify(directory)

    def scan(self) -> Set[str]:
        found: Set[str] = set()
        try:
            entries = list(os.scandir(self.directory))
        except OSError:
            return found
        for entry in entries:
            if not entry.name.isdecimal():
                continue
            try:
                if stat.S_ISSOCK(entry.stat(follow_symlinks=False).st_mode):
                    found.add(f"{self.prefix}/{entry.name}")
            except OSError:
                continue
        return found


class Relay:
    """One end of the stream: its listeners, its channels, its watches.

    Args:
        read_fd, write_fd: the stream (one socket on the host, stdin/stdout in the companion).
        open_path: maps a name the other end may OPEN to the path to connect to (raises
            ``ValueError`` for a name this end refuses).
        listen_path: the same for a name the other end asks us to LISTEN on.
        parity: 1 for the host's channel numbers, 0 for the companion's (never clash).
        inbound: a filter over the raw bytes read (the host's Docker stream demuxer).
        peer_for: rewrites the peer name of an OPEN before it is bound (the host pins the CID).
        connect, bind: how a path is reached (the host's long paths need a short alias).
    """

    def __init__(
        self,
        read_fd: int,
        write_fd: int,
        *,
        open_path: Resolver,
        listen_path: Resolver,
        parity: int,
        inbound: Optional[Callable[[bytes], bytes]] = None,
        peer_for: Optional[Callable[[str, str], Optional[str]]] = None,
        connect: Optional[Callable[[socket.socket, str], None]] = None,
        bind: Optional[Callable[[socket.socket, str], None]] = None,
        log: Optional[Callable[[str], None]] = None,
    ) -> None:
        self.read_fd = read_fd
        self.write_fd = write_fd
        self.open_path = open_path
        self.listen_path = listen_path
        self.parity = parity
        self.inbound = inbound
        self.peer_for = peer_for
        self.connect = connect or (lambda sock, path: sock.connect(path))
        self.bind = bind or (lambda sock, path: sock.bind(path))
        self.log = log or (lambda line: print(line, file=sys.stderr, flush=True))
        self.selector = selectors.DefaultSelector()
        self.masks: Dict[int, int] = {}
        self.owners: Dict[int, Tuple[str, object]] = {}
        self.out = bytearray()
        self.inbuf = bytearray()
        self.channels: Dict[int, _Channel] = {}
        self.listeners: Dict[str, Tuple[socket.socket, str]] = {}
        self.watches: List[_Watch] = []
        self.next_channel = 2 + parity
        self.hello_received = False
        self.on_hello: Optional[Callable[[Dict[str, Any]], None]] = None
        self.closed = False
        self.stop_requested = False
        self._wake_r, self._wake_w = os.pipe()
        for fd in (self._wake_r, self._wake_w, read_fd, write_fd):
            os.set_blocking(fd, False)
        self._set(self._wake_r, selectors.EVENT_READ, ("wake", None))

    # --- the selector --------------------------------------------------------------------

    def _set(self, fd: int, mask: int, owner: Tuple[str, object]) -> None:
        current = self.masks.get(fd)
        if mask == 0:
            if current is not None:
                self.selector.unregister(fd)
                del self.masks[fd]
                self.owners.pop(fd, None)
            return
        if current is None:
            self.selector.register(fd, mask)
        elif current != mask:
            self.selector.modify(fd, mask)
        self.masks[fd] = mask
        self.owners[fd] = owner

    def _interests(self) -> None:
        stream = selectors.EVENT_READ | (selectors.EVENT_WRITE if self.out else 0)
        if self.read_fd == self.write_fd:
            self._set(self.read_fd, stream, ("stream", None))
        else:
            self._set(self.read_fd, selectors.EVENT_READ, ("stream", None))
            self._set(self.write_fd, selectors.EVENT_WRITE if self.out else 0, ("stream-out", None))
        roomy = len(self.out) < _STREAM_HIGH_WATER
        for channel in self.channels.values():
            mask = 0
            if channel.opened and channel.read_open and channel.credit > 0 and roomy:
                mask |= selectors.EVENT_READ
            if channel.out:
                mask |= selectors.EVENT_WRITE
            self._set(channel.sock.fileno(), mask, ("channel", channel))
        for name, (sock, _path) in self.listeners.items():
            self._set(sock.fileno(), selectors.EVENT_READ, ("listener", name))
        for watch in self.watches:
            if watch.inotify is not None:
                self._set(watch.inotify.fd, selectors.EVENT_READ, ("watch", watch))

    def wake(self) -> None:
        """Make :meth:`run` look again (from another thread)."""
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def stop(self) -> None:
        """Ask :meth:`run` to return (thread-safe)."""
        self.stop_requested = True
        self.wake()

    # --- frames --------------------------------------------------------------------------

    def send(self, kind: int, channel: int = 0, payload: bytes = b"") -> None:
        self.out += FRAME.pack(kind, channel, len(payload))
        self.out += payload

    def send_hello(self, info: Optional[Dict[str, Any]] = None) -> None:
        self.send(HELLO, 0, json.dumps(info or {}).encode())

    def announce(self, name: str) -> None:
        self.send(LISTEN, 0, name.encode())

    def withdraw(self, name: str) -> None:
        self.send(UNLISTEN, 0, name.encode())

    def watch(self, directory: str, prefix: str) -> None:
        """Announce the listeners that appear in ``directory`` as ``<prefix>/<port>``."""
        watch = _Watch(directory, prefix)
        self.watches.append(watch)
        self._rescan(watch)

    def _rescan(self, watch: _Watch) -> None:
        if watch.inotify is not None:
            watch.inotify.drain()
        found = watch.scan()
        for name in sorted(found - watch.announced):
            self.announce(name)
        for name in sorted(watch.announced - found):
            self.withdraw(name)
        watch.announced = found

    def _on_frame(self, kind: int, number: int, payload: bytes) -> None:
        if kind == HELLO:
            self.hello_received = True
            if self.on_hello is not None:
                self.on_hello(json.loads(payload or b"{}"))
        elif kind == LISTEN:
            self._listen(payload.decode())
        elif kind == UNLISTEN:
            self._unlisten(payload.decode())
        elif kind == OPEN:
            self._open(number, json.loads(payload))
        else:
            channel = self.channels.get(number)
            if channel is None:
                return  # already closed on our side
            if kind == OPENED:
                channel.opened = True
            elif kind == REFUSED:
                self._drop(channel, notify=False)
            elif kind == DATA:
                channel.out += payload
            elif kind == ACK:
                channel.credit += struct.unpack(">I", payload)[0]
            elif kind == SHUT:
                channel.remote_shut = True
            elif kind == CLOSE:
                self._drop(channel, notify=False)
            else:
                raise RelayError(f"unknown frame kind {kind}")

    def _parse(self) -> None:
        buffer = self.inbuf
        while len(buffer) >= FRAME.size:
            kind, number, length = FRAME.unpack_from(buffer)
            if length > _MAX_PAYLOAD:
                raise RelayError(f"a frame of {length} bytes (the limit is {_MAX_PAYLOAD})")
            end = FRAME.size + length
            if len(buffer) < end:
                return
            payload = bytes(buffer[FRAME.size:end])
            del buffer[:end]
            self._on_frame(kind, number, payload)

    # --- listeners -----------------------------------------------------------------------

    def _listen(self, name: str) -> None:
        if name in self.listeners:
            return
        try:
            path = self.listen_path(name)
        except ValueError as error:
            self.log(f"relay: refused to listen on {name!r}: {error}")
            return
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # Bound and listening under another name first, then renamed into place: whoever
        # sees the file can connect at once.
        temporary = f"{path}.{os.getpid()}.tmp"
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
            self.bind(sock, temporary)
            os.chmod(temporary, 0o666)
            sock.listen(128)
            sock.setblocking(False)
            os.replace(temporary, path)
        except OSError as error:
            sock.close()
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            self.log(f"relay: cannot listen on {path}: {error}")
            return
        self.listeners[name] = (sock, path)

    def _unlisten(self, name: str) -> None:
        entry = self.listeners.pop(name, None)
        if entry is None:
            return
        sock, path = entry
        self._set(sock.fileno(), 0, ("listener", name))
        sock.close()
        with contextlib.suppress(OSError):
            os.unlink(path)

    def _accept(self, name: str) -> None:
        sock, _path = self.listeners[name]
        while True:
            try:
                conn, peer = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                self.log(f"relay: accept on {name}: {error}")
                return
            if isinstance(peer, bytes):
                peer = peer.decode("latin-1")
            if peer.startswith(PROBE_PREFIX):
                conn.close()  # a liveness probe of this listener: it is alive
                continue
            conn.setblocking(False)
            number = self.next_channel
            self.next_channel += 2
            self.channels[number] = _Channel(number, conn, opened=False)
            self.send(OPEN, number, json.dumps({"name": name, "peer": peer.lstrip("\0")}).encode())

    def _open(self, number: int, request: Dict[str, Any]) -> None:
        name = str(request.get("name", ""))
        peer = str(request.get("peer") or "")
        try:
            path = self.open_path(name)
            if self.peer_for is not None:
                peer = self.peer_for(name, peer) or ""
        except ValueError as error:
            self.log(f"relay: refused to open {name!r}: {error}")
            self.send(REFUSED, number, struct.pack(">I", errno.ECONNREFUSED))
            return
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            if peer:
                with contextlib.suppress(OSError):  # a taken name: call unnamed
                    sock.bind("\0" + peer)
            sock.settimeout(2.0)
            self.connect(sock, path)
            sock.setblocking(False)
        except OSError as error:
            sock.close()
            code = errno.ECONNREFUSED if error.errno in (None, errno.ENOENT) else error.errno
            self.send(REFUSED, number, struct.pack(">I", code))
            return
        self.channels[number] = _Channel(number, sock, opened=True)
        self.send(OPENED, number)

    # --- channels ------------------------------------------------------------------------

    def _drop(self, channel: _Channel, *, notify: bool) -> None:
        if notify:
            self.send(CLOSE, channel.cid)
        self._set(channel.sock.fileno(), 0, ("channel", channel))
        channel.sock.close()
        self.channels.pop(channel.cid, None)

    def _read_channel(self, channel: _Channel) -> None:
        try:
            data = channel.sock.recv(min(_CHUNK, channel.credit))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(channel, notify=True)
            return
        if not data:
            channel.read_open = False
            channel.shut_sent = True
            self.send(SHUT, channel.cid)
            self._maybe_finished(channel)
            return
        channel.credit -= len(data)
        self.send(DATA, channel.cid, data)

    def _write_channel(self, channel: _Channel) -> None:
        try:
            sent = channel.sock.send(channel.out[:WINDOW])
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(channel, notify=True)
            return
        del channel.out[:sent]
        channel.unacked += sent
        if channel.unacked >= WINDOW // 4 or not channel.out:
            self.send(ACK, channel.cid, struct.pack(">I", channel.unacked))
            channel.unacked = 0

    def _maybe_finished(self, channel: _Channel) -> None:
        if channel.remote_shut and not channel.out and not channel.shut_done:
            channel.shut_done = True
            with contextlib.suppress(OSError):
                channel.sock.shutdown(socket.SHUT_WR)
        if channel.shut_done and channel.shut_sent:
            self._drop(channel, notify=False)

    # --- the stream ----------------------------------------------------------------------

    def _read_stream(self) -> bool:
        try:
            data = os.read(self.read_fd, 1 << 18)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            return False
        if not data:
            return False
        if self.inbound is not None:
            data = self.inbound(data)
        self.inbuf += data
        self._parse()
        return True

    def _write_stream(self) -> bool:
        try:
            written = os.write(self.write_fd, self.out[: 1 << 20])
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            return False
        del self.out[:written]
        return True

    def run(self) -> None:
        """Serve until the stream ends or :meth:`stop` is called; then close everything."""
        try:
            self._loop()
        finally:
            self.close()

    def _loop(self) -> None:
        next_scan = time.monotonic() + _SCAN_INTERVAL_S
        while not self.stop_requested:
            for channel in list(self.channels.values()):
                self._maybe_finished(channel)
            self._interests()
            polling = any(watch.inotify is None for watch in self.watches)
            timeout = max(0.0, next_scan - time.monotonic()) if polling else None
            for key, events in self.selector.select(timeout):
                kind, owner = self.owners.get(key.fd, ("gone", None))
                if kind == "wake":
                    with contextlib.suppress(BlockingIOError):
                        os.read(self._wake_r, 4096)
                elif kind in ("stream", "stream-out"):
                    if events & selectors.EVENT_WRITE and not self._write_stream():
                        return
                    if kind == "stream" and events & selectors.EVENT_READ and not self._read_stream():
                        return
                elif kind == "listener":
                    self._accept(str(owner))
                elif kind == "watch":
                    assert isinstance(owner, _Watch)
                    self._rescan(owner)
                elif kind == "channel":
                    assert isinstance(owner, _Channel)
                    if owner.cid not in self.channels:
                        continue
                    if events & selectors.EVENT_WRITE:
                        self._write_channel(owner)
                    if owner.cid in self.channels and events & selectors.EVENT_READ:
                        self._read_channel(owner)
            if polling and time.monotonic() >= next_scan:
                next_scan = time.monotonic() + _SCAN_INTERVAL_S
                for watch in self.watches:
                    if watch.inotify is None:
                        self._rescan(watch)
        # stopping: flush what is queued (a last CLOSE or SHUT), briefly
        deadline = time.monotonic() + 1.0
        while self.out and time.monotonic() < deadline:
            if not self._write_stream():
                break
            if self.out:
                time.sleep(0.01)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for channel in list(self.channels.values()):
            self._drop(channel, notify=False)
        for name in list(self.listeners):
            self._unlisten(name)
        for watch in self.watches:
            if watch.inotify is not None:
                watch.inotify.close()
        self.selector.close()
        os.close(self._wake_r)
        os.close(self._wake_w)


# --- the companion's side --------------------------------------------------------------------


def _companion_listen_path(name: str) -> str:
    if name == "nsm.sock" or port_name(name, "parent") is not None:
        return os.path.join(COMPANION_ROOT, name)
    raise ValueError("the companion listens only on nsm.sock and parent/<port>")


def _companion_open_path(name: str) -> str:
    if port_name(name, "vsock") is not None:
        return os.path.join(COMPANION_ROOT, name)
    raise ValueError("the host may open only vsock/<port>")


def prepare_volume(root: str = COMPANION_ROOT) -> None:
    """The shared volume's layout: the enclave may write ``vsock/`` only."""
    for path, mode in ((root, 0o755), (os.path.join(root, "parent"), 0o755), (os.path.join(root, "vsock"), 0o777)):
        os.makedirs(path, exist_ok=True)
        with contextlib.suppress(OSError):  # not root (a test, or a rootless engine's quirk)
            os.chown(path, COMPANION_UID, COMPANION_UID)
        os.chmod(path, mode)


def _own_socket_bind(sock: socket.socket, path: str) -> None:
    sock.bind(path)
    with contextlib.suppress(OSError):
        os.chown(path, COMPANION_UID, COMPANION_UID)


def probe_main(directory: str) -> int:
    """``relay.py --probe DIR``: prove this container sees the host's DIR and its socket."""
    try:
        with open(os.path.join(directory, "nonce"), "rb") as handle:
            nonce = handle.read()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            sock.connect(os.path.join(directory, "probe.sock"))
            sock.sendall(nonce)
    except OSError as error:
        print(f"probe: {error}", file=sys.stderr)
        return 1
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    """The companion: prepare the volume, then relay stdin/stdout until stdin ends."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--probe"] and len(args) == 2:
        return probe_main(args[1])
    prepare_volume()
    relay = Relay(0, 1, open_path=_companion_open_path, listen_path=_companion_listen_path, parity=0,
                  bind=_own_socket_bind)

    def answer(_info: Dict[str, Any]) -> None:
        relay.send_hello({"pid": os.getpid()})

    relay.on_hello = answer
    relay.watch(os.path.join(COMPANION_ROOT, "vsock"), "vsock")  # empty: a new volume
    relay.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
