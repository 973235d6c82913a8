"""Many enclaves on one machine (issue 16): start N in sequence, in parallel, under xdist.

For each N (default 1, 8, 32, 64) and each mode:

- ``sequence``: one after another, through ``EnclaveFactory`` (the API the pytest plugin uses);
- ``parallel``: N threads of one process at once, through the same factory;
- ``xdist``: a generated test file of N tests, each using the plugin's ``nitro_enclave``
  fixture, run as ``python -m pytest -n K`` (K = ``--workers``, default min(N, 8)) in a
  subprocess: each worker has its own state dir, CID range and factory.

it reports, in one run:

- the time from the start call (the fixture's set-up under xdist) to the enclave's first NSM
  answer: p50 / p99, and lost enclaves with their error;
- per enclave: the container's memory (cgroup via Docker's stats), the PSS of its host
  processes (supervisor and watchdog), the overhead beyond a bare run of the same image, the
  host processes and containers it has;
- file descriptors held by nitro-emu: its host processes' and this process's;
- the time to terminate all, and what is left afterwards (must be nothing).

Then, with ``--sign N`` (default 32) enclaves running, NSM signing throughput: one thread per
enclave asks its NSM for attestation documents in a loop for ``--sign-seconds``; documents/s
in total and per-request p50/p99, against one enclave asked by one thread (the baseline).
And the engine's own storm: N bare ``docker run`` at once (p50/p99 to first output), against
the same runs in sequence.

``--transport host|engine|auto`` sets ``NITRO_EMU_TRANSPORT`` (issue 13's selection reads it);
the bench prints which transport the runtime picks, and each run's line the transports its
enclaves' records name. Per enclave the engine transport adds its companion container (its
memory counts in the overhead) and the relays' inotify instances.

    .venv/bin/python bench/scale.py [--counts 1 8 32 64] [--modes sequence parallel xdist]
        [--transport host|engine|auto] [--sign 32] [--sign-seconds 10] [--storm 32]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import _machine  # noqa: E402  (bench/ is on sys.path when run as a script)

APP = "import time\nprint('up', flush=True)\ntime.sleep(3600)\n"
BENCH_LABEL = "org.nitro-emu.bench"

XDIST_TEST = '''\
import json, os, time

import pytest


@pytest.fixture
def started_at():
    return time.monotonic()


@pytest.mark.parametrize("index", range({count}))
@pytest.mark.nitro_enclave(dockerfile_dir="app")
def test_enclave_attests(index, started_at, nitro_enclave):
    nitro_enclave.attest_raw(nonce=b"scale")
    line = json.dumps({{"seconds": time.monotonic() - started_at, "home": str(nitro_enclave.home),
                        "pid": nitro_enclave.info.process_id}})
    fd = os.open(os.environ["SCALE_RESULTS"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (line + "\\n").encode())
    finally:
        os.close(fd)
'''


# --- what the host holds ----------------------------------------------------------------------

def _pss_kib(pid: int) -> int:
    """Proportional set size: supervisors are forks of this process, so pages they share
    copy-on-write are split among their sharers instead of counted whole (as RSS does)."""
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


def _family(pid: int) -> list[int]:
    """The supervisor and its children (the watchdog): the enclave's host processes."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return [pid]
    return [pid, *(int(child) for child in children)]


def _inotify_instances() -> int:
    """inotify instances open on the host (every process's fds), e.g. dockerd's log followers."""
    found = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdecimal():
            continue
        try:
            found += sum(os.readlink(fd) == "anon_inode:inotify" for fd in (entry / "fd").iterdir())
        except OSError:
            continue
    return found


def _container_memory(client: Any, container_id: str) -> int:
    stats = client.api.stats(container_id, stream=False)
    return int(stats.get("memory_stats", {}).get("usage", 0))


def _home_containers(client: Any, prefix: str) -> list[dict[str, Any]]:
    """Containers whose nitro-emu home label starts with ``prefix`` (one home, or xdist's)."""
    found = client.api.containers(all=True, filters={"label": "org.nitro-emu.home"})
    return [c for c in found if (c.get("Labels") or {}).get("org.nitro-emu.home", "").startswith(prefix)]


