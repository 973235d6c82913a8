"""The syscall interceptor on the host (no Docker): its build, its place in the container
settings, the launcher's duties (exit status, signals, the switch, the fallback), and the
VSOCK half of the conformance suite against the LD_PRELOAD shim."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from emulator.enclave.container import (
    ContainerContext,
    ContainerExtras,
    collect_extras,
    container_settings,
    wrapped_command,
)
from emulator.enclave.state import EnclaveInfo
from emulator.settings import Settings
from emulator.shim.build import ensure_shim
from emulator.shim.intercept import (
    ENCLAVE_DIR,
    ENCLAVE_LAUNCHER,
    NSM_DEVICE,
    check_kernel,
    container_extras,
    ensure_interceptor,
)

CID = 16


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("NITRO_EMU_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("NITRO_EMU_INTERCEPT", raising=False)
    return Settings.from_env()


@pytest.fixture
def launcher(settings: Settings) -> Path:
    path = ensure_interceptor(settings)
    found = check_kernel(path)
    if not found.available:
        pytest.skip(f"this kernel cannot run the interceptor: {found.detail}")
    return path


def _info(**changes: Any) -> EnclaveInfo:
    base: dict[str, Any] = dict(
        enclave_id="i-0-enc0123456789abcdef", name="x", cid=CID, process_id=1, cpu_ids=(1,), memory_mib=256,
        state="RUNNING", flags="NONE", measurements=None, eif_path="/x.eif", instance_id="i-0", started_at_ms=0,
        image_name="x", image_version="1", metadata={}, image_tag="nitro-emu/x:1", host_cpus=(0,),
    )
    base.update(changes)
    return EnclaveInfo(**base)


def test_build_is_cached_and_static(settings: Settings) -> None:
    first = ensure_interceptor(settings)
    assert ensure_interceptor(settings) == first
    assert first.parent.parent == settings.cache_dir / "intercept"
    header = subprocess.run(["file", str(first)], capture_output=True, text=True, check=False).stdout
    if header:
        assert "statically linked" in header or "static-pie" in header, header


def test_kernel_check_names_what_it_found(launcher: Path) -> None:
    found = check_kernel(launcher)
    assert found.available and found.detail.startswith("ok")


def test_container_extras_mount_the_node_and_wrap_the_entrypoint(settings: Settings, tmp_path: Path) -> None:
    context = ContainerContext(settings, _info(), tmp_path / "run")
    extras = container_extras(context)
    assert extras.entrypoint_prefix == (ENCLAVE_LAUNCHER, "--")
    assert extras.mounts["/dev/null"] == (NSM_DEVICE, True)
    (launcher_dir,) = [host for host, (inside, _) in extras.mounts.items() if inside == ENCLAVE_DIR]
    assert (Path(launcher_dir) / "nitro-emu-intercept").is_file()
    assert (tmp_path / "run" / "intercept").is_dir()


def test_switch_turns_the_extras_off(settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NITRO_EMU_INTERCEPT", "0")
    assert container_extras(ContainerContext(settings, _info(), tmp_path)) == ContainerExtras()


def test_later_prefix_runs_first_and_the_image_command_is_kept(settings: Settings, tmp_path: Path) -> None:
    context = ContainerContext(settings, _info(), tmp_path)
    merged = collect_extras(context, (lambda _: ContainerExtras(entrypoint_prefix=("inner",)),
                                      lambda _: ContainerExtras(entrypoint_prefix=("outer", "--"))))
    assert merged.entrypoint_prefix == ("outer", "--", "inner")
    config = {"Entrypoint": ["/init", "a"], "Cmd": ["b"]}
    assert wrapped_command(merged.entrypoint_prefix, config) == {
        "entrypoint": ["outer", "--", "inner", "/init", "a"], "command": ["b"]}
    kwargs = container_settings(settings, _info(), supervisor_pid=1, run_dir=tmp_path, extras=merged,
                                image_config={"Cmd": ["python3", "app.py"]})
    assert kwargs["entrypoint"] == ["outer", "--", "inner"] and kwargs["command"] == ["python3", "app.py"]
    with pytest.raises(ValueError, match="config"):
        container_settings(settings, _info(), supervisor_pid=1, run_dir=tmp_path, extras=merged)
    with pytest.raises(ValueError, match="neither"):
        wrapped_command(("x",), {})
    plain = container_settings(settings, _info(), supervisor_pid=1, run_dir=tmp_path)
    assert "entrypoint" not in plain and "command" not in plain


def test_exit_status_signals_and_switch(launcher: Path) -> None:
    assert subprocess.run([str(launcher), "sh", "-c", "exit 7"], check=False).returncode == 7
    missing = subprocess.run([str(launcher), "/nonexistent"], capture_output=True, text=True, check=False)
    assert missing.returncode == 127 and "cannot run /nonexistent" in missing.stderr
    sleeper = subprocess.Popen([str(launcher), "sleep", "30"])
    time.sleep(0.3)
    sleeper.send_signal(signal.SIGTERM)  # passed on to the command
    assert sleeper.wait(10) == 128 + signal.SIGTERM
    script = "import os; print(os.getpid(), os.getppid())"
    child = subprocess.Popen([str(launcher), sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    pid, parent = (int(x) for x in child.communicate()[0].split())
    assert pid != child.pid and parent == child.pid  # forked: the launcher stays to serve
    off = subprocess.Popen([str(launcher), sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                           env={**os.environ, "NITRO_EMU_INTERCEPT": "0"})
    assert int(off.communicate()[0].split()[0]) == off.pid  # exec'd in place: no filter


def test_nested_launcher_falls_back_with_a_warning(launcher: Path, tmp_path: Path) -> None:
    """A second listener in one filter chain is refused (EBUSY): the inner launcher says so
    and runs the command, which the outer handler still serves."""
    root = tmp_path / "vs"
    (root / "vsock").mkdir(parents=True)
    code = ("import socket; s = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM); "
            "s.bind((socket.VMADDR_CID_ANY, 5000)); print(s.getsockname())")
    env = {**os.environ, "NITRO_EMU_CID": str(CID), "NITRO_EMU_VSOCK_ROOT": str(root)}
    env.pop("LD_PRELOAD", None)
    result = subprocess.run([str(launcher), str(launcher), sys.executable, "-c", code], capture_output=True,
                            text=True, env=env, timeout=30, check=False)
    assert result.returncode == 0, result.stderr
    assert "without the syscall interceptor" in result.stderr and "busy" in result.stderr.lower()
    assert result.stdout.strip() == "(4294967295, 5000)"


#: the checks of probe.c conform that need neither /dev/nsm nor the parent
VSOCK_KEYS = ("socket_dgram", "socket_protocol", "socket", "sockname_unbound", "peername_unbound",
              "listen_unbound", "bind_other_cid", "bind_short", "bind_family", "bind", "bind_again",
              "sockname_bound", "listen", "bind_in_use", "connect", "connect_again", "client_sockname",
              "client_peername", "accept", "accept_peer", "accept_len", "accept_peer_is_client",
              "accepted_sockname", "accepted_peername", "data", "eof_after_close", "connect_on_listener",
              "connect_unknown_cid", "connect_refused", "connect_port_any", "accept_not_listening",
              "bind_any_port_name", "sockname_short_len", "sockname_short_family", "accept_nonblocking_empty",
              "connect_local_cid", "accept_nonblocking", "accepted_nonblocking_flag",
              "connect_after_listener_closed", "done")


def _conform(argv: list[str], root: Path, preload: str | None) -> dict[str, str]:
    for leftover in (root / "vsock").glob("*"):
        leftover.unlink()
    env = {**os.environ, "NITRO_EMU_CID": str(CID), "NITRO_EMU_VSOCK_ROOT": str(root)}
    env.pop("LD_PRELOAD", None)
    if preload:
        env["LD_PRELOAD"] = preload
    result = subprocess.run([*argv, "conform", "8100"], capture_output=True, text=True, env=env, timeout=60,
                            check=False)
    assert result.returncode == 0, result.stderr
    items = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    return {item["k"]: item["v"] for item in items if item["k"] in VSOCK_KEYS}


def test_vsock_calls_agree_with_the_shim(launcher: Path, settings: Settings, tmp_path: Path) -> None:
    from tests.integration.shim import toolchains

    root = tmp_path / "vs"
    (root / "vsock").mkdir(parents=True)
    (root / "parent").mkdir()
    shim = str(ensure_shim(settings).library)
    dynamic, static = str(toolchains.c_probe(static=False)), str(toolchains.c_probe(static=True))
    through_shim = _conform([dynamic], root, shim)
    assert len(through_shim) == len(VSOCK_KEYS)
    assert through_shim["accept_peer"] == "OWN:eph" and through_shim["eof_after_close"] == "0"
    assert _conform([str(launcher), static], root, None) == through_shim
    assert _conform([str(launcher), dynamic], root, shim) == through_shim  # both: each call once


def test_nitro_cli_enclaves_are_served_by_their_init(settings: Settings, tmp_path: Path) -> None:
    """No launcher in front of nitro-emu's init: init has the interceptor compiled in."""
    from emulator.eif.nitro_cli_layout import LAYOUT_NITRO_CLI
    from emulator.enclave.nitro_cli_init import EXTRA_LAYOUT, ensure_init

    context = ContainerContext(settings, _info(extra={EXTRA_LAYOUT: LAYOUT_NITRO_CLI}), tmp_path)
    extras = container_extras(context)
    assert extras.entrypoint_prefix == () and extras.environment == {"NITRO_EMU_INTERCEPT": "1"}
    assert extras.mounts == {"/dev/null": (NSM_DEVICE, True)}
    assert b"nitro-emu-intercept: warning" in (ensure_init(settings) / "nitro-emu-init").read_bytes()


