"""Parallel starts in one process (issue 16, "supervisor start storms"): none lost.

Under a storm of 16-32 parallel run-enclave calls on 2 cores, about 1 start in 40 failed with
``[ E36 ] ... No ready signal``: the supervisor's double fork wrote ``PID`` before its
intermediate process wrote ``CHILD``, and run-enclave took the late ``CHILD`` line for the
boot's answer. Here every intermediate process is made late on purpose (the supervisor is a
fork of this process, so the patch reaches it), which made every start fail before the fix.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration.runtime_helpers import minimum_memory

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(300)]

STARTS = 8


def test_parallel_starts_with_late_intermediate_processes_all_boot_and_attest(  # type: ignore[no-untyped-def]
    nitro_home: Path, probe_eif, monkeypatch: pytest.MonkeyPatch
) -> None:
    from emulator.enclave import supervisor
    from emulator.enclave.runtime import run_enclave, terminate_enclave
    from emulator.settings import Settings
    from fake_nsm.client import NsmClient, SocketTransport

    write_line = supervisor._write_line

    def late_child_line(fd: int | None, line: str) -> None:
        if line.startswith("CHILD "):
            time.sleep(0.3)
        write_line(fd, line)

    monkeypatch.setattr(supervisor, "_write_line", late_child_line)
    eif, _ = probe_eif
    started: list[Any] = []
    lost: list[str] = []
    lock = threading.Lock()

    def start(index: int) -> None:
        try:
            info = run_enclave(eif, memory_mib=minimum_memory(eif), cpu_count=1, enclave_name=f"storm{index}")
        except Exception as error:  # noqa: BLE001 - a lost enclave is the finding
            with lock:
                lost.append(f"{type(error).__name__}: {error}")
            return
        with lock:
            started.append(info)

    threads = [threading.Thread(target=start, args=(index,)) for index in range(STARTS)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not lost, f"{len(lost)} of {STARTS} parallel starts lost: {lost[:2]}"
        for info in started:
            socket_path = Settings(home=nitro_home).run_dir(info.cid) / "nsm.sock"
            with NsmClient(SocketTransport(socket_path, timeout=30.0)) as nsm:
                assert nsm.describe_nsm().module_id == info.enclave_id
    finally:
        for info in started:
            terminate_enclave(info.enclave_id)
