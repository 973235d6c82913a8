"""run-enclave's checks and records without Docker: nitro-cli's codes, ids, names, JSON."""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from emulator.enclave import resources as res
from emulator.enclave.state import (
    EnclaveInfo,
    home_lock,
    list_records,
    process_start_ticks,
    read_record,
    supervisor_alive,
    write_record,
)
from emulator.errors import NitroCliError
from emulator.enclave.reaper import log_path, reap
from emulator.settings import Settings


def code_of(call, *args, **kwargs) -> int:  # type: ignore[no-untyped-def]
    with pytest.raises(NitroCliError) as caught:
        call(*args, **kwargs)
    return caught.value.code


def sample(enclave_id: str = "i-0123456789abcdef0-enc0190a1b2c3d4e5f6", **changes) -> EnclaveInfo:  # type: ignore[no-untyped-def]
    info = EnclaveInfo(
        enclave_id=enclave_id, name="app", cid=16, process_id=os.getpid(), cpu_ids=(1, 3),
        memory_mib=512, state="RUNNING", flags="DEBUG_MODE",
        measurements={"HashAlgorithm": "Sha384 { ... }", "PCR0": "00" * 48, "PCR1": "11" * 48, "PCR2": "22" * 48},
        eif_path="/x/app.eif", instance_id="i-0123456789abcdef0", started_at_ms=1_700_000_000_000,
        image_name="app", image_version="1.0", metadata={"BuildTool": "nitro-emu"},
        process_start=process_start_ticks(os.getpid()),
    )
    return info.evolve(**changes)


# --- memory (E03, E26, E29) -------------------------------------------------------------------

@pytest.mark.parametrize(("text", "mib"), [("512", 512), ("512M", 512), ("2G", 2048), ("1t", 1024 * 1024)])
def test_memory_accepts_nitro_cli_suffixes(text: str, mib: int) -> None:
    assert res.parse_memory(text) == mib


@pytest.mark.parametrize("text", ["", "lots", "256_mb", "-5", "1.5G", "10K"])
def test_memory_rejects_bad_values_with_e03(text: str) -> None:
    assert code_of(res.parse_memory, text) == 3


def test_memory_must_be_four_times_the_eif_and_positive() -> None:
    eif = 100 * 1024 * 1024 + 1  # 100 MiB and a byte: rounds up to 101 MiB
    assert code_of(res.check_memory, 0, eif) == 26
    with pytest.raises(NitroCliError) as caught:
        res.check_memory(403, eif)
    assert caught.value.code == 26 and "404" in caught.value.message
    res.check_memory(404, eif)
    assert code_of(res.check_memory, 32, 1024) == 29  # the driver's 64 MiB minimum
    res.check_memory(64, 1024)


# --- CPUs (E20, E21, E22) ---------------------------------------------------------------------

def test_cpu_count_takes_the_lowest_free_pool_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(res.ENV_CPU_POOL, "1-4")
    assert res.allocate_cpus(2, None, in_use=[]) == (1, 2)
    assert res.allocate_cpus(2, None, in_use=[1, 2]) == (3, 4)
    assert code_of(res.allocate_cpus, 3, None, in_use=[1, 2]) == 22
    assert code_of(res.allocate_cpus, 0, None, in_use=[]) == 3


def test_cpu_ids_are_checked_against_the_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(res.ENV_CPU_POOL, "1-3,6")
    assert res.allocate_cpus(None, [6, 1], in_use=[]) == (6, 1)
    assert code_of(res.allocate_cpus, None, [1, 1], in_use=[]) == 20
    assert code_of(res.allocate_cpus, None, [0], in_use=[]) == 21  # CPU 0 stays with the parent
    assert code_of(res.allocate_cpus, None, [2], in_use=[2]) == 21
    assert code_of(res.allocate_cpus, None, None, in_use=[]) == 1
    assert code_of(res.allocate_cpus, 1, [1], in_use=[]) == 2


def test_a_malformed_pool_is_a_cpu_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(res.ENV_CPU_POOL, "1-3-7")
    assert code_of(res.cpu_pool) == 24


def test_the_default_pool_is_31_cpus_and_e22_names_both_knobs(monkeypatch: pytest.MonkeyPatch) -> None:
    """The 32nd one-CPU enclave of a home gets E22 saying how the pool is made and changed."""
    monkeypatch.delenv(res.ENV_CPU_POOL, raising=False)
    monkeypatch.delenv(res.ENV_CPU_COUNT, raising=False)
    assert res.cpu_pool() == tuple(range(1, 32))
    with pytest.raises(NitroCliError) as caught:
        res.allocate_cpus(1, None, in_use=range(1, 32))
    message = caught.value.message
    assert caught.value.code == 22 and message.startswith("Insufficient CPUs available in the pool.")
    assert "0 of the pool's 31 CPUs are free, 31 held by running enclaves" in message
    assert "the default 31 CPUs, 1-31" in message
    assert "$NITRO_EMU_CPU_COUNT=N (allocator.yaml's cpu_count)" in message
    assert "$NITRO_EMU_CPU_POOL=LIST (its cpu_pool)" in message


