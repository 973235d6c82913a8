"""The pytest plugin, run the way users run it: inner pytest sessions via ``pytester``.

Each inner session gets its own state dir (``--nitro-state-dir``, i.e. NITRO_EMU_HOME); the
EIF cache is the default one, so the echo enclave's EIF is built once per machine, and its
image stays cached by content tag (``nitro-emu-test/<digest>``).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


pytest_plugins = ["pytester"]
pytestmark = [pytest.mark.docker, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[3]

ECHO_APP = """\
import sys
sys.path.insert(0, "/app")
import vsock_enclave

with vsock_enclave.listen(5000) as listener:
    print("echo: listening on 5000", flush=True)
    while True:
        conn, peer = listener.accept()
        with conn:
            data = conn.recv(1024)
            if data == b"die":
                print("echo: told to die, exiting with status 3", flush=True)
                sys.exit(3)
            conn.sendall(data)
"""

USER_TESTS = """\
import time
import pytest

@pytest.mark.nitro_enclave(dockerfile_dir="echo")
def test_echo(nitro_enclave):
    with nitro_enclave.connect(5000) as sock:
        sock.sendall(b"ping")
        assert sock.recv(4) == b"ping"
    document = nitro_enclave.attest(nonce=b"n0", user_data=b"hello")
    assert document.nonce == b"n0" and document.user_data == b"hello"
    assert document.pcrs[0] == nitro_enclave.measurements[0]
    assert "listening" in nitro_enclave.logs()

@pytest.mark.nitro_enclave(dockerfile_dir="echo")
def test_assertion_fails(nitro_enclave):
    assert nitro_enclave.cid < 0, "deliberately failing"

@pytest.mark.nitro_enclave(dockerfile_dir="echo", cpu_count=0)
def test_bad_marker(nitro_enclave):
    pass

@pytest.mark.nitro_enclave(dockerfile_dir="broken")
def test_broken_dockerfile(nitro_enclave):
    pass

@pytest.mark.nitro_enclave(dockerfile_dir="echo")
def test_enclave_dies(nitro_enclave):
    with nitro_enclave.connect(5000) as sock:
        sock.sendall(b"die")
    deadline = time.monotonic() + 20
    while nitro_enclave.is_running() and time.monotonic() < deadline:
        time.sleep(0.2)
"""

XDIST_TESTS = """\
import pytest

@pytest.mark.nitro_enclave(dockerfile_dir="echo")
@pytest.mark.parametrize("word", [b"one", b"two"])
def test_parallel(nitro_enclave, word, tmp_path_factory):
    with nitro_enclave.connect(5000) as sock:
        sock.sendall(word)
        assert sock.recv(8) == word
    line = f"{nitro_enclave.cid} {nitro_enclave.name} {nitro_enclave.home}\\n"
    with open({record!r}, "a") as record:
        record.write(line)
