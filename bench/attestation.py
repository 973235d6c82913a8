"""Attestation documents signed and verified per second, against raw ECDSA P-384.

Measured in one process, in short batches of each scenario that alternate round after
round (the machine is shared: alternating gives every scenario the same load); a rate is
1 / the median CPU time of one call; each figure printed is the median of several runs:
- raw sign: ``private_key.sign`` of a document's Sig_structure bytes (the baseline for signing);
- DocumentSigner.sign: a full document (payload encoding, signature, COSE framing);
- raw verify: ``public_key.verify`` of those same bytes (the baseline for verifying);
- decode + syntax only: ``read_unverified_document`` (what a cached verification adds to
  the ECDSA verify, besides the anchor, validity and policy checks);
- verify, cold chain: ``verify_attestation_document`` with a new ChainCache each time
  (5 certificate signatures + the document's);
- verify, cached chain: the same with a warm cache (the document's signature only).

Targets (issue 2): signing >= 0.8x raw sign; cached verification >= 0.8x raw verify.

    .venv/bin/python bench/attestation.py [--rounds 12] [--batch 20] [--runs 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import cbor2  # noqa: E402
from cryptography.hazmat.primitives import hashes  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature  # noqa: E402

import _machine  # noqa: E402  # bench/ is on sys.path when run as a script

from ca import TestCA  # noqa: E402
from fake_nsm.cert_chain import ChainCache  # noqa: E402
from fake_nsm.cose import sig_structure  # noqa: E402
from fake_nsm.document_signer import DocumentSigner  # noqa: E402
from fake_nsm.verifier import read_unverified_document, verify_attestation_document  # noqa: E402

MODULE_ID = "i-0123456789abcdef0-enc0183d09086c24190"
PCRS = {index: bytes([index]) * 48 for index in range(16)}
NONCE = b"n" * 32
PUBLIC_KEY = b"k" * 294  # the size of an RSA-2048 SPKI, as KMS clients send
ECDSA_SHA384 = ec.ECDSA(hashes.SHA384())


def measure_round_robin(
    scenarios: dict[str, Callable[[], object]], rounds: int, batch: int
) -> dict[str, float]:
    """Calls per CPU-second of each scenario: 1 / the median CPU time of one call.

    Throughput is measured the way a service verifies a stream of documents: ``batch``
    calls of one scenario in a row. The batches of all scenarios alternate, round after
    round, so that they all see the same machine; each call's CPU time (not wall time:
    other tenants of a shared machine do not count) is recorded and the median taken, so
    that a call hit by a context switch does not skew the figure.
    """
    durations: dict[str, list[float]] = {name: [] for name in scenarios}
    clock = time.process_time
    for _ in range(rounds):
        for name, operation in scenarios.items():
            record = durations[name].append
            for _ in range(batch):
                start = clock()
                operation()
                record(clock() - start)
    return {name: 1 / statistics.median(values) for name, values in durations.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=12, help="alternations per run")
    parser.add_argument("--batch", type=int, default=20, help="calls of one scenario in a row")
    parser.add_argument("--runs", type=int, default=5, help="runs (the median is printed)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="nitro-emu-bench-") as home:
        ca = TestCA.load_or_create(Path(home) / "ca")
        signer = DocumentSigner(ca, MODULE_ID)
        document = signer.sign(PCRS, nonce=NONCE, public_key=PUBLIC_KEY)
        credentials = signer.credentials
        private_key = credentials.private_key
        public_key = private_key.public_key()
        protected, _, payload, signature = cbor2.loads(document)
        to_be_signed = sig_structure(protected, payload)
        der_signature = encode_dss_signature(
            int.from_bytes(signature[:48], "big"), int.from_bytes(signature[48:], "big")
        )
        roots = [ca.root_pem]
        warm = ChainCache()
        verify_attestation_document(document, trusted_roots=roots, chain_cache=warm)

        scenarios: dict[str, Callable[[], object]] = {
            "raw sign": lambda: private_key.sign(to_be_signed, ECDSA_SHA384),
            "DocumentSigner.sign": lambda: signer.sign(PCRS, nonce=NONCE, public_key=PUBLIC_KEY),
            "raw verify": lambda: public_key.verify(der_signature, to_be_signed, ECDSA_SHA384),
            "decode + syntax only": lambda: read_unverified_document(document),
            "verify, cold chain": lambda: verify_attestation_document(
                document, trusted_roots=roots, chain_cache=ChainCache()
            ),
            "verify, cached chain": lambda: verify_attestation_document(
                document, trusted_roots=roots, chain_cache=warm
            ),
        }
        baselines = {
            "DocumentSigner.sign": "raw sign",
            "decode + syntax only": "raw verify",
            "verify, cold chain": "raw verify",
            "verify, cached chain": "raw verify",
        }
        rates: dict[str, list[float]] = {name: [] for name in scenarios}
        ratios: dict[str, list[float]] = {name: [] for name in baselines}
        measure_round_robin(scenarios, 1, args.batch)  # warm-up
        for _ in range(args.runs):
            measured = measure_round_robin(scenarios, args.rounds, args.batch)
            for name, value in measured.items():
                rates[name].append(value)
            for name, baseline in baselines.items():
                ratios[name].append(measured[name] / measured[baseline])

    print(f"machine: {_machine.machine(('cbor2', 'cryptography'), load=True)}")
    print(
        f"document: {len(document)} bytes; {args.runs} runs x {args.rounds} rounds x "
        f"{args.batch} calls per scenario"
    )
    print(f"{'scenario':<24} {'per CPU-s':>10}  {'ratio (median of runs)':>24}")
    for name in scenarios:
        line = f"{name:<24} {statistics.median(rates[name]):>10.0f}"
        if name in baselines:
            line += f"  {statistics.median(ratios[name]):>10.2f}x {baselines[name]}"
        print(line)
    print("targets: DocumentSigner.sign >= 0.80x raw sign; verify, cached chain >= 0.80x raw verify")


if __name__ == "__main__":
    main()
