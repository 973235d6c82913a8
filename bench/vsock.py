"""Benchmark of the VSOCK mirror: throughput (1 and 8 streams), round-trip latency, forwarder.

    .venv/bin/python bench/vsock.py [--runs 5] [--mib 512] [--mode auto|container|process]
                                    [--engine-transport]

Host <-> enclave is measured against a real enclave (run_enclave; ``--mode container``) or,
without Docker, a second process over the same run-dir layout (``--mode process``). The
baseline is a plain Unix stream socket between two processes running the same server code,
measured in the same run. Prints the machine, the median of ``--runs`` runs, and the ratios.
Targets (issue 5): >= 0.5x plain and >= 1 GB/s with one stream; p50 RTT <= 3x plain.
``--engine-transport`` adds an enclave on the engine transport (issue 13: 1-stream throughput
>= 0.3x the host transport's).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import _machine  # noqa: E402  # bench/ is on sys.path when run as a script

from emulator import vsock  # noqa: E402

PROGRAM = ["discard:5004", "echo:5000"]
Connect = Callable[[], socket.socket]


def _spawn(code: str, env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", code, *args], env=env, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("ready"):
        raise RuntimeError(f"server did not start: {line!r}")
    return proc


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if proc.stdout:
        proc.stdout.close()


PLAIN_SERVER = """
import signal, socket, sys, threading
from emulator.vsock import peer as vsock_peer
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
for kind, path in (("discard", sys.argv[1]), ("echo", sys.argv[2])):
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen(64)
    threading.Thread(target=vsock_peer._accept_loop, args=(kind, listener), daemon=True).start()
