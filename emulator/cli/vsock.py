"""CLI commands: ``vsock-forward``, ``vsock-proxy`` and ``vsock connect|listen`` (docs/vsock.md).

    nitro-emu vsock-forward --to-enclave 16:8080 --listen 127.0.0.1:8080
    nitro-emu vsock-forward --from-enclave-port 8000 --to kms.example:443
    nitro-emu vsock-proxy 8000 127.0.0.1 4000 --config allow.yaml   # nitro-cli's vsock-proxy
    nitro-emu vsock connect 16 5000        # stdin/stdout <-> the enclave's port 5000
    nitro-emu vsock listen 8000            # one enclave connection to (3, 8000) <-> stdio
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import threading
from pathlib import Path
from types import FrameType

from emulator.vsock.forward import Endpoint, ForwardError, Forwarder, from_enclave, to_enclave


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add this group's commands to the top-level parser."""
    forward = subparsers.add_parser(
        "vsock-forward",
        help="forward host TCP <-> enclave VSOCK ports (like socat / vsock-proxy)",
        description=(
            "Expose an enclave's VSOCK port on a host TCP address (--to-enclave CID:PORT "
            "--listen HOST:PORT), or let enclaves reach a host TCP service through a parent "
            "VSOCK port (--from-enclave-port PORT --to HOST:PORT). Runs until SIGINT/SIGTERM."
        ),
    )
    direction = forward.add_mutually_exclusive_group(required=True)
    direction.add_argument("--to-enclave", metavar="CID:PORT", help="the enclave's VSOCK address")
    direction.add_argument(
        "--from-enclave-port", metavar="PORT", type=int,
        help="the parent (CID 3) VSOCK port enclaves connect to",
    )
    forward.add_argument("--listen", metavar="HOST:PORT", help="host TCP address (with --to-enclave)")
    forward.add_argument("--to", metavar="HOST:PORT", help="host TCP service (with --from-enclave-port)")
    forward.add_argument("--quiet", action="store_true", help="no log lines on stderr")
    forward.set_defaults(handler=_forward)

    proxy = subparsers.add_parser(
        "vsock-proxy",
        help="nitro-cli's vsock-proxy: a parent VSOCK port -> one allowlisted TCP service",
        description=(
            "Listen on the parent's VSOCK LOCAL_PORT and forward each enclave connection to "
            "REMOTE_ADDR:REMOTE_PORT, which must be in the --config file's allowlist (the "
            "format of /etc/nitro_enclaves/vsock-proxy.yaml). Runs until SIGINT/SIGTERM."
        ),
    )
    proxy.add_argument("local_port", help="Local Vsock port to listen for incoming connections.")
    proxy.add_argument("remote_addr", help="Address of the server to be proxyed.")
    proxy.add_argument("remote_port", help="Remote TCP port of the server to be proxyed.")
    proxy.add_argument("--config", default=None, metavar="FILE",
                       help="YAML file containing the services that can be forwarded "
                            "(default: /etc/nitro_enclaves/vsock-proxy.yaml)")
    proxy.add_argument("-w", "--num_workers", default="4", metavar="N",
                       help="Set the maximum number of simultaneous connections supported.")
    family = proxy.add_mutually_exclusive_group()
    family.add_argument("-4", "--ipv4", action="store_true", help="Force the proxy to use IPv4 addresses only.")
    family.add_argument("-6", "--ipv6", action="store_true", help="Force the proxy to use IPv6 addresses only.")
    proxy.set_defaults(handler=_proxy)

    group = subparsers.add_parser("vsock", help="VSOCK helpers: connect, listen (stdio)")
    actions = group.add_subparsers(dest="vsock_command", metavar="ACTION")
    actions.required = True
    connect = actions.add_parser("connect", help="connect stdin/stdout to an enclave's port")
    connect.add_argument("cid", type=int)
    connect.add_argument("port", type=int)
    connect.set_defaults(handler=_connect)
    listen = actions.add_parser("listen", help="accept one enclave connection on (3, PORT) to stdio")
    listen.add_argument("port", type=int)
    listen.set_defaults(handler=_listen)


