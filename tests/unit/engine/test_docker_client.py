"""Opening the engine: a dead one is one clear error, and nothing is left open."""

from __future__ import annotations

import gc
import warnings

import pytest

from emulator.engine.client import EngineUnavailableError, docker_client


def test_dead_engine_is_a_clear_error_that_leaks_no_socket(
    monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(EngineUnavailableError, match="no Docker engine answers.*DOCKER_HOST"):
            docker_client()
        gc.collect()
    leaks = [w for w in caught if issubclass(w.category, ResourceWarning)]
    assert leaks == [], [str(w.message) for w in leaks]
