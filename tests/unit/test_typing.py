"""The ``ca``, ``fake_nsm`` and ``emulator`` packages pass ``mypy --strict`` (STYLE.md §7).

``emulator`` imports the Docker SDK, which ships no types: mypy needs ``types-docker``
(in the ``test`` extra). mypy runs in a subprocess with this interpreter, from the
repository root, so it reads ``[tool.mypy]`` in pyproject.toml and keeps its incremental
cache in ``.mypy_cache``.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("ca", "fake_nsm", "emulator")


def _require_mypy() -> None:
    """Skip loudly when mypy is absent; fail under CI=true (as conftest's ``_missing``)."""
    if importlib.util.find_spec("mypy") is not None:
        return
    reason = f"mypy is not installed in {sys.executable}: pip install -e '.[test]'"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{reason} (CI=true: this must be present in CI)")
    pytest.skip(reason)


def test_checked_packages_are_those_configured_in_pyproject() -> None:
    """``mypy`` alone (``[tool.mypy] files``) and this test check the same packages."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    with (ROOT / "pyproject.toml").open("rb") as handle:
        configured = tomllib.load(handle)["tool"]["mypy"]["files"]
    assert sorted(configured) == sorted(PACKAGES)


@pytest.mark.timeout(180)
def test_packages_pass_mypy_strict() -> None:
    _require_mypy()
    # --strict on the command line too, so loosening pyproject.toml cannot weaken this test.
    command = [sys.executable, "-m", "mypy", "--strict", "--config-file", "pyproject.toml", *PACKAGES]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=170, check=False)
    output = (result.stdout + result.stderr).strip()
    hint = "\n(import-untyped for docker? pip install types-docker)" if "import-untyped" in output else ""
    assert result.returncode == 0, f"mypy --strict {' '.join(PACKAGES)} failed:\n{output}{hint}"
    assert "Success: no issues found" in output, output