def test_cpu_count_sets_the_pool_size_as_allocator_yaml_does(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(res.ENV_CPU_POOL, raising=False)
    monkeypatch.setenv(res.ENV_CPU_COUNT, "64")
    assert res.cpu_pool() == tuple(range(1, 65))  # CPU 0 stays with the parent
    assert res.allocate_cpus(1, None, in_use=range(1, 64)) == (64,)
    with pytest.raises(NitroCliError) as caught:
        res.allocate_cpus(1, None, in_use=range(1, 65))
    assert caught.value.code == 22 and "$NITRO_EMU_CPU_COUNT=64: CPUs 1-64" in caught.value.message
    for bad in ("0", "lots", "-3", "9000"):
        monkeypatch.setenv(res.ENV_CPU_COUNT, bad)
        assert code_of(res.cpu_pool) == 24


def test_cpu_count_and_cpu_pool_conflict_and_cpu_0_is_the_parents(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(res.ENV_CPU_COUNT, "4")
    monkeypatch.setenv(res.ENV_CPU_POOL, "1-4")
    with pytest.raises(NitroCliError) as caught:
        res.cpu_pool()
    assert caught.value.code == 24 and "set only one" in caught.value.message
    monkeypatch.delenv(res.ENV_CPU_COUNT)
    monkeypatch.setenv(res.ENV_CPU_POOL, "0-3")
    assert code_of(res.cpu_pool) == 24
    monkeypatch.setenv(res.ENV_CPU_POOL, "1-99999")
    assert code_of(res.cpu_pool) == 24
    monkeypatch.setenv(res.ENV_CPU_POOL, "2,3,6-9")
    with pytest.raises(NitroCliError) as caught:
        res.allocate_cpus(None, [4], in_use=[])
    assert caught.value.code == 21 and "$NITRO_EMU_CPU_POOL=2,3,6-9" in caught.value.message


def test_host_cpuset_gives_as_many_cpus_as_the_host_allows() -> None:
    assert res.host_cpuset([1, 3], host_cpus=4) == (1, 3)
    assert res.host_cpuset([2, 4], host_cpus=2) == (0, 1)  # collisions filled with other CPUs
    assert res.host_cpuset([1, 2, 3, 4], host_cpus=2) == (0, 1)  # capped at the host's count
    assert len(res.host_cpuset([5])) == 1


# --- CIDs and names ---------------------------------------------------------------------------

@pytest.mark.parametrize("cid", [1, 2, 3, 0xFFFFFFFF, 0x1_0000_0000])
def test_reserved_and_oversized_cids_are_invalid_arguments(cid: int) -> None:
    assert code_of(res.allocate_cid, cid, {}) == 3


def test_cids_are_unique_and_auto_assigned_from_16() -> None:
    assert res.allocate_cid(None, {}) == 16
    assert res.allocate_cid(0, {16: "a", 17: "b"}) == 18  # 0 means auto, as in nitro-cli
    assert res.allocate_cid(4, {16: "a"}) == 4
    with pytest.raises(NitroCliError) as caught:
        res.allocate_cid(16, {16: "i-x-ency"})
    assert caught.value.code == 29 and "i-x-ency" in caught.value.message


def test_names_default_to_the_eif_stem_and_are_made_unique() -> None:
    assert res.enclave_name(None, "/a/b/hello.eif", []) == "hello"
    assert res.enclave_name(None, "/a/b/hello.eif", ["hello", "hello_1"]) == "hello_2"
    assert res.enclave_name("mine", "/x.eif", ["mine"]) == "mine_1"
    assert res.enclave_name(None, "/a/noext", []) == "noext"


# --- ids ------------------------------------------------------------------------------------

def test_enclave_ids_carry_the_start_time_and_instance(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    instance = res.load_instance_id(settings)
    assert re.fullmatch(r"i-0[0-9a-f]{16}", instance)
    assert res.load_instance_id(settings) == instance  # persisted per home
    enclave_id, started = res.new_enclave_id(instance, now_ms=0x0190A1B2C3D4)
    assert started == 0x0190A1B2C3D4
    assert re.fullmatch(r"i-[0-9a-f]{17}-enc0190a1b2c3d4[0-9a-f]{4}", enclave_id)
    assert res.load_instance_id(settings, "i-0abcdef0123456789") == "i-0abcdef0123456789"
    assert code_of(res.load_instance_id, settings, "i-123") == 3


# --- JSON as nitro-cli prints it ---------------------------------------------------------------

def test_run_describe_terminate_json_keys_in_nitro_cli_order() -> None:
    info = sample()
    run = info.to_nitro_cli_json(kind="run")
    assert list(run) == ["EnclaveName", "EnclaveID", "ProcessID", "EnclaveCID", "NumberOfCPUs", "CPUIDs", "MemoryMiB"]
    assert run["NumberOfCPUs"] == 2 and run["CPUIDs"] == [1, 3]
    describe = info.to_nitro_cli_json()
    assert list(describe)[7:] == ["State", "Flags", "Measurements"]
    assert list(describe["Measurements"]) == ["HashAlgorithm", "PCR0", "PCR1", "PCR2"]
    with_metadata = info.to_nitro_cli_json(metadata=True)
    assert list(with_metadata)[10:] == ["ImageName", "ImageVersion", "Metadata"]
    assert info.to_nitro_cli_json(kind="terminate") == {
        "EnclaveName": "app", "EnclaveID": info.enclave_id, "Terminated": True,
    }


# --- records, liveness, reaping -----------------------------------------------------------------

def test_records_round_trip_and_liveness(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    info = sample()
    with home_lock(settings):
        write_record(settings, info)
    assert read_record(settings, info.enclave_id) == info
    assert supervisor_alive(info)
    assert not supervisor_alive(info.evolve(process_start=(info.process_start or 0) + 1))  # pid reused
    assert [r.enclave_id for r in list_records(settings)] == [info.enclave_id]


def test_reaper_removes_records_and_run_dirs_of_dead_supervisors(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = sample("i-0123456789abcdef0-enc0190a1b2c3d40001", process_id=dead.pid, process_start=None, cid=17)
    live = sample()
    with home_lock(settings):
        write_record(settings, stale)
        write_record(settings, live)
    for cid in (16, 17, 99):
        (settings.run_dir(cid) / "vsock").mkdir(parents=True)
    settings.parent_dir.mkdir(parents=True, exist_ok=True)
    assert reap(settings, client=None) == [stale.enclave_id]
    assert [r.enclave_id for r in list_records(settings)] == [live.enclave_id]
    assert sorted(p.name for p in settings.run_root.iterdir()) == ["16", "parent"]
    assert "supervisor" in log_path(settings, stale.enclave_id).read_text().splitlines()[0]


# --- CLI options --------------------------------------------------------------------------------

def _run_args(**values) -> argparse.Namespace:  # type: ignore[no-untyped-def]
    base = dict(eif_path=None, cpu_count=None, cpu_ids=None, memory=None, enclave_cid=None, debug_mode=False,
                attach_console=False, enclave_name=None, config=None, instance_id=None)
    base.update(values)
    return argparse.Namespace(**base)


def test_cli_flags_become_run_options() -> None:
    from emulator.cli.enclaves import _run_options

    options = _run_options(_run_args(eif_path="a.eif", memory="1G", cpu_ids=["1", "3"], attach_console=True))
    assert options["memory_mib"] == 1024 and options["cpu_ids"] == [1, 3]
    assert options["debug_mode"] is True  # --attach-console implies --debug-mode
    assert code_of(_run_options, _run_args(memory="512", cpu_count="2")) == 1
    assert code_of(_run_options, _run_args(eif_path="a.eif", memory="512", cpu_count="two")) == 3
    assert code_of(_run_options, _run_args(eif_path="a.eif", memory="512", cpu_count="2", enclave_cid="x")) == 3


def test_config_file_as_nitro_cli_reads_it(tmp_path: Path) -> None:
    from emulator.cli.enclaves import _run_options

    config = tmp_path / "c.json"
    config.write_text(json.dumps({"eif_path": "a.eif", "memory_mib": 512, "cpu_count": 2, "attach_console": True}))
    options = _run_options(_run_args(config=str(config)))
    assert options["memory_mib"] == 512 and options["cpu_count"] == 2 and options["debug_mode"] is True
    assert code_of(_run_options, _run_args(config=str(config), memory="512")) == 2
    assert code_of(_run_options, _run_args(config=str(tmp_path / "missing.json"))) == 19
    config.write_text("{not json")
    assert code_of(_run_options, _run_args(config=str(config))) == 17
    config.write_text(json.dumps({"eif_path": "a.eif", "memory_mib": 512}))
    assert code_of(_run_options, _run_args(config=str(config))) == 1


def test_explain_prints_nitro_cli_text(capsys: pytest.CaptureFixture[str]) -> None:
    from emulator.cli.app import main

    assert main(["explain", "--error-code", "E26"]) == 0
    assert "Insufficient memory requested" in capsys.readouterr().out
    assert main(["explain", "--error-code", "E99"]) == 3


def test_a_dead_engine_is_one_nitro_cli_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    from emulator.cli.app import main

    monkeypatch.setenv("NITRO_EMU_HOME", str(tmp_path / "h"))
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    with warnings.catch_warnings():
        # docker-py leaves the socket of a refused connection unclosed; collect it here.
        warnings.simplefilter("ignore", ResourceWarning)
        status = main(["run-enclave", "--eif-path", str(tmp_path / "a.eif"), "--memory", "512", "--cpu-count", "1"])
        gc.collect()
    err = capsys.readouterr().err
    assert status == 36
    assert err.startswith("[ E36 ]") and "no Docker engine answers" in err and "Traceback" not in err
    assert not (tmp_path / "h" / "enclaves").exists() or not any((tmp_path / "h" / "enclaves").iterdir())


# --- the supervisor's start (E05) ---------------------------------------------------------------

def test_a_supervisor_that_never_answers_is_e05_and_is_killed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """run-enclave gives up on a silent supervisor and leaves no stray process behind."""
    import time

    from emulator.enclave import runtime, supervisor

    settings = Settings(home=tmp_path)
    info = sample()
    settings.enclave_dir(info.enclave_id).mkdir(parents=True)
    pid_file = tmp_path / "stuck.pid"

    def stuck(*_args: object, **_kwargs: object) -> int:  # runs in the forked child
        pid_file.write_text(str(os.getpid()))
        time.sleep(60)
        return 0

    monkeypatch.setattr(supervisor, "serve", stuck)
    monkeypatch.setattr(runtime, "_SPAWN_TIMEOUT_S", 3.0)
    assert code_of(runtime._spawn_supervisor, settings, info) == 5
    pid = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and process_start_ticks(pid) is not None:
        time.sleep(0.05)
    assert process_start_ticks(pid) is None, f"the silent supervisor {pid} was left running"


def test_the_double_fork_names_its_child_before_the_child_speaks(monkeypatch: pytest.MonkeyPatch) -> None:
    """``CHILD`` precedes ``PID`` however late the intermediate process writes it (issue 16:
    under a start storm the supervisor's ``PID`` came first and ``CHILD`` was read as its
    boot answer, E36)."""
    import time

    from emulator.enclave import supervisor

    write_line = supervisor._write_line

    def late_child_line(fd: int | None, line: str) -> None:
        if line.startswith("CHILD "):
            time.sleep(0.3)  # the intermediate process descheduled, as on 2 busy cores
        write_line(fd, line)

    monkeypatch.setattr(supervisor, "_write_line", late_child_line)
    read_fd, write_fd = os.pipe()
    intermediate = os.fork()
    if intermediate == 0:  # pragma: no cover - the child never returns into pytest
        try:
            supervisor._fork_detached(write_fd)  # the intermediate exits in there
            write_line(write_fd, f"PID {os.getpid()}")
        finally:
            os._exit(0)
    os.close(write_fd)
    os.waitpid(intermediate, 0)
    with os.fdopen(read_fd) as pipe:
        lines = pipe.read().splitlines()  # EOF: the grandchild has exited too
    assert [line.split()[0] for line in lines] == ["CHILD", "PID"]
    assert lines[0].split()[1] == lines[1].split()[1]


def test_the_home_ca_names_the_home_instance_whoever_creates_it_first(tmp_path: Path) -> None:
    """PCR4 (from the instance id) and the instance certificate's CN must name one instance."""
    settings = Settings(home=tmp_path / "home")
    ca = res.open_home_ca(settings)  # e.g. a supervisor, before any `ca init` or `attest`
    assert ca.instance_id == res.load_instance_id(settings)
    assert res.open_home_ca(settings).instance_id == ca.instance_id


def test_an_ended_enclave_is_e11_with_why_it_ended(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from emulator.enclave.reaper import write_exit_log
    from emulator.enclave.runtime import find_enclave

    monkeypatch.setenv("NITRO_EMU_HOME", str(tmp_path))
    info = sample()
    write_exit_log(Settings(home=tmp_path), info, info.enclave_id, "out of memory (OOM)", "last words\n")
    with pytest.raises(NitroCliError) as caught:
        find_enclave(enclave_id=info.enclave_id)
    assert caught.value.code == 11
    assert f"Enclave {info.enclave_id} has ended: out of memory (OOM)" in str(caught.value)
    with pytest.raises(NitroCliError, match="No running enclave has the id"):
        find_enclave(enclave_id="i-0123456789abcdef0-enc0000000000000000")
