"""Long fuzz campaign of the fake NSM: request decoder, device and socket framing.

Mutates valid requests (bit flips, truncation, splices, width changes, random CBOR) and checks
that every input gets a well-formed NSM reply that re-encodes to the same bytes, and that a
server fed broken frames still answers a good client. Prints the machine, cases/s and every
failure with a hex reproducer.

    .venv/bin/python bench/fuzz_nsm.py --seconds 300 [--seed 1]
"""

from __future__ import annotations

import argparse
import logging
import random
import socket
import struct
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path

import cbor2

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import _machine  # noqa: E402  # bench/ is on sys.path when run as a script

from fake_nsm import codec  # noqa: E402
from fake_nsm.device import NsmDevice  # noqa: E402
from fake_nsm.server import NsmServer  # noqa: E402

MODULE_ID = "i-0123456789abcdef0-enc0123456789abcdef"
SEEDS = [
    codec.encode_request(r)
    for r in (
        codec.DescribePCR(16),
        codec.ExtendPCR(17, b"abc"),
        codec.LockPCR(18),
        codec.LockPCRs(32),
        codec.DescribeNSM(),
        codec.GetRandom(),
        codec.Attestation(b"u" * 40, None, b"k" * 20),
    )
]


class FuzzSigner:
    """Signs nothing: the campaign fuzzes the wire and the PCR bank, not the signer."""

    def sign(self, pcrs: Mapping[int, bytes], *, user_data=None, nonce=None, public_key=None) -> bytes:  # type: ignore[no-untyped-def]
        return cbor2.dumps([dict(pcrs), user_data, nonce, public_key])


def mutate(rng: random.Random) -> bytes:
    data = bytearray(rng.choice(SEEDS))
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(6)
        if op == 0 and data:
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        elif op == 1 and data:
            del data[rng.randrange(len(data)) :]
        elif op == 2:
            data[rng.randrange(len(data) + 1) : 0] = rng.randbytes(rng.randint(1, 8))
        elif op == 3:
            data += rng.choice(SEEDS)
        elif op == 4 and data:
            data[rng.randrange(len(data))] = rng.choice([0x18, 0x19, 0x1A, 0x1B, 0x5F, 0x7F, 0x9F, 0xBF, 0xFF, 0xF7])
        else:
            data = bytearray(rng.randbytes(rng.randint(0, 64)))
    return bytes(data)


def check_one(device: NsmDevice, data: bytes) -> None:
    reply = device.handle(data)
    response = codec.decode_response(reply)
    assert codec.encode_response(response) == reply, "reply does not re-encode identically"
    try:
        request = codec.decode_request(data)
    except codec.NsmRequestError as error:
        assert response == codec.ErrorResponse(error.code), f"{error.code} vs {response}"
        return
    assert codec.decode_request(codec.encode_request(request)) == request, "request round trip"


def check_frames(path: Path, rng: random.Random) -> None:
    junk = bytearray()
    for _ in range(rng.randint(1, 5)):
        body = mutate(rng)
        length = len(body) if rng.random() < 0.7 else rng.randrange(2**32)
        junk += struct.pack(">I", length) + body[: rng.randint(0, len(body))]
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as bad:
        bad.settimeout(10)
        bad.connect(str(path))
        try:
            bad.sendall(junk)
            bad.shutdown(socket.SHUT_WR)
            while bad.recv(65536):
                pass
        except (BrokenPipeError, ConnectionResetError):
            pass
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as good:
        good.settimeout(10)
        good.connect(str(path))
        good.sendall(struct.pack(">I", len(SEEDS[4])) + SEEDS[4])
        (length,) = struct.unpack(">I", good.recv(4, socket.MSG_WAITALL))
        assert isinstance(codec.decode_response(good.recv(length, socket.MSG_WAITALL)), codec.DescribeNSMResponse)


def campaign(name: str, seconds: float, step: Callable[[], bytes]) -> tuple[int, int]:
    cases = failures = 0
    deadline = time.perf_counter() + seconds
    start = time.perf_counter()
    while time.perf_counter() < deadline:
        data = b""
        try:
            data = step()
        except Exception:  # noqa: BLE001 - every failure is reported, the campaign goes on
            failures += 1
            if failures <= 10:
                print(f"FAILURE in {name} (input {data.hex() or 'see trace'}):\n{traceback.format_exc()}")
        cases += 1
    elapsed = time.perf_counter() - start
    print(f"{name:8s} {cases:9d} cases  {cases / elapsed:10.0f} cases/s  {failures} failures")
    return cases, failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="total duration (default 60)")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    rng = random.Random(seed)
    logging.getLogger("fake_nsm").setLevel(logging.CRITICAL)  # one warning per bad client
    print(f"machine: {_machine.machine(('cbor2',))}")
    print(f"seed: {seed}")
    device = NsmDevice(module_id=MODULE_ID, signer=FuzzSigner())

    def decoder_step() -> bytes:
        data = mutate(rng)
        check_one(device, data)
        return data

    total_failures = 0
    _, failures = campaign("decoder", args.seconds * 0.8, decoder_step)
    total_failures += failures
    with tempfile.TemporaryDirectory(prefix="nsmfz-") as tmp, NsmServer(Path(tmp) / "s", device) as server:

        def frame_step() -> bytes:
            check_frames(server.socket_path, rng)
            return b""

        _, failures = campaign("framing", args.seconds * 0.2, frame_step)
        total_failures += failures
        assert server.serving
    print(f"total failures: {total_failures}")
    return 1 if total_failures else 0


if __name__ == "__main__":
    sys.exit(main())
