"""Helpers for the VSOCK tests: processes playing an enclave over the run-dir layout."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


class FakeEnclave:
    """Processes standing in for one enclave with a CID, over ``<home>/run/<cid>``."""

    def __init__(self, home: Path, cid: int) -> None:
        self.cid = cid
        self.run_dir = home / "run" / str(cid)
        self.run_dir.mkdir(parents=True)
        (home / "run" / "parent").mkdir(exist_ok=True)
        (self.run_dir / "parent").symlink_to("../parent")
        self.env = {
            **os.environ,
            "NITRO_EMU_CID": str(cid),
            "NITRO_EMU_VSOCK_ROOT": str(self.run_dir),
            "PYTHONPATH": str(ROOT),
        }
        self.processes: list[subprocess.Popen[str]] = []

    def spawn(self, *args: str) -> subprocess.Popen[str]:
        """Start ``vsock_peer <args>`` in this enclave and wait until it says ready."""
        proc = subprocess.Popen(
            [sys.executable, "-m", "emulator.vsock.peer", *args],
            env=self.env, stdout=subprocess.PIPE, text=True,
        )
        self.processes.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("ready"), f"enclave program did not start: {line!r}"
        return proc

    def run_code(self, code: str) -> str:
        """Run Python ``code`` as a process of this enclave; return its stdout."""
        done = subprocess.run(
            [sys.executable, "-c", code], env=self.env, capture_output=True, text=True, timeout=30
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    def stop(self) -> None:
        for proc in self.processes:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdout:
                proc.stdout.close()


@pytest.fixture
def make_enclave(nitro_home: Path) -> Iterator[Callable[[int], FakeEnclave]]:
    enclaves: list[FakeEnclave] = []

    def make(cid: int) -> FakeEnclave:
        enclave = FakeEnclave(nitro_home, cid)
        enclaves.append(enclave)
        return enclave

    yield make
    for enclave in enclaves:
        enclave.stop()
    for enclave in enclaves:  # every enclave program closed its listeners: no file left
        vsock_dir = enclave.run_dir / "vsock"
        assert not vsock_dir.exists() or not os.listdir(vsock_dir)


def recv_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)