LOCK_HOLDER = r"""
import fcntl, os, socket, sys, threading, time
root = os.environ["NITRO_EMU_VSOCK_ROOT"]
lock = os.open(root + "/vsock", os.O_RDONLY | os.O_DIRECTORY)
fcntl.flock(lock, fcntl.LOCK_EX)       # as a shim-using process does around its listen
listener = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
listener.bind((socket.VMADDR_CID_ANY, 5001))
done = threading.Event()
threading.Thread(target=lambda: (listener.listen(), done.set()), daemon=True).start()
time.sleep(0.5)                        # the handler now waits for the flock
other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
other.bind(root + "/other.sock")       # trapped too: served while listen waits
print("BOUND", flush=True)
fcntl.flock(lock, fcntl.LOCK_UN)
print("LISTENING" if done.wait(10) else "STUCK", flush=True)
"""


def test_a_listen_waiting_for_the_flock_does_not_stop_other_calls(launcher: Path, tmp_path: Path) -> None:
    root = tmp_path / "vs"
    (root / "vsock").mkdir(parents=True)
    env = {**os.environ, "NITRO_EMU_CID": str(CID), "NITRO_EMU_VSOCK_ROOT": str(root)}
    env.pop("LD_PRELOAD", None)
    result = subprocess.run([str(launcher), sys.executable, "-c", LOCK_HOLDER], capture_output=True, text=True,
                            env=env, timeout=30, check=False)
    assert result.stdout.split() == ["BOUND", "LISTENING"], result.stderr


def test_parent_side_static_program_through_nitro_emu_exec(settings: Settings, launcher: Path) -> None:
    """``nitro-emu exec --intercept``: a static parent program (CID 3) gets AF_VSOCK too."""
    from tests.integration.shim import toolchains

    static = str(toolchains.c_probe(static=True))
    env = {key: value for key, value in os.environ.items() if key not in ("NITRO_EMU_CID", "NITRO_EMU_VSOCK_ROOT")}
    result = subprocess.run([sys.executable, "-m", "emulator.cli", "exec", "--intercept", "--", static, "conform",
                             "8100"], capture_output=True, text=True, env=env, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    items = {item["k"]: item["v"] for item in map(json.loads, filter(None, result.stdout.splitlines()))}
    assert items["listen"] == "ok" and items["sockname_bound"] == "ANY:6000"
    assert items["client_peername"] == "OWN:6000" and items["accept_peer"] == "OWN:eph"  # OWN is 3 here
    assert items["eof_after_close"] == "0" and items["done"] == "1"
    assert (settings.home / "run" / "parent").is_dir()
