"""CLI: ``nitro-emu attest``, an attestation document without running an enclave (docs/ca.md).

The document is what an enclave's NSM would return: signed by a leaf of the test CA, PCRs
0..15 (the set locked at boot), AWS's byte layout. Default PCRs are deterministic (see
``DEFAULT_PCRS_HELP``) so scripts and key policies can rely on them.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

from emulator.errors import EmulatorError

FIELD_LIMIT = 1024  # what AWS's own NSM test exercises per field (nitro-facts §1.3)
PCR_BYTES = 48
LOCKED_AT_BOOT = range(16)
DEBUG_ZEROED = (0, 1, 2, 8)  # nitro-facts §2.5
_MODULE_ID = re.compile(r"^(i-[0-9a-f]{17})-enc[0-9a-f]{16}$")
_PCR_ARG = re.compile(r"^(\d+)=(.*)$", re.DOTALL)

DEFAULT_PCRS_HELP = (
    "Default PCRs (0..15, all locked): PCRn = SHA384('nitro-emu attest PCRn') for n = 0, 1, 2; "
    "PCR4 = SHA384(48 zero bytes || instance id of the module id), as on Nitro; all others "
    "48 zero bytes (no IAM role, unsigned image)."
)


class AttestInputError(EmulatorError):
    """An ``attest`` option is unusable; the message names it and the expected form."""


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``attest`` to the top-level parser."""
    parser = subparsers.add_parser(
        "attest",
        help="make an attestation document signed by the test CA (no enclave needed)",
        description="Make an attestation document as an enclave's NSM would, signed by a fresh "
        "leaf of the test CA. " + DEFAULT_PCRS_HELP,
    )
    parser.add_argument(
        "--pcr", action="append", default=[], metavar="N=HEX",
        help="set PCR N (0..31) to 48 bytes given as 96 hex digits (repeatable); "
        "indices above 15 are added to the document",
    )
    parser.add_argument(
        "--debug-mode", action="store_true",
        help="a debug-mode enclave's document: PCR0, 1, 2 and 8 are zero",
    )
    parser.add_argument("--user-data", metavar="HEX", help="user_data (at most 1024 bytes)")
    parser.add_argument("--nonce", metavar="HEX", help="nonce (at most 1024 bytes)")
    parser.add_argument(
        "--public-key", metavar="FILE", type=Path,
        help="public_key: the file's bytes; a PEM public key is converted to DER "
        "SubjectPublicKeyInfo (what KMS expects). At most 1024 bytes",
    )
    parser.add_argument(
        "--module-id", metavar="ID",
        help="the enclave id, i-<17 hex>-enc<16 hex> (default: the parent instance of this "
        "state dir + an id derived from the document time)",
    )
    parser.add_argument(
        "--at", metavar="ISO8601",
        help="document time (default: now; no zone = UTC); the leaf is issued at that time",
    )
    parser.add_argument(
        "--definite-map", action="store_true",
        help="write the payload map in the pre-2025 definite form (a9) instead of bf..ff",
    )
    parser.add_argument("--output", "-o", required=True, type=Path, metavar="FILE", help="where to write it")
    parser.add_argument("--base64", action="store_true", help="write base64 text instead of raw CBOR")
    parser.set_defaults(handler=_attest)


def _hex(option: str, text: str | None) -> bytes | None:
    if text is None:
        return None
    try:
        value = bytes.fromhex(text.removeprefix("0x"))
    except ValueError:
        raise AttestInputError(f"{option}: {text!r:.60} is not hexadecimal (e.g. {option} 00ff)") from None
    if len(value) > FIELD_LIMIT:
        raise AttestInputError(f"{option}: {len(value)} bytes, the NSM takes at most {FIELD_LIMIT}")
    return value


def _public_key(path: Path | None) -> bytes | None:
    if path is None:
        return None
    try:
        data = path.read_bytes()
    except OSError as error:
        raise AttestInputError(f"--public-key: cannot read {path} ({error.strerror})") from None
    if data.lstrip().startswith(b"-----BEGIN PUBLIC KEY-----"):
        from cryptography.hazmat.primitives import serialization

        try:
            key = serialization.load_pem_public_key(data)
        except ValueError:
            raise AttestInputError(f"--public-key: {path} is not a valid PEM public key") from None
        data = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if len(data) > FIELD_LIMIT:
        raise AttestInputError(f"--public-key: {len(data)} bytes, the NSM takes at most {FIELD_LIMIT}")
    return data