def _host_figures(client: Any, pids: list[int], container_ids: list[str]) -> dict[str, Any]:
    families = [_family(pid) for pid in pids]
    return {
        "container_memory": [_container_memory(client, cid) for cid in container_ids],
        "host_pss": [sum(_pss_kib(p) for p in family) * 1024 for family in families],
        "processes": [len(family) for family in families],
        "fds": sum(_fds(p) for family in families for p in family),
        "own_fds": _fds(os.getpid()),
        "inotify": _inotify_instances(),  # while they run (the engine transport's relays watch dirs)
    }


# --- baselines ---------------------------------------------------------------------------------

def _bare_start(client: Any, image: str) -> tuple[float, int]:
    """(seconds to first output, memory bytes) of a bare docker run of the app's image."""
    start = time.monotonic()
    container = client.containers.run(image, detach=True, network_mode="none", labels={BENCH_LABEL: "1"})
    try:
        while b"up" not in container.logs():
            time.sleep(0.01)
        elapsed = time.monotonic() - start
        time.sleep(0.5)
        return elapsed, _container_memory(client, container.id)
    finally:
        container.remove(force=True)


def _together(count: int, one: Callable[[int], None]) -> float:
    threads = [threading.Thread(target=one, args=(index,)) for index in range(count)]
    began = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.monotonic() - began


def engine_storm(image: str, count: int) -> tuple[list[float], list[str]]:
    """``count`` bare docker runs at once: seconds to first output each, and failures."""
    times: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()

    def one(index: int) -> None:
        import docker

        own = docker.from_env(timeout=600)  # a client per thread, as each run-enclave opens its own
        try:
            elapsed, _ = _bare_start(own, image)
        except Exception as error:  # noqa: BLE001 - a refused run is the finding
            with lock:
                errors.append(f"{type(error).__name__}: {error}")
            return
        finally:
            own.close()
        with lock:
            times.append(elapsed)

    _together(count, one)
    return times, errors


# --- the runs ----------------------------------------------------------------------------------

def run_factory(factory: Any, spec: Any, client: Any, count: int, parallel: bool,
                after: Callable[[list[Any]], None] | None = None) -> dict[str, Any]:
    """N enclaves through the factory, in sequence or in threads; ``after`` sees them running."""
    handles: list[Any] = []
    times: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()

    def one(index: int) -> None:
        start = time.monotonic()
        try:
            handle = factory.start(spec, name=f"s{index}")
            handle.attest_raw(nonce=b"scale")
        except Exception as error:  # noqa: BLE001 - a lost enclave is a result
            with lock:
                errors.append(f"{type(error).__name__}: {error}")
            return
        with lock:
            handles.append(handle)
            times.append(time.monotonic() - start)

    if parallel:
        wall = _together(count, one)
    else:
        began = time.monotonic()
        for index in range(count):
            one(index)
        wall = time.monotonic() - began
    time.sleep(1.0)
    result = _host_figures(client, [h.info.process_id for h in handles], [h.info.container_id for h in handles])
    containers = _home_containers(client, str(factory.home))
    result["containers"] = len(containers)
    enclaves = {h.info.container_id for h in handles}
    others = sum(_container_memory(client, c["Id"]) for c in containers if c["Id"] not in enclaves)
    result["companion_memory"] = others / max(1, len(handles))  # the engine transport's companions
    result["transport"] = _used(handles)
    if after is not None:
        after(handles)
    began = time.monotonic()
    for handle in handles:
        handle.terminate()
    result.update(times=times, errors=errors, wall=wall, teardown=time.monotonic() - began)
    return result


def run_xdist(client: Any, context: Path, scratch: Path, cache: Path, count: int, workers: int) -> dict[str, Any]:
    """N plugin tests under ``pytest -n workers``; per-test figures come from a results file."""
    tests = scratch / f"xdist-{count}"
    (tests / "app").mkdir(parents=True)
    for name in ("app.py", "Dockerfile"):
        (tests / "app" / name).write_text((context / name).read_text())
    (tests / "test_scale.py").write_text(XDIST_TEST.format(count=count))
    results = tests / "results.jsonl"
    state = scratch / f"xdist-{count}-state"
    env = dict(os.environ, SCALE_RESULTS=str(results), PYTHONPATH=str(ROOT))
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", str(workers),
               "--nitro-state-dir", str(state), "--nitro-cache-dir", str(cache), "--timeout", "600", str(tests)]
    began = time.monotonic()
    finished = subprocess.run(command, cwd=tests, env=env, capture_output=True, text=True, check=False)
    wall = time.monotonic() - began
    rows = [json.loads(line) for line in results.read_text().splitlines()] if results.exists() else []
    summary = (finished.stdout.strip().splitlines() or ["(no output)"])[-1]
    errors = [] if finished.returncode == 0 else [f"pytest exit {finished.returncode}: {summary}"]
    errors += [line for line in finished.stdout.splitlines() if line.startswith("E   ")][:3]
    left = _home_containers(client, str(state))
    return {"times": [row["seconds"] for row in rows], "errors": errors, "wall": wall, "summary": summary,
            "left": len(left)}