print("ready", flush=True)
signal.pause()
"""


def _dial(path: str) -> Connect:
    def connect() -> socket.socket:
        sock = socket.socket(socket.AF_UNIX)
        sock.connect(path)
        return sock

    return connect


@contextlib.contextmanager
def plain_server(workdir: Path, cpus: set[int] | None) -> Iterator[tuple[Connect, Connect]]:
    """The baseline: the same server code on plain Unix sockets in another process.

    ``cpus``: pin it to the CPUs the enclave got, so both servers get the same CPU time.
    """
    discard, echo = str(workdir / "plain-discard"), str(workdir / "plain-echo")
    proc = _spawn(PLAIN_SERVER, {**os.environ, "PYTHONPATH": str(ROOT)}, discard, echo)
    if cpus:
        os.sched_setaffinity(proc.pid, cpus)

    try:
        yield _dial(discard), _dial(echo)
    finally:
        _stop(proc)


@contextlib.contextmanager
def process_enclave(home: Path) -> Iterator[tuple[int, set[int] | None, tuple[Connect, Connect] | None]]:
    """A second process playing enclave CID 16 over the run-dir layout (no Docker)."""
    run_dir = home / "run" / "16"
    run_dir.mkdir(parents=True)  # home = $NITRO_EMU_HOME
    (home / "run" / "parent").mkdir(exist_ok=True)
    (run_dir / "parent").symlink_to("../parent")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NITRO_EMU_CID": "16", "NITRO_EMU_VSOCK_ROOT": str(run_dir)}
    proc = _spawn("import sys; from emulator.vsock.peer import main; sys.exit(main(sys.argv[1:]))", env, *PROGRAM)
    try:
        yield 16, None, None
    finally:
        _stop(proc)


@contextlib.contextmanager
def container_enclave(
    home: Path, transport: str = "host"
) -> Iterator[tuple[int, set[int] | None, tuple[Connect, Connect] | None]]:
    """A real enclave (Docker) running the same server code, on ``transport``.

    On the host transport, also yields connectors to the plain-socket server started inside
    that enclave: the same container, without the VSOCK addressing, to separate the
    container's cost from the mirror's (the engine transport shares no path to reach it by).
    """
    import docker

    from emulator.enclave.runtime import run_enclave, terminate_enclave
    from emulator.vsock.peer_image import peer_eif

    client = docker.from_env()
    eif = peer_eif(client, PROGRAM, home.parent / "bench.eif")
    os.environ["NITRO_EMU_TRANSPORT"] = transport
    info = run_enclave(eif, memory_mib=1024, cpu_count=1)
    try:
        path = Path(vsock.listener_path(info.cid, 5000))
        deadline = time.monotonic() + 30
        while not path.exists():
            if time.monotonic() > deadline:
                raise RuntimeError("the enclave never listened on port 5000")
            time.sleep(0.05)
        if transport != "host":
            yield info.cid, set(info.host_cpus), None
            return
        (container,) = client.containers.list(filters={"label": f"org.nitro-emu.enclave-id={info.enclave_id}"})
        inside = PLAIN_SERVER.replace("from emulator.vsock import peer as vsock_peer", "sys.path.insert(0, '/app'); import vsock_peer")
        container.exec_run(
            ["python3", "-c", inside, "/run/nitro-emu/bench-discard", "/run/nitro-emu/bench-echo"], detach=True
        )
        run_dir = Path(vsock.listener_path(info.cid, 5000)).parent.parent
        while not (run_dir / "bench-echo").exists():
            if time.monotonic() > deadline:
                raise RuntimeError("the plain server in the enclave never started")
            time.sleep(0.05)
        yield info.cid, set(info.host_cpus), (_dial(str(run_dir / "bench-discard")), _dial(str(run_dir / "bench-echo")))
    finally:
        terminate_enclave(info.enclave_id)
        client.close()


_SINK = "import os\nwhile os.read(0, 1 << 20): pass\n"
_TCP_SINK = (
    "import socket\ns = socket.socket()\ns.bind(('0.0.0.0', 7000))\ns.listen(1)\nprint('ready', flush=True)\n"
    "conn, _ = s.accept()\nwhile conn.recv(1 << 20): pass\n"
)


def carrier_ceilings(total: int) -> dict[str, float]:
    """Bytes/s of the two carriers an engine transport could use, with no relay at all.

    Into a container's stdin over a Docker API attach stream (what the engine transport
    uses), and into a TCP port it publishes on 127.0.0.1 (the alternative, see
    docs/transport.md "Why an attach stream").
    """
    import docker

    from emulator.engine.base_image import ensure_base_image

    client = docker.from_env()
    image = ensure_base_image(client)
    block = b"z" * (1 << 20)
    results: dict[str, float] = {}
    container = client.containers.create(image, ["python3", "-c", _SINK], stdin_open=True, detach=False,
                                         network_mode="none")
    try:
        attached = client.api.attach_socket(container.id, params={"stdin": 1, "stdout": 1, "stream": 1})
        sock = getattr(attached, "_sock", attached)
        container.start()
        start = time.monotonic()
        for _ in range(total >> 20):
            sock.sendall(block)
        sock.shutdown(socket.SHUT_WR)
        container.wait(timeout=120)
        results["attach stream"] = total / (time.monotonic() - start)
        sock.close()
    finally:
        container.remove(force=True)
    container = client.containers.run(image, ["python3", "-u", "-c", _TCP_SINK], detach=True,
                                      ports={"7000/tcp": ("127.0.0.1", None)})
    try:
        deadline = time.monotonic() + 30
        while b"ready" not in container.logs() and time.monotonic() < deadline:
            time.sleep(0.05)
        container.reload()
        port = int(container.attrs["NetworkSettings"]["Ports"]["7000/tcp"][0]["HostPort"])
        with socket.create_connection(("127.0.0.1", port)) as sock:
            start = time.monotonic()
            for _ in range(total >> 20):
                sock.sendall(block)
            sock.shutdown(socket.SHUT_WR)
            sock.recv(1)
            results["published port"] = total / (time.monotonic() - start)
    finally:
        container.remove(force=True)
        client.close()
    return results


def throughput(connect: Connect, total: int, streams: int) -> float:
    """Bytes per second pushing ``total`` bytes over ``streams`` connections to a discard server."""
    block = memoryview(bytes(1 << 20))
    share = total // streams
    socks = [connect() for _ in range(streams)]
    errors: list[BaseException] = []

    def push(sock: socket.socket) -> None:
        try:
            left = share
            while left:
                step = min(left, len(block))
                sock.sendall(block[:step])
                left -= step
            sock.shutdown(socket.SHUT_WR)
            reply = sock.makefile("rb").readline()
            if int(reply) != share:
                raise RuntimeError(f"the server got {reply!r} bytes, expected {share}")
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    start = time.perf_counter()
    threads = [threading.Thread(target=push, args=(sock,)) for sock in socks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    for sock in socks:
        sock.close()
    if errors:
        raise errors[0]
    return share * streams / elapsed


def round_trips(connect: Connect, count: int) -> list[float]:
    """Round-trip times (µs) of 1-byte pings to an echo server."""
    with connect() as sock:
        times = []
        for _ in range(count):
            start = time.perf_counter_ns()
            sock.sendall(b"p")
            if not sock.recv(1):
                raise RuntimeError("echo server closed")
            times.append((time.perf_counter_ns() - start) / 1000)
    return times


@contextlib.contextmanager
def forwarder_to(cid: int, port: int) -> Iterator[Connect]:
    """``nitro-emu vsock-forward`` in its own process; yields a TCP connector to it."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "emulator.cli", "vsock-forward", "--to-enclave", f"{cid}:{port}",
         "--listen", "127.0.0.1:0"],
        env={**os.environ, "PYTHONPATH": str(ROOT)}, stderr=subprocess.PIPE, text=True,
    )
    assert proc.stderr is not None
    line = proc.stderr.readline()
    tcp_port = int(line.split("tcp 127.0.0.1:")[1].split()[0])
    try:
        yield lambda: socket.create_connection(("127.0.0.1", tcp_port))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
        proc.stderr.close()


