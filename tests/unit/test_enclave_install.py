"""The in-enclave API installs in one step: the wheel with ``--no-deps`` plus ``cbor2``.

An enclave image (or a real Nitro enclave) gets ``fake_nsm.client`` and the VSOCK API
without docker, cryptography or pycose. The test builds the project's wheel, installs it into
a fresh venv that has nothing but cbor2, and from there asks a fake NSM for DescribeNSM and
answers a host VSOCK connection, as enclave code does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unit.fake_nsm.nsm_helpers import make_device

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow

ENCLAVE_PROGRAM = r"""
import importlib.util, json, sys
from fake_nsm.client import NsmClient
from emulator.vsock import enclave
from emulator import vsock_enclave          # the 0.1 path still works
assert vsock_enclave.listen is enclave.listen
absent = [name for name in ("docker", "cryptography", "pycose") if importlib.util.find_spec(name)]
description = NsmClient().describe_nsm()
listener = enclave.listen(5000)
print(json.dumps({"absent_but_found": absent, "max_pcrs": description.max_pcrs,
                  "modules": sorted(m for m in sys.modules if m.split(".")[0] in ("emulator", "fake_nsm", "ca"))}),
      flush=True)
conn, peer = listener.accept()
conn.sendall(conn.recv(64).upper())
conn.close()
"""


@pytest.fixture(scope="module")
def enclave_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv holding only cbor2 and this project's wheel, installed with ``--no-deps``."""
    work = tmp_path_factory.mktemp("wheel")
    # pip runs outside the source tree and without PYTHONPATH: there, the tree's own
    # egg-info would read as "already installed" and nothing would be installed.
    clean = {name: value for name, value in os.environ.items() if name != "PYTHONPATH"}
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(work), str(ROOT)],
        capture_output=True, text=True, timeout=600, cwd=work, env=clean,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = work.glob("nitro_emulator-*.whl")
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps", str(wheel), "cbor2"],
        capture_output=True, text=True, timeout=600, cwd=work, env=clean,
    )
    assert installed.returncode == 0, installed.stderr
    return python


@pytest.fixture
def short_home() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="emu-") as name:
        yield Path(name)


def test_wheel_without_dependencies_serves_enclave_code(
    enclave_python: Path, short_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fake_nsm.server import NsmServer

    run_dir = short_home / "run" / "16"
    (run_dir / "vsock").mkdir(parents=True)
    monkeypatch.setenv("NITRO_EMU_HOME", str(short_home))
    socket_path = run_dir / "nsm.sock"
    environment = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "NITRO_EMU_NSM_SOCKET": str(socket_path),
        "NITRO_EMU_VSOCK_ROOT": str(run_dir),
        "NITRO_EMU_CID": "16",
    }
    with NsmServer(socket_path, make_device(tmp_path / "ca")):
        with subprocess.Popen(
            [str(enclave_python), "-I", "-c", ENCLAVE_PROGRAM], cwd=tmp_path, env=environment,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        ) as program:
            try:
                _talk_to(program)
            finally:
                if program.poll() is None:
                    program.kill()


def _talk_to(program: subprocess.Popen[str]) -> None:
    from emulator.vsock import host

    assert program.stdout is not None and program.stderr is not None
    first = program.stdout.readline()
    assert first, program.stderr.read()
    report = json.loads(first)
    assert report["absent_but_found"] == []
    assert report["max_pcrs"] == 32
    # only the in-enclave modules were imported: nothing host-side came along
    assert set(report["modules"]) <= {
        "emulator", "emulator.vsock", "emulator.vsock.enclave", "emulator.vsock_enclave",
        "fake_nsm", "fake_nsm.client", "fake_nsm.codec", "fake_nsm.errors",
    }, report["modules"]
    with host.connect(16, 5000, timeout=10) as sock:
        sock.sendall(b"ping")
        assert sock.recv(64) == b"PING"
    assert program.wait(timeout=30) == 0, program.stderr.read()
