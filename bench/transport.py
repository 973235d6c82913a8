"""Benchmark: the host and engine transports (docs/transport.md), in one run.

For each transport: run-enclave to the enclave's first NSM answer (the app asks its NSM for
DescribeNSM first thing and prints the wall-clock time of the answer; the container shares the
host's clock), and the NSM round trip seen from inside the enclave (the p50 of 200
DescribeNSM requests, one connection each, as the LD_PRELOAD shim makes them). The baseline is
a bare ``docker run`` (network none) of the enclave's own image to its first output. Runs
alternate: bare, host, engine, bare, ...

    .venv/bin/python bench/transport.py [--runs 7]

Targets (issue 13): the engine transport's start-up <= 2x a bare ``docker run``. Its VSOCK
throughput is in ``bench/vsock.py --engine-transport``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import docker

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import _machine  # noqa: E402  (bench/ is on sys.path when run as a script)
from runtime import answer_time, build_image  # noqa: E402  (bench/runtime.py: the same app image)

APP = r"""
import os, statistics, time
path = os.environ.get("NITRO_EMU_NSM_SOCKET", "/nonexistent")
if os.path.exists(path):
    from fake_nsm.client import NsmClient, SocketTransport
    with NsmClient() as nsm:
        nsm.describe_nsm()
    print("ANSWER %.6f" % time.time(), flush=True)
    times = []
    for _ in range(200):
        start = time.perf_counter()
        with NsmClient(SocketTransport(path)) as nsm:
            nsm.describe_nsm()
        times.append(time.perf_counter() - start)
    print("NSMRTT %.6f" % statistics.median(times), flush=True)
else:
    import fake_nsm.client
    print("ANSWER %.6f" % time.time(), flush=True)
while True:
    time.sleep(3600)
"""


def value_of(read_logs, key: str) -> float:  # type: ignore[no-untyped-def]
    return answer_time(read_logs, key=key, poll=0.02)


def bare(client: docker.DockerClient, tag: str) -> float:
    start = time.time()
    container = client.containers.run(tag, detach=True, network_mode="none", labels={"org.nitro-emu.bench": "1"})
    try:
        return value_of(container.logs, "ANSWER") - start
    finally:
        container.remove(force=True)


def enclave(client: docker.DockerClient, eif: Path, memory: int, transport: str) -> tuple[float, float]:
    from emulator.enclave.runtime import run_enclave, terminate_enclave

    os.environ["NITRO_EMU_TRANSPORT"] = transport
    start = time.time()
    info = run_enclave(eif, memory_mib=memory, cpu_count=1, client=client)
    try:
        container = client.containers.get(info.container_id)
        answered = value_of(container.logs, "ANSWER") - start
        return answered, value_of(container.logs, "NSMRTT")
    finally:
        terminate_enclave(info.enclave_id)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7)
    options = parser.parse_args()
    from emulator.eif import build_eif, read_eif
    from emulator.eif.ramdisk import enclave_image_tag
    from emulator.engine.base_image import ensure_base_image

    client = docker.from_env()
    print(f"machine: {_machine.machine(load=True)}")
    with tempfile.TemporaryDirectory(prefix="nitro-emu-bench-") as scratch:
        os.environ["NITRO_EMU_HOME"] = os.path.join(scratch, "h")
        tag = build_image(client, ensure_base_image(client), app=APP, tag="nitro-emu-bench/transport:latest")
        eif = Path(scratch) / "bench.eif"
        build_eif(client, tag, eif)
        memory = -(-eif.stat().st_size // (1 << 20)) * 4
        for transport in ("host", "engine"):  # warm-up: image import, CA, companion image
            enclave(client, eif, memory, transport)
        image = enclave_image_tag(read_eif(eif))
        bare(client, image)
        starts: dict[str, list[float]] = {"bare docker run": [], "host": [], "engine": []}
        rtts: dict[str, list[float]] = {"host": [], "engine": []}
        for _ in range(options.runs):
            starts["bare docker run"].append(bare(client, image))
            for transport in ("host", "engine"):
                started, rtt = enclave(client, eif, memory, transport)
                starts[transport].append(started)
                rtts[transport].append(rtt)
    base = statistics.median(starts["bare docker run"])
    print(f"runs: {options.runs} each, alternating (bare, host, engine)")
    for label, runs in starts.items():
        p50 = statistics.median(runs)
        print(f"{label:16} -> first NSM answer: p50 {p50:.3f} s (min {min(runs):.3f}, max {max(runs):.3f}); "
              f"{p50 / base:.2f}x bare")
    engine_ratio = statistics.median(starts["engine"]) / base
    print(f"engine transport start-up: {engine_ratio:.2f}x a bare docker run "
          f"(target <= 2x: {'met' if engine_ratio <= 2 else 'NOT met'}); "
          f"{statistics.median(starts['engine']) / statistics.median(starts['host']):.2f}x the host transport")
    host_rtt, engine_rtt = (statistics.median(rtts[name]) for name in ("host", "engine"))
    print(f"NSM round trip from inside (connect + DescribeNSM), p50: host {host_rtt * 1e3:.2f} ms, "
          f"engine {engine_rtt * 1e3:.2f} ms ({engine_rtt / host_rtt:.1f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
