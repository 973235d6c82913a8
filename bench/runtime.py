"""Benchmark: run-enclave to the enclave's first NSM answer, against a bare ``docker run``.

Both runs use the same image (an app on the local base image that, first thing, asks its
NSM for DescribeNSM and prints the wall-clock time of the answer; without an NSM socket it
prints the time at once). The container shares the host's clock, so the printed time minus
the time just before the call is the latency, free of any log polling.

- enclave: ``emulator.enclave.runtime.run_enclave`` (the API under ``nitro-emu run-enclave``, in
  process: no CLI start-up) of the app's EIF, until the app's NSM answer;
- baselines: ``docker.containers.run`` (network none) until the first output, of (a) the
  image the enclave runs (the application image loaded from the EIF: the runtime's own
  overhead) and (b) the source image the EIF was built from (end to end, including what the
  EIF's canonical archive changes; see docs/runtime.md).

Prints the machine, the p50 (and min/max) of each over ``--runs`` alternating runs, the
ratio, and the targets (<= 1.5x, <= 1 s p50).

Then first starts (the EIF checked, its filesystem loaded into the engine, then run; before
each, the image and its layer are removed) against ``docker load`` of the same filesystem
(a ``docker save`` of the loaded image) plus its run, alternating:
- the EIF above (nitro-emu's layout: its rootfs tar loaded as it is);
- the same app as an EIF in nitro-cli's layout (``build-enclave --format nitro-cli``: a cpio
  customer ramdisk, converted to a tar while it is loaded), issue 12's target <= 3x; and its
  cached start (the image already loaded) against a bare ``docker run`` of it: <= 1.5x.

Usage::

    .venv/bin/python bench/runtime.py --runs 10 [--first-runs 3]
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import docker
import docker.errors

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import _machine  # noqa: E402  (bench/ is on sys.path when run as a script)

APP = r"""
import os, sys, time
if os.path.exists(os.environ.get("NITRO_EMU_NSM_SOCKET", "/nonexistent")):
    from fake_nsm.client import NsmClient
    with NsmClient() as nsm:
        nsm.describe_nsm()
    print("ANSWER %.6f" % time.time(), flush=True)
else:
    import fake_nsm.client
    print("ANSWER %.6f" % time.time(), flush=True)
while True:
    time.sleep(3600)
"""


def build_image(client: docker.DockerClient, base: str, *, app: str = APP,
                tag: str = "nitro-emu-bench/runtime:latest") -> str:
    """An image FROM ``base`` running ``app`` with nitro-emu's in-enclave NSM client."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 0
            archive.addfile(info, io.BytesIO(data))
        for source in sorted((ROOT / "fake_nsm").glob("*.py")):
            add(f"fake_nsm/{source.name}", source.read_bytes())
        add("app.py", app.encode())
        add("Dockerfile", (
            f"FROM {base}\nCOPY fake_nsm /opt/nitro-emu/fake_nsm\nENV PYTHONPATH=/opt/nitro-emu\n"
            'COPY app.py /app/app.py\nCMD ["python3", "-u", "/app/app.py"]\n').encode())
    client.images.build(fileobj=io.BytesIO(buffer.getvalue()), custom_context=True, tag=tag, rm=True, forcerm=True)
    return tag