def _moment(text: str | None) -> datetime:
    if text is None:
        return datetime.now(timezone.utc)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise AttestInputError(f"--at: {text!r} is not ISO 8601 (e.g. 2026-01-31T12:00:00Z)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)


def default_pcrs(instance_id: str) -> dict[int, bytes]:
    """The documented default PCRs for a parent instance (see ``DEFAULT_PCRS_HELP``)."""
    pcrs = {index: bytes(PCR_BYTES) for index in LOCKED_AT_BOOT}
    for index in (0, 1, 2):
        pcrs[index] = hashlib.sha384(f"nitro-emu attest PCR{index}".encode()).digest()
    pcrs[4] = hashlib.sha384(bytes(PCR_BYTES) + instance_id.encode()).digest()  # §3.1
    return pcrs


def build_pcrs(instance_id: str, overrides: list[str], debug_mode: bool) -> dict[int, bytes]:
    """Defaults, then ``--pcr N=HEX`` overrides, then debug mode's zeroes."""
    pcrs = default_pcrs(instance_id)
    for raw in overrides:
        match = _PCR_ARG.match(raw)
        if match is None or not 0 <= int(match.group(1)) <= 31:
            raise AttestInputError(f"--pcr {raw!r:.60}: expected N=HEX with N in 0..31")
        index = int(match.group(1))
        try:
            value = bytes.fromhex(match.group(2).removeprefix("0x"))
        except ValueError:
            raise AttestInputError(f"--pcr {index}: the value is not hexadecimal") from None
        if len(value) != PCR_BYTES:
            raise AttestInputError(
                f"--pcr {index}: {len(value)} bytes, a PCR is {PCR_BYTES} bytes (96 hex digits)"
            )
        if debug_mode and index in DEBUG_ZEROED:
            raise AttestInputError(f"--pcr {index} conflicts with --debug-mode, which zeroes PCR{index}")
        pcrs[index] = value
    if debug_mode:
        for index in DEBUG_ZEROED:
            pcrs[index] = bytes(PCR_BYTES)
    return pcrs


def _module_id(requested: str | None, instance_id: str, moment: datetime) -> str:
    if requested is not None:
        if not _MODULE_ID.match(requested):
            raise AttestInputError(
                f"--module-id: {requested!r} is not i-<17 hex digits>-enc<16 hex digits>"
            )
        return requested
    # Like nitro-cli's ids: 12 hex digits of the start time in ms, 4 random (§2.2).
    started = int((moment - timedelta(seconds=10)).timestamp() * 1000) & (1 << 48) - 1
    return f"{instance_id}-enc{started:012x}{os.urandom(2).hex()}"


def _attest(args: argparse.Namespace) -> int:
    from emulator.enclave.resources import open_home_ca
    from emulator.settings import get_settings
    from fake_nsm.document_signer import DocumentSigner, timestamp_ms

    moment = _moment(args.at)
    user_data = _hex("--user-data", args.user_data)
    nonce = _hex("--nonce", args.nonce)
    public_key = _public_key(args.public_key)
    ca = open_home_ca(get_settings())
    module_id = _module_id(args.module_id, ca.instance_id, moment)
    instance_id = module_id.split("-enc")[0]
    pcrs = build_pcrs(instance_id, args.pcr, args.debug_mode)

    signer = DocumentSigner(ca, module_id, definite_map=args.definite_map, clock=lambda: moment)
    document = signer.sign(pcrs, user_data=user_data, nonce=nonce, public_key=public_key)
    data = base64.b64encode(document) + b"\n" if args.base64 else document
    try:
        args.output.write_bytes(data)
    except OSError as error:
        raise AttestInputError(f"--output: cannot write {args.output} ({error.strerror})") from None
    summary = {
        "output": str(args.output),
        "bytes": len(document),
        "module_id": module_id,
        "timestamp": timestamp_ms(moment),
        "debug_mode": args.debug_mode,
        "root_sha256": ca.root_sha256,
    }
    print(json.dumps(summary, indent=2))
    return 0
