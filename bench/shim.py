"""What the LD_PRELOAD shim costs: programs that never use it, and the NSM ioctl through it.

Measured in one run, each scenario repeated (median reported):
- untouched program: a C loop of ``open("/dev/null")`` + ``fstat`` + ``close``, without the
  shim (baseline) and with it preloaded: the price every enclave process pays;
- NSM ioctl: a C loop of ``ioctl(fd, 0xC0200A00)`` DescribeNSM through the shim, against
  the baseline of the same exchange from Python's ``NsmClient`` straight over the socket.

    .venv/bin/python bench/shim.py [--loops 200000] [--requests 500] [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import cbor2  # noqa: E402

import _machine  # noqa: E402  # bench/ is on sys.path when run as a script

from emulator.settings import Settings  # noqa: E402
from emulator.shim.build import ensure_shim  # noqa: E402
from fake_nsm.client import NsmClient, SocketTransport  # noqa: E402
from fake_nsm.server import NsmServer  # noqa: E402

MODULE_ID = "i-0123456789abcdef0-enc0183d09086c24190"

LOOP_SOURCE = r"""
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>
struct nsm_message { struct iovec request; struct iovec response; };
int main(int argc, char **argv) {
    long loops = atol(argv[2]);
    struct timespec a, b;
    static unsigned char reply[0x3000];
    unsigned char req[] = "\x6b" "DescribeNSM";
    int nsm = strcmp(argv[1], "ioctl") == 0 ? open("/dev/nsm", O_RDWR) : -1;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (long i = 0; i < loops; i++) {
        if (nsm >= 0) {
            struct nsm_message m = {{req, 12}, {reply, sizeof reply}};
            if (ioctl(nsm, _IOWR(0x0A, 0, struct nsm_message), &m) != 0) return 1;
        } else {
            struct stat st;
            int fd = open("/dev/null", O_RDONLY);
            fstat(fd, &st);
            close(fd);
        }
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    printf("%f\n", (b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) / 1e9);
    return 0;
}
"""


def run_loop(binary: Path, mode: str, loops: int, env: dict[str, str]) -> float:
    out = subprocess.run([str(binary), mode, str(loops)], env=env, capture_output=True, text=True, check=True)
    return float(out.stdout)


def python_client(socket_path: Path, requests: int) -> float:
    with NsmClient(transport=SocketTransport(str(socket_path))) as client:
        start = time.perf_counter()
        for _ in range(requests):
            client.describe_nsm()
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--loops", type=int, default=200_000)
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    print(f"machine: {_machine.machine()}")
    with tempfile.TemporaryDirectory(prefix="shimb-") as tmp:
        directory = Path(tmp)
        build = ensure_shim(Settings(home=directory / "home"), musl=False)
        (directory / "loop.c").write_text(LOOP_SOURCE)
        subprocess.run(["cc", "-O2", "-o", str(directory / "loop"), str(directory / "loop.c")], check=True)
        plain = {"PATH": os.environ.get("PATH", "/usr/bin")}
        shimmed = dict(plain, LD_PRELOAD=str(build.library))

        base = [run_loop(directory / "loop", "files", args.loops, plain) for _ in range(args.runs)]
        with_shim = [run_loop(directory / "loop", "files", args.loops, shimmed) for _ in range(args.runs)]
        b, s = statistics.median(base), statistics.median(with_shim)
        print(f"untouched program, open+fstat+close x{args.loops}: "
              f"{b / args.loops * 1e9:.0f} ns without, {s / args.loops * 1e9:.0f} ns with the shim "
              f"(ratio {s / b:.3f})")

        from tests.unit.nsm_helpers import make_device  # the test CA and measurements

        device = make_device(directory / "ca", module_id=MODULE_ID)
        socket_path = directory / "nsm.sock"
        with NsmServer(socket_path, device):
            shimmed["NITRO_EMU_NSM_SOCKET"] = str(socket_path)
            ioctl = [run_loop(directory / "loop", "ioctl", args.requests, shimmed) for _ in range(args.runs)]
            client = [python_client(socket_path, args.requests) for _ in range(args.runs)]
        i, c = statistics.median(ioctl), statistics.median(client)
        print(f"DescribeNSM x{args.requests}: ioctl through the shim {i / args.requests * 1e6:.0f} us, "
              f"Python NsmClient over the socket (baseline) {c / args.requests * 1e6:.0f} us "
              f"(ratio {i / c:.2f}; the shim connects once per ioctl)")
        assert cbor2.loads(device.handle(cbor2.dumps("DescribeNSM")))["DescribeNSM"]["module_id"] == MODULE_ID


if __name__ == "__main__":
    main()
