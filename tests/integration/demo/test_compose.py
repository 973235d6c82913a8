"""docker-compose.yml: valid for compose, and the stack runs the demo to a verified round trip.

The compose tool is run as a program here (and only here): it is the tool under test.
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


def _project(tmp: Path) -> Path:
    """A copy of the compose file in its own directory (build/compose is relative to it)."""
    shutil.copy2(ROOT / "docker-compose.yml", tmp / "docker-compose.yml")
    return tmp


def _service_block(config: str, service: str) -> str:
    """The lines of one service in ``compose config``'s normalised YAML (services at 2 spaces)."""
    lines = config.splitlines()
    services = lines.index("services:")
    start = lines.index(f"  {service}:", services) + 1
    block = []
    for line in lines[start:]:
        if not line.startswith("    "):
            break
        block.append(line)
    return "\n".join(block)


def test_compose_file_is_valid_and_isolates_the_enclave(tmp_path: Path) -> None:
    project = _project(tmp_path)
    (project / "build" / "compose" / "tools").mkdir(parents=True)

    result = subprocess.run(
        [*_compose(), "config"], cwd=project, capture_output=True, text=True, timeout=60, check=False
    )

    assert result.returncode == 0, result.stderr
    config = result.stdout
    enclave = _service_block(config, "enclave")
    assert "network_mode: none" in enclave and "read_only: true" in enclave
    assert "- ALL" in enclave and "/run/nitro-emu" in enclave
    assert "nsm-state" not in enclave  # the CA keys are never mounted into the enclave
    kms = _service_block(config, "kms")
    assert "nsm-state" not in kms and "read_only: true" in kms  # it trusts the exported root only
    networks = config[config.index("networks:"):config.index("services:")]
    assert "internal: true" in networks  # the parent-KMS network has no route out


@pytest.mark.slow
def test_compose_stack_serves_the_secret(tmp_path: Path, docker_client) -> None:  # type: ignore[no-untyped-def]
    from emulator.demo.compose import prepare

    compose = _compose()
    project = _project(tmp_path)
    prepare(project / "build" / "compose", docker=docker_client, say=lambda _: None)
    name = f"nitroemutest{uuid.uuid4().hex[:8]}"
    command = [*compose, "-p", name]
    try:
        result = subprocess.run(
            [*command, "up", "--build", "--abort-on-container-exit", "--exit-code-from", "parent"],
            cwd=project, capture_output=True, text=True, timeout=300, check=False,
        )
    finally:
        subprocess.run([*command, "down", "-v", "--timeout", "5"], cwd=project, capture_output=True, timeout=120,
                       check=False)

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "PCR0" in result.stdout and "matches the build" in result.stdout
    assert "round trip: the enclave's SHA-256 of the secret matches" in result.stdout
    # then the AWS way, through the kms service and its vsock-proxy
    assert "KMS key" in result.stdout and "releases only to PCR0" in result.stdout
    assert "the enclave fetched 'kms' from KMS itself (Decrypt with Recipient)" in result.stdout
    assert result.stdout.count("round trip: the enclave's SHA-256 of the secret matches") == 2
    left = docker_client.containers.list(all=True, filters={"label": f"com.docker.compose.project={name}"})
    assert left == []
