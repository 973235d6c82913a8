"""AWS's EifBuilder as a test tool: build ``aws_eif_builder/`` once, cached by source hash.

The binary lives in ``~/.cache/nitro-emu/aws-eif-builder/<hash of Cargo.toml, Cargo.lock and
src/main.rs>/``; cargo's target dir beside it keeps the compiled crates between sessions.
No cargo: a skip with the reason (a failure under CI=true, via ``tests.conftest._missing``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

SOURCE = Path(__file__).resolve().parent / "aws_eif_builder"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "nitro-emu" / "aws-eif-builder"
BINARY = "aws-eif-builder"


class BuilderUnavailable(Exception):
    """cargo is absent or the crate did not build."""


def source_hash() -> str:
    digest = hashlib.sha256()
    for name in ("Cargo.toml", "Cargo.lock", "src/main.rs"):
        digest.update(name.encode() + b"\0" + (SOURCE / name).read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def ensure_builder() -> Path:
    """The path of the built ``aws-eif-builder`` (built on first use)."""
    target = CACHE / source_hash() / BINARY
    if target.is_file():
        return target
    cargo = shutil.which("cargo")
    if cargo is None:
        raise BuilderUnavailable("cargo is not installed: the EIFs of AWS's own EifBuilder cannot be built")
    env = dict(os.environ, CARGO_TARGET_DIR=str(CACHE / "target"))
    result = subprocess.run(
        [cargo, "build", "--release", "--locked", "--manifest-path", str(SOURCE / "Cargo.toml")],
        capture_output=True, text=True, env=env, check=False, timeout=1800,
    )
    if result.returncode != 0:
        raise BuilderUnavailable(f"cargo build of {SOURCE} failed:\n{result.stderr[-3000:]}")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as staging:
        staging.write((CACHE / "target" / "release" / BINARY).read_bytes())
    os.chmod(staging.name, 0o755)
    os.replace(staging.name, target)
    return target


def build_eif(builder: Path, output: Path, *, kernel: Path, cmdline: Path, ramdisks: list[Path],
              sign: tuple[Path, Path] | None = None) -> dict[str, str]:
    """Run the crate's EifBuilder; returns the measurements it printed (its get_pcrs)."""
    command = [str(builder), str(kernel), str(cmdline), str(output), *map(str, ramdisks)]
    if sign is not None:
        command += ["--sign", str(sign[0]), str(sign[1])]
    result = subprocess.run(command, capture_output=True, text=True, check=True, timeout=300)
    measurements: dict[str, str] = json.loads(result.stdout)
    return measurements


def _run_json(command: list[str]) -> dict[str, object]:
    result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=300)
    if result.returncode != 0:
        raise AssertionError(f"{command[1]} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    described: dict[str, object] = json.loads(result.stdout)
    return described


def describe_eif(builder: Path, eif: Path) -> dict[str, object]:
    """The crate's EifReader on ``eif``: {"Measurements", "CheckCRC", "IsSigned", "SignatureCheck"}."""
    return _run_json([str(builder), "--describe", str(eif)])


def sign_existing(builder: Path, eif: Path, cert: Path, key: Path) -> dict[str, object]:
    """Sign ``eif`` in place with the crate's EifSigner::sign_image (nitro-cli 1.4's sign-eif); describe it."""
    return _run_json([str(builder), "--sign-existing", str(eif), str(cert), str(key)])
