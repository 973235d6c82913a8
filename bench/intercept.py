"""What the syscall interceptor costs a program that never touches /dev/nsm or AF_VSOCK.

One static C loop program, run directly (baseline) and under the interceptor's launcher in
the same run, alternately, each scenario repeated (median reported, ratio against the
baseline):

- ``files``: ``openat`` of another file + ``fstat`` + ``close``: not trapped at all (the
  filter only looks at the syscall number and, for ioctl and socket, one argument);
- ``inet``: ``socket(AF_INET)`` + ``close``: socket is trapped for AF_VSOCK only, in BPF;
- ``ioctl``: ``ioctl(FIONREAD)`` on a pipe: ioctl is trapped for 0xC0200A00 only, in BPF;
- ``getsockname``: on an AF_INET socket: getsockname is always trapped (BPF cannot tell an
  AF_VSOCK socket by its fd), so this is the price of a round trip to the handler that answers
  CONTINUE. bind, connect, listen, accept and getpeername on other sockets pay the same.

    .venv/bin/python bench/intercept.py [--loops 200000] [--runs 9]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import _machine  # noqa: E402  # bench/ is on sys.path when run as a script

from emulator.settings import Settings  # noqa: E402
from emulator.shim.intercept import check_kernel, ensure_interceptor  # noqa: E402

LOOP_SOURCE = r"""
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
int main(int argc, char **argv) {
    long loops = atol(argv[2]);
    const char *mode = argv[1];
    struct timespec a, b;
    int pipes[2], queued, inet = socket(AF_INET, SOCK_STREAM, 0);
    pipe(pipes);
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (long i = 0; i < loops; i++) {
        if (strcmp(mode, "files") == 0) {
            struct stat st;
            int fd = openat(AT_FDCWD, "/etc/hostname", O_RDONLY);
            fstat(fd, &st);
            close(fd);
        } else if (strcmp(mode, "inet") == 0) {
            close(socket(AF_INET, SOCK_STREAM, 0));
        } else if (strcmp(mode, "ioctl") == 0) {
            ioctl(pipes[0], FIONREAD, &queued);
        } else {
            struct sockaddr_in in;
            socklen_t len = sizeof in;
            getsockname(inet, (struct sockaddr *)&in, &len);
        }
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    printf("%f\n", (b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) / 1e9);
    return 0;
}
"""
MODES = ("files", "inet", "ioctl", "getsockname")


def run_loop(prefix: list[str], binary: Path, mode: str, loops: int) -> float:
    out = subprocess.run([*prefix, str(binary), mode, str(loops)], capture_output=True, text=True, check=True)
    return float(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--loops", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=9)
    args = parser.parse_args()
    print(f"machine: {_machine.machine(system=True, load=True)}")
    with tempfile.TemporaryDirectory(prefix="interceptb-") as tmp:
        directory = Path(tmp)
        launcher = ensure_interceptor(Settings(home=directory / "home"))
        found = check_kernel(launcher)
        print(f"kernel check: {found.detail}")
        if not found.available:
            raise SystemExit("this kernel cannot run the interceptor")
        (directory / "loop.c").write_text(LOOP_SOURCE)
        compiler = shutil.which("musl-gcc") or "cc"
        subprocess.run([compiler, "-static", "-O2", "-o", str(directory / "loop"), str(directory / "loop.c")],
                       check=True)
        for mode in MODES:
            # interleaved, so that the other tenants' load falls on both sides alike
            pairs = [(run_loop([], directory / "loop", mode, args.loops),
                      run_loop([str(launcher)], directory / "loop", mode, args.loops)) for _ in range(args.runs)]
            base = statistics.median(pair[0] for pair in pairs)
            under = statistics.median(pair[1] for pair in pairs)
            print(f"{mode:12s} x{args.loops}: {base / args.loops * 1e9:7.0f} ns without, "
                  f"{under / args.loops * 1e9:7.0f} ns under the interceptor (ratio {under / base:.3f})")


if __name__ == "__main__":
    main()
