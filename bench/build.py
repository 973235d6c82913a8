"""Benchmark: build-enclave of a ~100 MB image versus ``docker save`` of the same image.

Builds ``<base> + a 90 MB random file`` with the Docker SDK, then times, alternately,
``emulator.eif.file.build_eif`` (export, canonical archive, PCRs, CRC, EIF write) and
``image.save()`` streamed to a file (the baseline, measured in the same run). Prints the
machine, each median and the ratio. Removes the image and files it created.

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

import _machine  # bench/ is on sys.path when run as a script

from emulator.engine.base_image import BASE_IMAGE_TAG
from emulator.eif import build_eif


def timed(action) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
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
            eif_path, tar_path = Path(work) / "bench.eif", Path(work) / "save.tar"

            def save() -> None:
                with open(tar_path, "wb") as out:
                    for chunk in client.images.get(tag).save(chunk_size=1 << 20):
                        out.write(chunk)

            build_times, save_times = [], []
            for run in range(args.runs):
                save_times.append(timed(save))
                build_times.append(timed(lambda: build_eif(client, tag, eif_path)))
                print(
                    f"run {run + 1}: build-enclave {build_times[-1]:.2f} s, docker save {save_times[-1]:.2f} s",
                    flush=True,
                )
            build_median, save_median = statistics.median(build_times), statistics.median(save_times)
            print(f"EIF {eif_path.stat().st_size / 1e6:.0f} MB, docker save tar {tar_path.stat().st_size / 1e6:.0f} MB")
            print(f"build-enclave median: {build_median:.2f} s over {args.runs} runs")
            print(f"docker save median:   {save_median:.2f} s over {args.runs} runs (baseline)")
            print(f"ratio build-enclave / docker save: {build_median / save_median:.2f}x")
        finally:
            try:
                client.images.remove(tag, force=True)
            except docker.errors.ImageNotFound:
                pass
            client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