def answer_time(read_logs, timeout: float = 60.0, *, key: str = "ANSWER", poll: float = 0.05) -> float:
    """The number on the app's first ``<key> <number>`` line (waits for it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in read_logs().decode(errors="replace").splitlines():
            if line.startswith(key + " "):
                return float(line.split()[1])
        time.sleep(poll)
    raise RuntimeError(f"no {key} line")


def run_baseline(client: docker.DockerClient, tag: str, **options: object) -> float:
    start = time.time()
    container = client.containers.run(tag, detach=True, network_mode="none", labels={"org.nitro-emu.bench": "1"},
                                      **options)
    try:
        return answer_time(container.logs) - start
    finally:
        container.remove(force=True)


def run_enclave_once(client: docker.DockerClient, eif: Path, memory: int) -> float:
    from emulator.enclave.runtime import run_enclave, terminate_enclave

    start = time.time()
    info = run_enclave(eif, memory_mib=memory, cpu_count=2, client=client)
    try:
        container = client.containers.get(info.container_id)
        return answer_time(container.logs) - start
    finally:
        terminate_enclave(info.enclave_id)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--first-runs", type=int, default=3, help="first starts of each EIF layout")
    options = parser.parse_args()
    from emulator.engine.base_image import ensure_base_image
    from emulator.eif import build_eif

    client = docker.from_env()
    print(f"machine: {_machine.machine(load=True)}")
    with tempfile.TemporaryDirectory(prefix="nitro-emu-bench-") as scratch:
        os.environ["NITRO_EMU_HOME"] = os.path.join(scratch, "h")
        tag = build_image(client, ensure_base_image(client))
        eif = Path(scratch) / "bench.eif"
        build_eif(client, tag, eif)
        eif_size = eif.stat().st_size
        memory = -(-eif_size // (1 << 20)) * 4
        run_enclave_once(client, eif, memory)  # warm-up: image import, CA creation, EIF cache
        from emulator.eif import read_eif
        from emulator.eif.ramdisk import enclave_image_tag

        enclave_tag = enclave_image_tag(read_eif(eif))
        run_baseline(client, tag)
        run_baseline(client, enclave_tag)
        enclave, same, source = [], [], []
        for _ in range(options.runs):
            same.append(run_baseline(client, enclave_tag))
            source.append(run_baseline(client, tag))
            enclave.append(run_enclave_once(client, eif, memory))
        first, loaded = first_starts(client, eif, memory, options.first_runs, {})
    p50 = statistics.median(enclave)
    print(f"runs: {options.runs} each, alternating; EIF {eif_size} bytes, --memory {memory} MiB")
    print(f"run-enclave -> first NSM answer: p50 {p50:.3f} s (min {min(enclave):.3f}, max {max(enclave):.3f})")
    for label, runs in (("the enclave's image (loaded from the EIF)", same), ("the source image", source)):
        base = statistics.median(runs)
        print(f"bare docker run of {label} -> first output: p50 {base:.3f} s "
              f"(min {min(runs):.3f}, max {max(runs):.3f}); ratio {p50 / base:.2f}x")
    ratio = p50 / statistics.median(same)
    print(f"runtime overhead ratio: {ratio:.2f}x (target <= 1.5x: {'met' if ratio <= 1.5 else 'NOT met'}; "
          f"p50 target <= 1 s: {'met' if p50 <= 1.0 else 'NOT met'})")
    report_first("nitro-emu layout", eif_size, first, loaded, None)
    nitro_cli_layout(client, options.runs, options.first_runs)
    return 0


def first_starts(client: docker.DockerClient, eif: Path, memory: int, runs: int,
                 direct: dict[str, object]) -> tuple[list[float], list[float]]:
    """First starts of ``eif`` against ``docker load`` + run of the same filesystem, alternating.

    Before each, both the EIF's image and the copy are removed, so that the engine writes the
    layer anew each time (a layer it still had would be skipped by docker load).
    """
    from emulator.eif import read_eif
    from emulator.eif.ramdisk import enclave_image_tag

    copy = "nitro-emu-bench/same-fs:latest"
    imported = enclave_image_tag(read_eif(eif))
    run_enclave_once(client, eif, memory)  # warm-up: CA, init build, image load
    client.images.get(imported).tag(copy)
    saved = b"".join(client.images.get(copy).save(named=True))  # the same filesystem, as docker save has it

    def forget() -> None:
        for name in (copy, imported):
            try:
                client.images.remove(name, force=True)
            except docker.errors.ImageNotFound:
                pass

    first, loaded = [], []
    try:
        for _ in range(runs):
            forget()
            first.append(run_enclave_once(client, eif, memory))
            forget()
            start = time.time()
            client.images.load(saved)
            loaded.append(time.time() - start + run_baseline(client, copy, **direct))
    finally:
        forget()
    return first, loaded


def report_first(label: str, size: int, first: list[float], loaded: list[float], target: float | None) -> None:
    f, l = statistics.median(first), statistics.median(loaded)
    verdict = f" (target <= {target:g}x: {'met' if f / l <= target else 'NOT met'})" if target else ""
    print(f"{label} ({size} bytes EIF, {len(first)} runs): first start p50 {f:.3f} s (min {min(first):.3f}, "
          f"max {max(first):.3f}) vs docker load + run of the same filesystem p50 {l:.3f} s (min {min(loaded):.3f}, "
          f"max {max(loaded):.3f}) = {f / l:.2f}x{verdict}")


def nitro_cli_layout(client: docker.DockerClient, runs: int, first_runs: int) -> None:
    """First and cached starts of a nitro-cli-layout EIF, against docker load / docker run."""
    from emulator.eif import build_eif, read_eif
    from emulator.eif.ramdisk import enclave_image_tag
    from emulator.engine.base_image import ensure_base_image

    # what nitro-cli's init would exec (the loaded image's entrypoint is nitro-emu's init,
    # mounted only into enclaves)
    direct = {"entrypoint": ["python3", "-u", "/app/app.py"], "environment": {"PYTHONPATH": "/opt/nitro-emu"}}
    with tempfile.TemporaryDirectory(prefix="nitro-emu-bench-") as scratch:
        os.environ["NITRO_EMU_HOME"] = os.path.join(scratch, "h")
        tag = build_image(client, ensure_base_image(client))
        eif = Path(scratch) / "nitro-cli.eif"
        build_eif(client, tag, eif, ramdisk_format="nitro-cli")
        size = eif.stat().st_size
        memory = -(-size // (1 << 20)) * 4
        first, loaded = first_starts(client, eif, memory, first_runs, direct)
        imported = enclave_image_tag(read_eif(eif))
        run_enclave_once(client, eif, memory)  # loaded again, for the cached starts
        cached, bare = [], []
        try:
            for _ in range(runs):
                cached.append(run_enclave_once(client, eif, memory))
                bare.append(run_baseline(client, imported, **direct))
        finally:
            client.images.remove(imported, force=True)
    report_first("nitro-cli layout", size, first, loaded, 3)
    c, b = statistics.median(cached), statistics.median(bare)
    print(f"nitro-cli layout ({runs} cached runs): cached start p50 {c:.3f} s vs docker run {b:.3f} s = "
          f"{c / b:.2f}x (target <= 1.5x: {'met' if c / b <= 1.5 else 'NOT met'})")


if __name__ == "__main__":
    sys.exit(main())
