"""docker-compose.yml: valid for compose, and the stack runs the demo to a verified round trip.

The stack is the demo's parent as a container that drives this engine through its socket, so
its enclave runs with a real supervisor on the engine transport (the probe must pick it: the
container's files are not the engine's). The compose tool is run as a program here (and only
here): it is the tool under test.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

pytestmark = [pytest.mark.docker]

ROOT = Path(__file__).resolve().parents[3]
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _compose() -> list[str]:
    found = shutil.which("docker-compose")
    if found is None:
        reason = "docker-compose is not installed (apt-get install docker-compose)"
        if IN_CI:
            pytest.fail(f"{reason} (CI=true: it must be present in CI)")
        pytest.skip(reason)
    return [found]


def test_compose_file_is_valid_and_builds_from_a_public_python_image() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NITRO_EMU_COMPOSE_")}
    result = subprocess.run([*_compose(), "config"], cwd=ROOT, capture_output=True, text=True, timeout=60,
                            check=False, env=env)
    assert result.returncode == 0, result.stderr
    config = result.stdout
    assert "BASE: python:3.11-slim" in config and "INSTALL: pip" in config  # no prepare step needed
    assert "/var/run/docker.sock" in config and "network_mode: none" in config
    assert "NITRO_EMU_TRANSPORT: auto" in config


@pytest.mark.slow
def test_make_compose_runs_the_demo_on_the_engine_transport(docker_client) -> None:  # type: ignore[no-untyped-def]
    from emulator.demo.compose import TOOLS_IMAGE, prepare

    compose = _compose()
    prepare(ROOT / "build" / "compose", docker=docker_client, say=lambda _: None)
    name = f"nitroemutest{uuid.uuid4().hex[:8]}"
    command = [*compose, "-p", name]
    env = dict(os.environ, NITRO_EMU_COMPOSE_BASE=TOOLS_IMAGE, NITRO_EMU_COMPOSE_INSTALL="none")
    try:
        result = subprocess.run(
            [*command, "up", "--build", "--abort-on-container-exit", "--exit-code-from", "parent"],
            cwd=ROOT, capture_output=True, text=True, timeout=600, check=False, env=env,
        )
    finally:
        subprocess.run([*command, "down", "-v", "--timeout", "5"], cwd=ROOT, capture_output=True, timeout=120,
                       check=False, env=env)

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "transport: engine (" in result.stdout  # chosen by the probe, not by a setting
    assert "matches the build" in result.stdout
    assert "round trip: the enclave's SHA-256 of the secret matches" in result.stdout
    assert "the enclave fetched it (Decrypt with Recipient)" in result.stdout
    assert "demo OK" in result.stdout
    left = docker_client.containers.list(all=True, filters={"label": f"com.docker.compose.project={name}"})
    assert left == []
    # the demo's enclave, companion and volume went with it
    assert docker_client.containers.list(all=True, filters={"label": "org.nitro-emu.companion-of"}) == []