def median_of(runs: int, measure: Callable[[], float]) -> float:
    measure()  # warm-up
    return statistics.median(measure() for _ in range(runs))


def interleaved_medians(runs: int, measures: list[Callable[[], float]]) -> list[float]:
    """Medians of measures taken in turn, run after run, so that load changes hit all alike."""
    for measure in measures:
        measure()  # warm-up
    samples = [[measure() for measure in measures] for _ in range(runs)]
    return [statistics.median(run[i] for run in samples) for i in range(len(measures))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--mib", type=int, default=512, help="MiB per throughput run")
    parser.add_argument("--pings", type=int, default=5000)
    parser.add_argument("--mode", choices=("auto", "container", "process"), default="auto")
    parser.add_argument("--engine-transport", action="store_true",
                        help="also an enclave on the engine transport (docs/transport.md), as a ratio to the host's")
    args = parser.parse_args()
    mode = args.mode
    if mode == "auto":
        try:
            import docker

            docker.from_env().ping()
            mode = "container"
        except Exception:  # noqa: BLE001 - no engine: fall back to a process
            mode = "process"
    total = args.mib << 20
    print(f"machine: {_machine.machine(system=True)}")
    print(f"enclave: {mode}; {args.runs} runs, median; {args.mib} MiB per throughput run")
    with tempfile.TemporaryDirectory(prefix="vb", dir="/tmp") as tmp:
        home = Path(tmp)
        os.environ["NITRO_EMU_HOME"] = str(home / "home")
        enclave = container_enclave if mode == "container" else process_enclave
        with contextlib.ExitStack() as stack:
            cid, cpus, inside = stack.enter_context(enclave(home / "home"))
            plain = stack.enter_context(plain_server(home, cpus))
            if cpus:
                print(f"enclave CPUs (host): {sorted(cpus)}; the plain server is pinned to them too")
            series: dict[str, tuple[Connect, Connect]] = {"plain unix": plain}
            if inside:
                series["plain in enclave"] = inside
            series["vsock mirror"] = (lambda: vsock.connect(cid, 5004), lambda: vsock.connect(cid, 5000))
            if args.engine_transport and mode == "container":
                engine_cid, _, _ = stack.enter_context(container_enclave(home / "home", "engine"))
                series["engine transport"] = (lambda: vsock.connect(engine_cid, 5004),
                                              lambda: vsock.connect(engine_cid, 5000))
            rows = []
            for streams in (1, 8):
                values = interleaved_medians(
                    args.runs, [lambda d=d: throughput(d, total, streams) for d, _ in series.values()]
                )
                rows.append((f"throughput, {streams} stream(s)", [v / 1e9 for v in values], "GB/s"))
            rtts: list[list[list[float]]] = [[] for _ in series]
            for _ in range(args.runs):  # in turn, as above
                for index, (_, echo) in enumerate(series.values()):
                    rtts[index].append(round_trips(echo, args.pings))
            for label, fraction in (("p50", 0.5), ("p99", 0.99)):
                values = [statistics.median(_machine.percentile(r, fraction) for r in runs) for runs in rtts]
                rows.append((f"round trip {label}", values, "µs"))
            with forwarder_to(cid, 5004) as tcp_discard:
                forward = median_of(args.runs, lambda: throughput(tcp_discard, total, 1))
        names = list(series)
        mirror = names.index("vsock mirror")
        header = "".join(f"{name:>20}" for name in names)
        extra = (f" {'mirror/in-encl':>15}" if inside else "") + (
            f" {'engine/host':>12}" if "engine transport" in series else "")
        print(f"{'measure':26}{header} {'mirror/plain':>13}" + extra)
        for label, values, unit in rows:
            cells = "".join(f"{value:>14.3f} {unit:5}" for value in values)
            ratios = f" {values[mirror] / values[0]:>12.2f}x" + (f" {values[mirror] / values[1]:>14.2f}x" if inside else "")
            if "engine transport" in series:
                ratios += f" {values[-1] / values[mirror]:>11.2f}x"
            print(f"{label:26}{cells}{ratios}")
        plain_one = rows[0][1][0]
        print(f"{'forwarder tcp->vsock, 1 st':26}{forward / 1e9:>14.3f} GB/s  ({forward / 1e9 / plain_one:.2f}x plain)")
        if args.engine_transport and mode == "container":
            host_one = rows[0][1][names.index("vsock mirror")]
            for carrier, rate in carrier_ceilings(total).items():
                print(f"{'carrier: ' + carrier:26}{rate / 1e9:>14.3f} GB/s  ({rate / 1e9 / host_one:.2f}x the host "
                      "transport; raw, no relay)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