def _forward(args: argparse.Namespace) -> int:
    log = None if args.quiet else sys.stderr
    if args.to_enclave is not None:
        if not args.listen or args.to:
            raise ForwardError("--to-enclave CID:PORT takes --listen HOST:PORT (and not --to)")
        target = Endpoint.parse_vsock(args.to_enclave)
        forwarder = to_enclave(int(target.host), target.port, Endpoint.parse_tcp(args.listen), log=log)
    else:
        if not args.to or args.listen:
            raise ForwardError("--from-enclave-port PORT takes --to HOST:PORT (and not --listen)")
        forwarder = from_enclave(args.from_enclave_port, Endpoint.parse_tcp(args.to), log=log)
    return _serve_until_signal(forwarder)


def _proxy(args: argparse.Namespace) -> int:
    """nitro-cli's vsock-proxy: its checks, its words, its exit status 1 on refusal."""
    from emulator.vsock.proxy import DEFAULT_CONFIG, VsockProxyError, vsock_proxy

    def refuse(message: str) -> int:
        print(f'Error: "{message}"', file=sys.stderr)  # a Rust main's Err(String), as printed
        return 1

    if not args.local_port.isdecimal() or int(args.local_port) > 0xFFFFFFFF:
        return refuse("Local port is not valid")
    if not args.remote_port.isdecimal() or int(args.remote_port) > 0xFFFF:
        return refuse("Remote port is not valid")
    if not args.num_workers.isdecimal() or int(args.num_workers) < 1:
        return refuse("Number of workers is not valid")
    family = socket.AF_INET if args.ipv4 else socket.AF_INET6 if args.ipv6 else 0
    config = Path(args.config) if args.config is not None else DEFAULT_CONFIG
    try:
        forwarder = vsock_proxy(int(args.local_port), args.remote_addr, int(args.remote_port),
                                config=config, family=family, log=sys.stderr)
    except VsockProxyError as error:
        return refuse(str(error))
    except ForwardError as error:
        return refuse(f"Could not listen for connections: {error}")
    return _serve_until_signal(forwarder)


def _serve_until_signal(forwarder: Forwarder) -> int:
    """Serve in this (main) thread; SIGINT/SIGTERM close the forwarder cleanly."""

    def stop(signum: int, frame: FrameType | None) -> None:
        forwarder.stop()  # the blocked accept() fails, serve_forever returns, then close()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        forwarder.serve_forever()
    finally:
        forwarder.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def _stdio(sock: socket.socket) -> int:
    """Copy stdin -> sock (half-close at EOF) and sock -> stdout until the peer ends."""

    def upload() -> None:
        try:
            while chunk := os.read(0, 65536):
                sock.sendall(chunk)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    threading.Thread(target=upload, daemon=True).start()
    try:
        while chunk := sock.recv(65536):
            os.write(1, chunk)
    except ConnectionResetError:
        print("nitro-emu vsock: connection reset by the peer", file=sys.stderr)
        return 1
    finally:
        sock.close()
    return 0


def _connect(args: argparse.Namespace) -> int:
    from emulator.vsock import host as vsock

    try:
        sock = vsock.connect(args.cid, args.port)
    except ConnectionRefusedError as error:  # UnknownCidError etc. reach the CLI's one line
        print(f"nitro-emu vsock: {error}", file=sys.stderr)
        return 1
    return _stdio(sock)


def _listen(args: argparse.Namespace) -> int:
    from emulator.vsock import host as vsock

    try:
        listener = vsock.listen(args.port)
    except OSError as error:  # EADDRINUSE: another live listener owns the port
        print(f"nitro-emu vsock: {error}", file=sys.stderr)
        return 1
    with listener:
        print(f"nitro-emu vsock: listening on VSOCK 3:{listener.port}", file=sys.stderr, flush=True)
        conn, (cid, port) = listener.accept()
    print(f"nitro-emu vsock: connection from {cid}:{port}", file=sys.stderr, flush=True)
    return _stdio(conn)
