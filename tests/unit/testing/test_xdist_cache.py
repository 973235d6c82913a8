"""Under pytest-xdist the workers' state dirs share one build cache (no Docker needed: the
factory fixture touches the engine only when a test starts an enclave)."""

from __future__ import annotations

from pathlib import Path

import pytest

from emulator.settings import Settings

pytest_plugins = ["pytester"]

USER_TESTS = """\
import os


def test_one(nitro_enclave_factory, tmp_path_factory):
    _record(nitro_enclave_factory)


def test_two(nitro_enclave_factory):
    _record(nitro_enclave_factory)


def _record(factory):
    line = f"{os.environ['PYTEST_XDIST_WORKER']} {factory.home} {os.environ.get('NITRO_EMU_CACHE_DIR')}\\n"
    with open(os.environ["RECORD"], "a") as record:
        record.write(line)
"""


@pytest.mark.slow
def test_xdist_workers_share_one_build_cache(pytester: pytest.Pytester, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    record = tmp_path / "record.txt"
    monkeypatch.setenv("RECORD", str(record))
    monkeypatch.delenv("NITRO_EMU_CACHE_DIR", raising=False)
    pytester.makepyfile(test_user=USER_TESTS)
    result = pytester.runpytest_subprocess("-n", "2", "-p", "no:cacheprovider", "--dist", "each", timeout=120)
    result.assert_outcomes(passed=4)
    rows = [line.split() for line in record.read_text().splitlines()]
    assert {worker for worker, _, _ in rows} == {"gw0", "gw1"}
    assert len({home for _, home, _ in rows}) == 2  # a state dir per worker
    caches = {cache for _, _, cache in rows}
    assert len(caches) == 1 and caches != {"None"}
    (cache,) = caches
    assert all(not cache.startswith(home) for _, home, _ in rows)


def test_the_cache_dir_defaults_into_the_home_and_follows_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NITRO_EMU_HOME", str(tmp_path / "h"))
    monkeypatch.delenv("NITRO_EMU_CACHE_DIR", raising=False)
    assert Settings.from_env().cache_dir == tmp_path / "h" / "cache"
    assert Settings(home=tmp_path).cache_dir == tmp_path / "cache"
    monkeypatch.setenv("NITRO_EMU_CACHE_DIR", str(tmp_path / "shared"))
    assert Settings.from_env().cache_dir == tmp_path / "shared"
