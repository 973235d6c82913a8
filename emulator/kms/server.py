"""A local KMS over HTTP: ``KmsServer`` (a context manager) and ``serve`` for the CLI.

    with KmsServer(trusted_roots=[ca.root_der], state_dir=tmp_path / "kms") as server:
        kms = boto3.client("kms", endpoint_url=server.endpoint_url, region_name="us-east-1",
                           aws_access_key_id="AKIDEXAMPLE", aws_secret_access_key="x")

A ``ThreadingHTTPServer`` speaking HTTP/1.1 with keep-alive; one log line per request
(method, operation, status, error code, caller, duration: never a body, a plaintext or key
material). An unexpected exception becomes KMSInternalException (HTTP 500), logged, and the
server keeps serving.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Sequence
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any

from emulator.kms.backend import KmsBackend
from emulator.kms.errors import KmsError
from emulator.kms.models import DEFAULT_ACCOUNT, DEFAULT_REGION
from emulator.kms.recipient import DEFAULT_MAX_AGE
from emulator.kms.responses import KmsResponder
from emulator.kms.store import open_store
from fake_nsm.faults import FaultPlan
from fake_nsm.trusted_roots import TrustedRoot

__all__ = ["KmsServer", "KmsServerError", "serve"]

#: Largest request body accepted: a 262144-byte document is ~350 KB in base64.
MAX_BODY = 4 * 1024 * 1024
_log = logging.getLogger("emulator.kms")


class KmsServerError(KmsError):
    """The server could not start (e.g. the port is taken) or was misused."""

    status = 500


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # The headers and the body leave in two writes: with Nagle on, the body waits for the
    # client's delayed ACK (40 ms per request on Linux). SDKs keep connections alive.
    disable_nagle_algorithm = True
    server: _HttpServer

    def _respond(self) -> None:
        started = time.monotonic()
        length_text = self.headers.get("Content-Length", "0")
        try:
            length = int(length_text)
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY:
            body = b'{"__type":"SerializationException","message":"Content-Length is missing, invalid or over 4 MiB"}'
            self.send_response(413 if length > MAX_BODY else 400)
            self.send_header("Content-Type", "application/x-amz-json-1.1")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)
            self.close_connection = True
            return
        payload = self.rfile.read(length)
        reply = self.server.responder.handle(self.command, self.path, dict(self.headers.items()), payload)
        if reply.transport_fault == "drop":  # an injected fault: no answer at all
            _log.info("%s %s dropped (injected fault)", self.command, reply.operation)
            self.close_connection = True
            return
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(reply.body)))
        self.end_headers()
        if reply.transport_fault == "truncate":  # an injected fault: half the body, then close
            self.wfile.write(reply.body[: len(reply.body) // 2])
            self.close_connection = True
            return
        self.wfile.write(reply.body)
        _log.info(
            "%s %s %d %s caller=%s %.1fms",
            self.command, reply.operation, reply.status, reply.error or "-", reply.caller,
            (time.monotonic() - started) * 1000,
        )

    do_POST = _respond
    do_GET = _respond
    do_PUT = _respond
    do_DELETE = _respond

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib name
        """Silence the stdlib's access log: ``_respond`` logs one line without request data."""


class _HttpServer(ThreadingHTTPServer):
    """Tracks its open connections so that ``stop`` can end keep-alive ones too."""

    daemon_threads = True
    allow_reuse_address = True
    responder: KmsResponder

    def server_activate(self) -> None:
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().server_activate()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class KmsServer:
    """A local AWS KMS on ``http://<host>:<port>``.

    Args:
        host, port: where to listen (port 0: any free port; see ``.port``).
        state_dir: where keys persist (``<state_dir>/kms.sqlite3``); None keeps nothing.
        trusted_roots: the roots Recipient documents must chain to (the test CA's root).
        region, account: the KMS's region and account (ARNs use them).
        max_age: how old a Recipient's attestation document may be.
        faults: injected faults by operation (``fake_nsm.faults.FaultPlan``); a fresh
            in-memory plan when None (``.faults`` either way).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        state_dir: Path | None = None,
        trusted_roots: Sequence[TrustedRoot] = (),
        region: str = DEFAULT_REGION,
        account: str = DEFAULT_ACCOUNT,
        max_age: timedelta = DEFAULT_MAX_AGE,
        faults: FaultPlan | None = None,
    ) -> None:
        self.host = host
        self.faults = faults if faults is not None else FaultPlan()
        self._requested_port = port
        self.state_dir = None if state_dir is None else Path(state_dir)
        self.trusted_roots = tuple(trusted_roots)
        self.region = region
        self.account = account
        self.max_age = max_age
        self.backend: KmsBackend | None = None
        self._http: _HttpServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._http is None:
            raise KmsServerError("the KMS server is not running; call start() first")
        return int(self._http.server_address[1])

    @property
    def endpoint_url(self) -> str:
        """``http://host:port`` for boto3's ``endpoint_url``."""
        return f"http://{self.host}:{self.port}"

    def _bind(self) -> _HttpServer:
        backend = KmsBackend(
            region=self.region, account=self.account, store=open_store(self.state_dir),
            trusted_roots=self.trusted_roots, max_age=self.max_age,
        )
        try:
            http = _HttpServer((self.host, self._requested_port), _Handler)
        except OSError as error:
            backend.close()
            raise KmsServerError(
                f"cannot listen on {self.host}:{self._requested_port}: {error}; choose another "
                "--port (0 picks a free one)"
            ) from error
        http.responder = KmsResponder(backend, self.faults)
        self.backend = backend
        return http

    def start(self) -> KmsServer:
        """Listen and serve in a background thread; returns self."""
        if self._http is not None:
            raise KmsServerError("the KMS server is already running")
        self._http = self._bind()
        self._thread = threading.Thread(
            target=self._http.serve_forever, kwargs={"poll_interval": 0.05},
            name=f"kms-server-{self.port}", daemon=True,
        )
        self._thread.start()
        _log.info("local KMS listening on %s (region %s, account %s, state %s)",
                  self.endpoint_url, self.region, self.account, self.state_dir or "memory")
        return self

    def serve_forever(self) -> None:
        """Serve in this thread until interrupted (for ``nitro-emu kms serve``)."""
        if self._http is not None:
            raise KmsServerError("the KMS server is already running")
        self._http = self._bind()
        _log.info("local KMS listening on %s", self.endpoint_url)
        try:
            self._http.serve_forever()
        finally:
            self._close()

    def stop(self) -> None:
        """Stop serving and close the store; safe to call twice."""
        if self._http is not None and self._thread is not None:
            self._http.shutdown()
            self._thread.join(timeout=10)
        self._close()

    def _close(self) -> None:
        if self._http is not None:
            self._http.close_connections()
            self._http.server_close()
            self._http = None
        self._thread = None
        if self.backend is not None:
            self.backend.close()
            self.backend = None

    def __enter__(self) -> KmsServer:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def serve(
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    state_dir: Path | None = None,
    trusted_roots: Sequence[TrustedRoot] = (),
    region: str = DEFAULT_REGION,
    account: str = DEFAULT_ACCOUNT,
) -> None:
    """Run a local KMS in the foreground until Ctrl-C (what ``nitro-emu kms serve`` calls).

    Args:
        state_dir: e.g. ``<home>/kms``; None is ``--memory`` (nothing kept).
        trusted_roots: e.g. ``[TestCA.load_or_create(settings.ca_dir).root_der]``.
    """
    server = KmsServer(host, port, state_dir=state_dir, trusted_roots=trusted_roots,
                       region=region, account=account)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