def signing_throughput(handles: list[Any], seconds: float) -> tuple[int, float, list[float]]:
    """One thread per enclave asks its NSM for documents in a loop: (documents, wall, latencies)."""
    from fake_nsm.client import NsmClient, SocketTransport
    from emulator.settings import Settings

    latencies: list[float] = []
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def one(index: int) -> None:
        handle = handles[index]
        socket_path = Settings(handle.home).run_dir(handle.cid) / "nsm.sock"
        mine: list[float] = []
        with NsmClient(SocketTransport(socket_path, timeout=60.0)) as nsm:
            while time.monotonic() < deadline:
                start = time.monotonic()
                nsm.get_attestation_doc(nonce=os.urandom(16), user_data=b"scale")
                mine.append(time.monotonic() - start)
        with lock:
            latencies.extend(mine)

    wall = _together(len(handles), one)
    return len(latencies), wall, latencies


# --- printing ----------------------------------------------------------------------------------

def _p(values: list[float], fraction: float) -> float:
    return _machine.percentile(values, fraction) if values else float("nan")


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _print_run(count: int, mode: str, result: dict[str, Any], bare_s: float, bare_mb: float) -> None:
    times = result["times"]
    line = (f"N={count:3d} {mode:8s}: attested {len(times)}/{count} in {result['wall']:.1f} s"
            f"{' (' + result['transport'] + ')' if 'transport' in result else ''};"
            f" start->first NSM answer p50 {_median(times):.2f} s p99 {_p(times, 0.99):.2f} s"
            f" ({_median(times) / bare_s:.1f}x bare)")
    if "host_pss" in result:
        mem = _median(result["container_memory"]) / 1e6
        pss = _median(result["host_pss"]) / 1e6
        companion = result["companion_memory"] / 1e6
        line += (f"; per enclave: container {mem:.1f} MB (app alone {bare_mb:.1f}), companion {companion:.1f} MB,"
                 f" host processes' PSS {pss:.1f} MB, overhead {mem - bare_mb + companion + pss:.1f} MB,"
                 f" {_median(result['processes']):.0f} host processes, {result['containers'] / max(1, count):.1f}"
                 f" containers; fds: enclaves' host processes {result['fds']}"
                 f" ({result['fds'] / max(1, len(times)):.1f} each), this process {result['own_fds']};"
                 f" inotify instances on the host {result['inotify']};"
                 f" terminate all {result['teardown']:.1f} s")
    else:
        line += f"; pytest: {result['summary']}; containers left {result['left']}"
    print(line, flush=True)
    for error in result["errors"][:3]:
        print(f"    lost: {error[:400]}", flush=True)


def _transport(requested: str, client: Any) -> str:
    """What the runtime will pick for ``NITRO_EMU_TRANSPORT=requested`` (issue 13's selection)."""
    if not (ROOT / "emulator" / "transport").is_dir():  # not importlib: an editable install elsewhere answers
        if requested == "host":
            return "host (NITRO_EMU_TRANSPORT=host; the only transport in this tree)"
        return (f"host: {requested} was asked for (NITRO_EMU_TRANSPORT={requested}), but this tree has no "
                "emulator.transport, so the runtime ignores the variable")
    from emulator.settings import Settings
    from emulator.transport.selection import choose

    return choose(Settings.from_env(), client).describe()


