"""Attestation throughput and latency of the fake NSM over its socket, against in-process signing.

Measured in one run, each scenario repeated (median reported):
- baseline: ``DocumentSigner.sign`` called in-process, one thread;
- socket, 1 client: ``NsmClient.get_attestation_doc`` over the Unix socket;
- socket, 8 clients: 8 threads, one connection each.

The clients run in a separate process, as enclave code does (its own container process), so
they do not share the server's GIL.

Targets (issue 3): 8 clients >= 0.7x the in-process rate; p50 <= 2 ms.

    .venv/bin/python bench/nsm.py [--requests 400] [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import _machine  # noqa: E402  # bench/ is on sys.path when run as a script

from ca import TestCA  # noqa: E402
from fake_nsm.client import NsmClient, SocketTransport  # noqa: E402
from fake_nsm.device import NsmDevice  # noqa: E402
from fake_nsm.document_signer import DocumentSigner  # noqa: E402
from fake_nsm.server import NsmServer  # noqa: E402

MODULE_ID = "i-0123456789abcdef0-enc0183d09086c24190"
MEASUREMENTS = {0: b"\x01" * 48, 1: b"\x02" * 48, 2: b"\x03" * 48}
NONCE = b"n" * 32
PUBLIC_KEY = b"k" * 294  # the size of an RSA-2048 SPKI, as KMS clients send


def in_process(signer: DocumentSigner, device: NsmDevice, requests: int) -> float:
    """Documents per second from DocumentSigner.sign alone (the baseline)."""
    pcrs = device.locked_pcrs()
    start = time.perf_counter()
    for _ in range(requests):
        signer.sign(pcrs, nonce=NONCE, public_key=PUBLIC_KEY)
    return requests / (time.perf_counter() - start)


def over_socket(path: Path, clients: int, requests: int) -> tuple[float, list[float]]:
    """(documents per second, latencies in seconds) measured by a separate client process."""
    command = [sys.executable, __file__, "--client", str(path), str(clients), str(requests)]
    result = subprocess.run(command, capture_output=True, text=True, check=True, timeout=600)
    measured = json.loads(result.stdout)
    return measured["rate"], measured["latencies"]


def client_process(path: Path, clients: int, requests: int) -> tuple[float, list[float]]:
    """(documents per second, per-request latencies in seconds) with ``clients`` threads."""
    per_client = requests // clients
    latencies: list[list[float]] = [[] for _ in range(clients)]
    connections = [NsmClient(SocketTransport(path)) for _ in range(clients)]
    barrier = threading.Barrier(clients + 1)

    def work(number: int) -> None:
        nsm, own = connections[number], latencies[number]
        barrier.wait()
        for _ in range(per_client):
            begin = time.perf_counter()
            nsm.get_attestation_doc(nonce=NONCE, public_key=PUBLIC_KEY)
            own.append(time.perf_counter() - begin)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    barrier.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    for nsm in connections:
        nsm.close()
    flat = [value for own in latencies for value in own]
    return len(flat) / elapsed, flat


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=400, help="documents per scenario and run")
    parser.add_argument("--runs", type=int, default=5, help="repetitions; medians are reported")
    parser.add_argument("--client", nargs=3, metavar=("SOCKET", "CLIENTS", "REQUESTS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:  # the load generator, run as a separate process by over_socket()
        rate, latencies = client_process(Path(args.client[0]), int(args.client[1]), int(args.client[2]))
        print(json.dumps({"rate": rate, "latencies": latencies}))
        return 0
    logging.getLogger("fake_nsm").setLevel(logging.ERROR)
    print(f"machine: {_machine.machine(('cbor2', 'cryptography'))}; load average {os.getloadavg()[0]:.1f} at start")
    print(f"{args.runs} runs x {args.requests} attestation documents per scenario (nonce 32 B, public_key 294 B)")
    with tempfile.TemporaryDirectory(prefix="nsmb-") as tmp:
        signer = DocumentSigner(TestCA.load_or_create(Path(tmp) / "ca"), MODULE_ID)
        device = NsmDevice(module_id=MODULE_ID, signer=signer, measurements=MEASUREMENTS)
        in_process(signer, device, 20)  # warm-up: leaf issuance, imports
        baseline: list[float] = []
        rates: dict[int, list[float]] = {1: [], 8: []}
        p50: dict[int, list[float]] = {1: [], 8: []}
        p99: dict[int, list[float]] = {1: [], 8: []}
        with NsmServer(Path(tmp) / "nsm.sock", device) as server:
            over_socket(server.socket_path, 1, 20)
            for _ in range(args.runs):  # interleaved, so drift hits every scenario alike
                baseline.append(in_process(signer, device, args.requests))
                for clients in (1, 8):
                    rate, latencies = over_socket(server.socket_path, clients, args.requests)
                    rates[clients].append(rate)
                    p50[clients].append(_machine.percentile(latencies, 0.50))
                    p99[clients].append(_machine.percentile(latencies, 0.99))
    base = statistics.median(baseline)
    print(f"{'scenario':28s} {'docs/s':>9s} {'ratio':>7s} {'p50 ms':>8s} {'p99 ms':>8s}")
    print(f"{'in-process DocumentSigner':28s} {base:9.0f} {1.0:7.2f} {1000 / base:8.2f} {'':>8s}")
    ok = True
    for clients in (1, 8):
        rate = statistics.median(rates[clients])
        median_p50 = statistics.median(p50[clients]) * 1000
        median_p99 = statistics.median(p99[clients]) * 1000
        label = f"socket, {clients} client{'s' if clients > 1 else ''}"
        print(f"{label:28s} {rate:9.0f} {rate / base:7.2f} {median_p50:8.2f} {median_p99:8.2f}")
        if clients == 8:
            ok &= rate / base >= 0.7
        ok &= median_p50 <= 2.0 or clients > 1
    print(f"targets (8 clients >= 0.70x in-process, 1-client p50 <= 2 ms): {'met' if ok else 'NOT met'}")
    print(f"load average {os.getloadavg()[0]:.1f} at end (a shared machine inflates latencies)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
