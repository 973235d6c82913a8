"""Benchmark: build-enclave of a ~100 MB image versus ``docker save`` of the same image.

Builds ``<base> + a 90 MB random file`` with the Docker SDK, then times, alternately,
``emulator.eif.build_eif`` in both formats (the default, nitro-emu's canonical archive, and
``--format nitro-cli``, the customer ramdisk as linuxkit writes it: export, ramdisk, PCRs,
CRC, EIF write) and ``image.save()`` streamed to a file (the baseline, measured in the same
run). Prints the machine, each median and its ratio to the baseline, and whether every run
of a format gave the same PCR0/1/2 (reproducibility: a rebuild of the same image must). Removes
the image and files it created.

Usage: .venv/bin/python bench/build.py [--runs 3] [--size-mb 90] [--base nitro-emu/base:bookworm]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import docker
import docker.errors

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's emulator, whatever the venv has installed

import _machine  # noqa: E402  (bench/ is on sys.path when run as a script)

from emulator.engine.base_image import BASE_IMAGE_TAG  # noqa: E402
from emulator.eif import build_eif  # noqa: E402


def timed(action) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="at least 2, to check that builds reproduce")
    parser.add_argument("--size-mb", type=int, default=90)
    parser.add_argument("--base", default=BASE_IMAGE_TAG)
    args = parser.parse_args()
    client = docker.from_env()
    tag = f"nitro-emu-bench/build:{uuid.uuid4().hex[:10]}"
    print(f"machine: {_machine.machine(system=True, load=True)}")
    with tempfile.TemporaryDirectory(prefix="nitro-emu-bench-") as work:
        context = Path(work) / "context"
        context.mkdir()
        (context / "blob.bin").write_bytes(os.urandom(args.size_mb << 20))
        (context / "Dockerfile").write_text(f"FROM {args.base}\nCOPY blob.bin /data/blob.bin\n")
        try:
            image, _ = client.images.build(path=str(context), tag=tag, rm=True, forcerm=True)
            size = image.attrs.get("Size", 0)
            print(f"image: {tag} ({size / 1e6:.0f} MB; base {args.base} + {args.size_mb} MiB random file)")
            tar_path = Path(work) / "save.tar"

            def save() -> None:
                with open(tar_path, "wb") as out:
                    for chunk in client.images.get(tag).save(chunk_size=1 << 20):
                        out.write(chunk)

            formats = {"nitro-emu": Path(work) / "nitro-emu.eif", "nitro-cli": Path(work) / "nitro-cli.eif"}
            times: dict[str, list[float]] = {name: [] for name in ("docker save", *formats)}
            pcrs: dict[str, set[tuple[bytes, bytes, bytes]]] = {name: set() for name in formats}
            for run in range(args.runs):
                times["docker save"].append(timed(save))
                for name, path in formats.items():
                    start = time.perf_counter()
                    measured = build_eif(client, tag, path, ramdisk_format=name)
                    times[name].append(time.perf_counter() - start)
                    pcrs[name].add((measured.pcr0, measured.pcr1, measured.pcr2))
                print(f"run {run + 1}: " + ", ".join(f"{name} {values[-1]:.2f} s" for name, values in times.items()),
                      flush=True)
            baseline = statistics.median(times["docker save"])
            print(f"docker save tar {tar_path.stat().st_size / 1e6:.0f} MB: median {baseline:.2f} s over "
                  f"{args.runs} runs (baseline)")
            for name, path in formats.items():
                median = statistics.median(times[name])
                same = len(pcrs[name]) == 1
                pcr0 = next(iter(pcrs[name]))[0].hex()[:16]
                print(f"build-enclave --format {name}: EIF {path.stat().st_size / 1e6:.0f} MB, median {median:.2f} s "
                      f"over {args.runs} runs, {median / baseline:.2f}x docker save; reproducible: "
                      f"{'yes, every run PCR0 ' + pcr0 + '... and the same PCR1/PCR2' if same else 'NO'} "
                      f"({len(pcrs[name])} distinct PCR sets)")
        finally:
            try:
                client.images.remove(tag, force=True)
            except docker.errors.ImageNotFound:
                pass
            client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