def _used(handles: list[Any]) -> str:
    """The transports the enclaves' records name (what each enclave actually got)."""
    names = sorted({str(h.info.extra.get("transport", "host")) for h in handles}) or ["-"]
    return "/".join(names)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--counts", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--modes", nargs="+", choices=("sequence", "parallel", "xdist"),
                        default=["sequence", "parallel", "xdist"])
    parser.add_argument("--workers", type=int, default=8, help="xdist workers (at most N)")
    parser.add_argument("--transport", choices=("host", "engine", "auto"), default=os.environ.get("NITRO_EMU_TRANSPORT", "host"))
    parser.add_argument("--sign", type=int, default=32, help="enclaves for the signing throughput (0: skip)")
    parser.add_argument("--sign-seconds", type=float, default=10.0)
    parser.add_argument("--storm", type=int, default=32, help="bare docker runs at once (0: skip)")
    options = parser.parse_args()
    os.environ["NITRO_EMU_TRANSPORT"] = options.transport
    if not os.environ.get("NITRO_EMU_CPU_POOL") and not os.environ.get("NITRO_EMU_CPU_COUNT"):
        os.environ["NITRO_EMU_CPU_COUNT"] = str(max(31, *options.counts, options.sign))  # the default pool is 31

    import docker

    from emulator.engine.base_image import ensure_base_image
    from emulator.testing.handles import EnclaveFactory, EnclaveSpec

    client = docker.from_env(timeout=600)
    print(f"machine: {_machine.machine(('docker',), system=True, load=True)}, "
          f"{os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') / 2**30:.0f} GiB, "
          f"engine {client.version().get('Version')}")
    print(f"transport: {_transport(options.transport, client)}")
    print(f"CPU pool: NITRO_EMU_CPU_COUNT={os.environ.get('NITRO_EMU_CPU_COUNT')} "
          f"NITRO_EMU_CPU_POOL={os.environ.get('NITRO_EMU_CPU_POOL')}")
    inotify_before = _inotify_instances()
    with tempfile.TemporaryDirectory(prefix="nitro-emu-scale-") as raw_scratch:
        scratch = Path(raw_scratch)
        context = scratch / "app"
        context.mkdir()
        (context / "app.py").write_text(APP)
        base = ensure_base_image(client)
        (context / "Dockerfile").write_text(f'FROM {base}\nCOPY app.py /app/\nCMD ["python3", "-u", "/app/app.py"]\n')
        cache = scratch / "eif-cache"
        factory = EnclaveFactory(scratch / "h", docker_client=client, worker="scale", cache_dir=cache)
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
            print(f"bare docker run of the app's image: first output p50 {bare_s:.3f} s, memory {bare_mb:.1f} MB",
                  flush=True)
            for count in options.counts:
                for mode in options.modes:
                    if mode == "xdist":
                        result = run_xdist(client, context, scratch, cache, count, min(count, options.workers))
                        mode = f"xdist-{min(count, options.workers)}"
                    else:
                        result = run_factory(factory, spec, client, count, mode == "parallel")
                    _print_run(count, mode, result, bare_s, bare_mb)
            if options.sign:
                _print_signing(factory, spec, client, options.sign, options.sign_seconds)
            if options.storm:
                alone = [_bare_start(client, built.image)[0] for _ in range(5)]
                times, errors = engine_storm(built.image, options.storm)
                print(f"engine storm: {options.storm} bare docker runs at once: {len(times)}/{options.storm} ran,"
                      f" first output p50 {_median(times):.2f} s p99 {_p(times, 0.99):.2f} s; alone p50"
                      f" {_median(alone):.2f} s ({_median(times) / _median(alone):.1f}x)", flush=True)
                for error in errors[:3]:
                    print(f"    refused: {error[:400]}")
        finally:
            factory.close()
        left = _home_containers(client, str(scratch))
        print(f"left after all runs: {len(left)} containers; inotify instances on the host"
              f" {inotify_before} before, {_inotify_instances()} after")
    return 0


def _print_signing(factory: Any, spec: Any, client: Any, count: int, seconds: float) -> None:
    def measure(handles: list[Any]) -> None:
        one_docs, one_wall, one_lat = signing_throughput(handles[:1], seconds / 2)
        docs, wall, latencies = signing_throughput(handles, seconds)
        rate, one_rate = docs / wall, one_docs / one_wall
        print(f"NSM signing, {len(handles)} enclaves each asked in a loop: {rate:.0f} documents/s,"
              f" per request p50 {_median(latencies) * 1e3:.0f} ms p99 {_p(latencies, 0.99) * 1e3:.0f} ms;"
              f" 1 enclave alone {one_rate:.0f} documents/s, p50 {_median(one_lat) * 1e3:.1f} ms"
              f" ({rate / one_rate:.2f}x)", flush=True)

    result = run_factory(factory, spec, client, count, True, after=measure)
    if result["errors"]:
        print(f"    signing run lost {len(result['errors'])}: {result['errors'][0][:300]}")


if __name__ == "__main__":
    sys.exit(main())