"""


@pytest.fixture(scope="module")
def engine(docker_client, base_image) -> None:  # type: ignore[no-untyped-def]
    """The engine and the base image the echo enclave is built FROM."""


def _write_echo(directory: Path) -> Path:
    echo = directory / "echo"
    echo.mkdir(exist_ok=True)
    (echo / "Dockerfile").write_text(
        "FROM nitro-emu/base:bookworm\nCOPY vsock_enclave.py echo.py /app/\n"
        'CMD ["/usr/bin/python3", "-u", "/app/echo.py"]\n'
    )
    (echo / "echo.py").write_text(ECHO_APP)
    shutil.copy2(ROOT / "emulator" / "vsock" / "enclave.py", echo / "vsock_enclave.py")  # stdlib only: runs flat
    return echo


def _leftovers(docker_client, home: Path) -> list[str]:  # type: ignore[no-untyped-def]
    """Containers of this state dir, and enclave records still in it."""
    containers = docker_client.containers.list(all=True, filters={"label": f"org.nitro-emu.home={home}"})
    records = list((home / "enclaves").glob("*/enclave.json")) if (home / "enclaves").is_dir() else []
    return [c.name for c in containers] + [str(r) for r in records]


def _terminate_kept(line: str) -> None:
    """Stop the enclave a summary line names (``NITRO_EMU_HOME=... ... --enclave-id ID``)."""
    from emulator.enclave.runtime import terminate_enclave
    from emulator.testing.handles import home_env

    home = line.split("NITRO_EMU_HOME=", 1)[1].split()[0]
    enclave_id = line.rsplit("--enclave-id ", 1)[1].strip()
    with home_env(Path(home)):
        assert terminate_enclave(enclave_id).enclave_id == enclave_id


def test_user_tests_under_xdist_pass_and_failures_name_their_cause(
    pytester: pytest.Pytester, tmp_path_factory: pytest.TempPathFactory, engine: None, docker_client
) -> None:  # type: ignore[no-untyped-def]
    """One inner ``-n 2`` session (one session keeps this module fast) with:

    a 10-line user test that passes; two parallel tests recording their enclave's CID, name
    and state dir; a failing test whose enclave ``--nitro-keep=failed`` keeps; a bad marker
    value; a Dockerfile that fails; an enclave that dies.
    """
    _write_echo(pytester.path)
    broken = pytester.path / "broken"
    broken.mkdir()
    (broken / "Dockerfile").write_text("FROM nitro-emu/base:bookworm\nRUN echo compiling && exit 7\n")
    record = tmp_path_factory.mktemp("rec") / "enclaves.txt"
    pytester.makepyfile(
        test_user=USER_TESTS, test_parallel=XDIST_TESTS.replace("{record!r}", repr(str(record)))
    )
    home = tmp_path_factory.mktemp("h")

    try:
        result = pytester.runpytest_subprocess(
            "-n", "2", f"--nitro-state-dir={home}", "--nitro-keep=failed", "-p", "no:cacheprovider", timeout=400
        )
        _check_session(result, home, record, docker_client)
    finally:
        _terminate_all(home)  # the kept enclave, even when a check above failed


def _terminate_all(home: Path) -> None:
    from emulator.enclave.runtime import terminate_all
    from emulator.testing.handles import home_env

    for worker_home in home.iterdir():
        with home_env(worker_home):
            terminate_all()


def _check_session(result: pytest.RunResult, home: Path, record: Path, docker_client) -> None:  # type: ignore[no-untyped-def]
    result.assert_outcomes(passed=3, failed=2, errors=2)
    output = result.stdout.str()
    # A failed test shows its enclave's output, and --nitro-keep=failed kept that enclave.
    assert "nitro-emu enclave test_assertion_fails-gw" in output and "echo: listening on 5000" in output
    summary = output.split("nitro-emu: enclaves left running (--nitro-keep)", 1)[1]
    kept = [line for line in summary.splitlines() if "terminate-enclave --enclave-id" in line]
    assert len(kept) == 1 and kept[0].startswith("test_assertion_fails-gw")
    _terminate_kept(kept[0])  # the printed command's home and id are right
    # A bad marker value: named, with what is allowed.
    assert "cpu_count=0 must be an integer >= 1" in output
    # A Dockerfile that does not build: the cause and the build's last lines.
    assert "failed to build" in output and "compiling" in output
    # An enclave that died during the test: failed, with its last output.
    assert "is no longer running (it died during the test)" in output
    assert "echo: told to die, exiting with status 3" in output
    # xdist: each worker has its own state dir; CIDs and names never repeat.
    rows = [line.split() for line in record.read_text().splitlines()]
    assert len(rows) == 2
    cids, names, homes = zip(*rows)
    assert len(set(cids)) == 2 and len(set(names)) == 2
    assert all(Path(h).parent == home and Path(h).name.startswith("gw") for h in homes)
    # Nothing left running, in any worker's state dir.
    for worker_home in home.iterdir():
        assert _leftovers(docker_client, worker_home) == []
