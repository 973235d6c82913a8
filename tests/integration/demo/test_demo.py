"""``make demo`` from a clean clone: sets itself up, runs the example end to end, cleans up."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = [pytest.mark.docker, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[3]


def test_make_demo_in_a_clean_clone(tmp_path: Path, docker_client) -> None:  # type: ignore[no-untyped-def]
    if shutil.which("make") is None or shutil.which("git") is None:
        pytest.skip("make and git are needed to run the demo from a clone")
    clone = tmp_path / "repo"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True, timeout=120)

    result = subprocess.run(
        ["make", "demo"], cwd=clone, capture_output=True, text=True, timeout=900, check=False
    )

    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert (clone / ".venv" / ".installed").exists()
    for expected in ("PCR0 ", "PCR1 ", "PCR2 ", "matches the build", "REFUSED: PCR0 differs", "demo OK"):
        assert expected in result.stdout, result.stdout[-3000:]
    assert "round trip: the enclave's SHA-256 of the secret matches" in result.stdout
    # It cleaned up: its state dir is gone and no container of it is left.
    work = re.search(r"cleanup: enclave terminated; removed (\S+)", result.stdout)
    assert work is not None
    assert not Path(work.group(1)).exists()
    left = docker_client.containers.list(all=True, filters={"label": f"org.nitro-emu.home={work.group(1)}/home"})
    assert left == []
