"""The engine transport where the engine cannot see this machine's files, as on a laptop.

Docker Desktop, Colima, remote and rootless engines run the engine in another VM, machine or
mount namespace. Here the host side runs in a private mount namespace (``unshare -m``) with
``HOME``, ``TMPDIR`` and ``NITRO_EMU_HOME`` on a tmpfs mounted there, so no path nitro-emu
makes is visible to the engine. Under ``auto`` the runtime, VSOCK, shim and plugin tests run
again there (on the engine transport, which auto must pick); ``host`` is refused at once with
the reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

pytestmark = [pytest.mark.docker, pytest.mark.timeout(1800)]

ROOT = Path(__file__).resolve().parents[3]
#: What runs a second time on the engine transport (docs/transport.md "Tested here").
SUITES = (
    "tests/integration/vsock",
    "tests/integration/shim/test_shim_docker.py",
    "tests/integration/testing/test_pytest_plugin.py",
    "tests/integration/enclave/test_runtime.py",
)


def _unshare_available() -> str | None:
    if shutil.which("unshare") is None:
        return "util-linux's unshare is not installed"
    if os.geteuid() != 0:
        return "a private mount namespace needs root here (unshare -m)"
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        return f"unshare -m fails here: {probe.stderr.strip()}"
    return None


@pytest.fixture(scope="module")
def laptop() -> Iterator[Path]:
    """A directory that a tmpfs covers inside the namespace; the engine sees it empty."""
    why = _unshare_available()
    if why is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must test the engine transport on a laptop-like engine, but {why}")
        pytest.skip(why)
    root = Path(tempfile.mkdtemp(prefix="nitro-emu-laptop-"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


def _run_on_laptop(root: Path, command: Sequence[str], *, transport: str, timeout: float) -> subprocess.CompletedProcess[str]:
    script = (
        "set -e\n"
        f"mount -t tmpfs -o size=4g,mode=0755 nitro-emu-laptop {root}\n"
        f"mkdir -p {root}/home {root}/tmp {root}/nitro\n"
        f"export HOME={root}/home TMPDIR={root}/tmp NITRO_EMU_HOME={root}/nitro\n"
        'exec "$@"\n'
    )
    env = dict(os.environ, NITRO_EMU_TRANSPORT=transport, PYTHONPATH=str(ROOT), PYTHONDONTWRITEBYTECODE="1")
    env.pop("XDG_CACHE_HOME", None)
    env.pop("PYTEST_XDIST_WORKER", None)
    return subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "laptop", *command],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False,
    )


def test_host_transport_is_refused_with_the_reason(laptop: Path, probe_eif) -> None:  # type: ignore[no-untyped-def]
    eif_path, _ = probe_eif
    result = _run_on_laptop(
        laptop,
        [sys.executable, "-m", "emulator.cli", "run-enclave", "--eif-path", str(eif_path), "--memory", "1024",
         "--cpu-count", "1"],
        transport="host", timeout=180,
    )
    assert result.returncode != 0, result.stdout
    assert "[ E36 ]" in result.stderr
    assert "NITRO_EMU_TRANSPORT=engine" in result.stderr, result.stderr
    assert "cannot use the host's files" in result.stderr


_SUITES_THEN_CHOICE = """
import subprocess, sys
code = subprocess.call([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rfE", *sys.argv[1:]])
from emulator.engine.client import docker_client
from emulator.settings import get_settings
from emulator.transport.selection import choose
print("laptop transport:", choose(get_settings(), docker_client()).describe(), flush=True)
sys.exit(code)
"""


def test_suites_pass_on_the_engine_transport_chosen_by_auto(laptop: Path) -> None:
    result = _run_on_laptop(
        laptop, [sys.executable, "-c", _SUITES_THEN_CHOICE, "--basetemp", f"{laptop}/tmp/pytest", *SUITES],
        transport="auto", timeout=1700,
    )
    tail = "\n".join((result.stdout + result.stderr).splitlines()[-60:])
    assert result.returncode == 0, f"the suites failed on the engine transport:\n{tail}"
    assert "laptop transport: engine (" in result.stdout, tail  # auto chose it, from the probe
    summary = [line for line in result.stdout.splitlines() if " passed" in line and " in " in line]
    print(summary[-1] if summary else tail)
