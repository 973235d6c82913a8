"""Many enclaves on one machine: start N in sequence and in parallel, measure, tear down.

For each N (default 1, 8, 16, 32) and each mode (sequence: one after another; parallel: N
threads at once), through the API the pytest plugin uses (``EnclaveFactory``):

- time from the start call to the enclave's first NSM answer (p50 / p99 / max);
- host memory per enclave: the container's own (cgroup ``memory.current`` via Docker's stats)
  and its supervisor's PSS, against a bare Python in the same image as the app;
- processes per enclave on the host (its supervisor) and file descriptors nitro-emu holds
  (the supervisors' open fds);
- the time to terminate all, and what is left afterwards (must be nothing).

Baseline in the same run: a bare ``docker run`` of the same image to its first output, in
sequence, for the per-start ratio. Issue 16's targets: per-enclave overhead beyond the app's
own memory <= 30 MB; N=32 in parallel all attest, none lost, nothing leaked.

    .venv/bin/python bench/scale.py [--counts 1 8 16 32]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import docker

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import _machine  # noqa: E402  (bench/ is on sys.path when run as a script)

APP = "import time\nprint('up', flush=True)\ntime.sleep(3600)\n"


def _pss_kib(pid: int) -> int:
    """Proportional set size: the supervisor is forked from run-enclave's process, so pages it
    shares copy-on-write are split among their sharers instead of counted whole (as RSS does)."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def _container_memory(client: docker.DockerClient, container_id: str) -> int:
    stats = client.api.stats(container_id, stream=False)
    return int(stats.get("memory_stats", {}).get("usage", 0))


def _bare_start(client: docker.DockerClient, image: str) -> tuple[float, int]:
    """(seconds to first output, memory bytes) of a bare docker run of the app's image."""
    start = time.monotonic()
    container = client.containers.run(image, detach=True, network_mode="none", labels={"org.nitro-emu.bench": "1"})
    try:
        while b"up" not in container.logs():
            time.sleep(0.01)
        elapsed = time.monotonic() - start
        time.sleep(0.5)
        return elapsed, _container_memory(client, container.id)
    finally:
        container.remove(force=True)


def _start_and_attest(factory: Any, spec: Any, name: str) -> tuple[Any, float]:
    start = time.monotonic()
    handle = factory.start(spec, name=name)
    handle.attest_raw(nonce=b"scale")
    return handle, time.monotonic() - start


def run(factory: Any, spec: Any, client: docker.DockerClient, count: int, parallel: bool) -> dict[str, Any]:
    handles: list[Any] = []
    times: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()

    def one(index: int) -> None:
        try:
            handle, elapsed = _start_and_attest(factory, spec, f"s{index}")
        except Exception as error:  # noqa: BLE001 - a lost enclave is a result
            with lock:
                errors.append(f"{type(error).__name__}: {error}")
            return
        with lock:
            handles.append(handle)
            times.append(elapsed)

    began = time.monotonic()
    if parallel:
        threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    else:
        for index in range(count):
            one(index)
    wall = time.monotonic() - began
    time.sleep(1.0)
    container_memory = [_container_memory(client, h.info.container_id) for h in handles]
    supervisor_pss = [_pss_kib(h.info.process_id) * 1024 for h in handles]
    fds = sum(_fds(h.info.process_id) for h in handles)
    began = time.monotonic()
    for handle in handles:
        handle.terminate()
    teardown = time.monotonic() - began
    return {"times": times, "errors": errors, "wall": wall, "teardown": teardown,
            "container_memory": container_memory, "supervisor_pss": supervisor_pss, "fds": fds}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--counts", type=int, nargs="+", default=[1, 8, 16, 32])
    options = parser.parse_args()
    from emulator.engine.base_image import ensure_base_image
    from emulator.testing.handles import EnclaveFactory, EnclaveSpec

    client = docker.from_env()
    print(f"machine: {_machine.machine(load=True)}")
    with tempfile.TemporaryDirectory(prefix="nitro-emu-scale-") as scratch:
        context = Path(scratch) / "app"
        context.mkdir()
        (context / "app.py").write_text(APP)
        base = ensure_base_image(client)
        (context / "Dockerfile").write_text(f'FROM {base}\nCOPY app.py /app/\nCMD ["python3", "-u", "/app/app.py"]\n')
        factory = EnclaveFactory(Path(scratch) / "h", docker_client=client, worker="scale")
        spec = EnclaveSpec(dockerfile_dir=context).checked()  # memory: nitro-cli's minimum for the EIF
        built = factory.build(spec)
        try:
            try:
                factory.start(spec, name="warm").terminate()  # CA, shim, image import
            except Exception as error:  # noqa: BLE001 - reported, as a lost enclave is
                print(f"warm-up enclave lost: {type(error).__name__}: {error}")
            bare = [_bare_start(client, built.image) for _ in range(3)]
            bare_s = statistics.median(t for t, _ in bare)
            bare_mb = statistics.median(m for _, m in bare) / 1e6
            print(f"bare docker run of the app's image: first output p50 {bare_s:.3f} s, memory {bare_mb:.1f} MB")
            for count in options.counts:
                for parallel in (False, True):
                    result = run(factory, spec, client, count, parallel)
                    times = result["times"] or [float("nan")]
                    mem = statistics.median(result["container_memory"] or [0]) / 1e6
                    pss = statistics.median(result["supervisor_pss"] or [0]) / 1e6
                    print(
                        f"N={count:3d} {'parallel' if parallel else 'sequence':8s}: attested {len(result['times'])}/{count}"
                        f" in {result['wall']:.1f} s; start->first NSM answer p50 {statistics.median(times):.2f} s"
                        f" p99 {_machine.percentile(times, 0.99):.2f} s ({statistics.median(times) / bare_s:.1f}x bare);"
                        f" per enclave: container {mem:.1f} MB (app alone {bare_mb:.1f}), supervisor PSS {pss:.1f} MB,"
                        f" overhead {mem - bare_mb + pss:.1f} MB, 1 process; supervisors' fds {result['fds']};"
                        f" terminate all {result['teardown']:.1f} s"
                    )
                    for error in result["errors"][:3]:
                        print(f"    lost: {error}")
        finally:
            factory.close()
        left = client.containers.list(all=True, filters={"label": f"org.nitro-emu.home={factory.home}"})
        print(f"left after all runs: {len(left)} containers")
    return 0


if __name__ == "__main__":
    sys.exit(main())
