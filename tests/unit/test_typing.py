"""The ``ca`` and ``fake_nsm`` packages pass ``mypy --strict`` (STYLE.md §7).

mypy runs in a subprocess with this interpreter, from the repository root, so it reads
``[tool.mypy]`` in pyproject.toml and keeps its incremental cache in ``.mypy_cache``.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("ca", "fake_nsm")


def _require_mypy() -> None:
    """Skip loudly when mypy is absent; fail under CI=true (as conftest's ``_missing``)."""
    if importlib.util.find_spec("mypy") is not None:
        return
    reason = f"mypy is not installed in {sys.executable}: pip install -e '.[test]'"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{reason} (CI=true: this must be present in CI)")
    pytest.skip(reason)


@pytest.mark.timeout(180)
def test_ca_and_fake_nsm_pass_mypy_strict() -> None:
    _require_mypy()
    # --strict on the command line too, so loosening pyproject.toml cannot weaken this test.
    command = [sys.executable, "-m", "mypy", "--strict", "--config-file", "pyproject.toml", *PACKAGES]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=170, check=False)
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 0, f"mypy --strict {' '.join(PACKAGES)} failed:\n{output}"
    assert "Success: no issues found" in output, output
