"""CLI: ``nitro-emu verify FILE``, check an attestation document (docs/verifier.md).

Exit status: 0 and the document as JSON on stdout when every check passes; 1 and one line
``verification failed: <CheckError>: <why>`` on stderr when a check fails; 2 and one line
when the input itself is unusable (missing file, bad base64, a --root that is not a
certificate, no root at all).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import os
import re
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

EXIT_VERIFICATION_FAILED = 1
EXIT_BAD_INPUT = 2

_BASE64_TEXT = re.compile(rb"[A-Za-z0-9+/=_\-\s]+")
_FINGERPRINT = re.compile(r"(?:[0-9A-Fa-f]{2}:?){31}[0-9A-Fa-f]{2}")


class _BadInput(Exception):
    """The command's own input is unusable (printed as one line, exit 2)."""


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``verify`` to the top-level parser."""
    parser = subparsers.add_parser(
        "verify",
        help="verify an attestation document against a pinned root",
        description=(
            "Verify a Nitro attestation document (COSE_Sign1, raw CBOR or base64): syntax, "
            "certificate chain anchored at a root you name, validity at --at, the ES384 "
            "signature, then your PCR / nonce / freshness policy. Prints the document as "
            "JSON. Trusts no root unless given one."
        ),
    )
    parser.add_argument("file", metavar="FILE", help="the document: raw CBOR or base64 text ('-' = stdin)")
    parser.add_argument(
        "--root",
        action="append",
        default=[],
        metavar="PEM",
        help="a trusted root: a PEM/DER certificate file, or its SHA-256 fingerprint (repeatable)",
    )
    parser.add_argument(
        "--aws-root",
        action="store_true",
        help="trust the AWS Nitro Enclaves Root G1 (for documents from real Nitro)",
    )
    parser.add_argument("--at", metavar="ISO8601", help="verification time (default: now; no zone = UTC)")
    parser.add_argument(
        "--pcr",
        action="append",
        default=[],
        metavar="N=HEX",
        help="expected PCR value (repeatable)",
    )
    parser.add_argument("--nonce", metavar="HEX", help="the nonce the document must carry")
    parser.add_argument(
        "--max-age", type=float, metavar="SECONDS", help="refuse documents older than this"
    )
    parser.add_argument(
        "--allow-debug",
        action="store_true",
        help="accept debug-mode documents (PCR0/1/2 all zero): tests only",
    )
    parser.add_argument(
        "--strict", action="store_true", help="cap user_data and nonce at 512 bytes (AWS's prose)"
    )
    parser.set_defaults(handler=_verify)


def _verify(args: argparse.Namespace) -> int:
    from fake_nsm.errors import VerificationError
    from fake_nsm.verifier import verify_attestation_document

    try:
        roots = _trusted_roots(args.root, args.aws_root)
        data = _read_document(args.file)
        options = {
            "at": _parse_time(args.at),
            "expected_pcrs": _parse_pcrs(args.pcr),
            "nonce": _parse_hex("--nonce", args.nonce) if args.nonce is not None else None,
            "max_age": _parse_max_age(args.max_age),
        }
    except _BadInput as error:
        print(f"nitro-emu verify: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        document = verify_attestation_document(
            data,
            trusted_roots=roots,
            allow_debug=args.allow_debug,
            strict=args.strict,
            **options,  # type: ignore[arg-type]
        )
    except VerificationError as error:
        print(f"verification failed: {type(error).__name__}: {error}", file=sys.stderr)
        return EXIT_VERIFICATION_FAILED
    try:
        sys.stdout.write(json.dumps(document.to_json(), indent=2) + "\n")
        sys.stdout.flush()
    except BrokenPipeError:  # e.g. `| head`: the reader left; the verdict stands
        # Point stdout at /dev/null so the interpreter's final flush does not complain.
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):  # stdout without a file descriptor (captured)
            pass
        finally:
            os.close(devnull)
    return 0


def _trusted_roots(paths: list[str], aws_root: bool) -> list[bytes | str]:
    from fake_nsm.errors import VerificationInputError
    from fake_nsm.trusted_roots import resolve_trusted_roots

    roots: list[bytes | str] = []
    for spec in paths:
        path = Path(spec)
        if not path.exists() and _FINGERPRINT.fullmatch(spec):
            roots.append(spec)
            continue
        root = _read_file(spec, "--root")
        try:
            resolve_trusted_roots([root])
        except VerificationInputError as error:
            raise _BadInput(f"--root {spec}: not a PEM or DER certificate") from error
        roots.append(root)
    if aws_root:
        from fake_nsm.aws_root import AWS_NITRO_ROOT_G1_PEM

        roots.append(AWS_NITRO_ROOT_G1_PEM)
    if not roots:
        raise _BadInput(
            "no trusted root: pass --root PEM (e.g. the test CA root from "
            "'nitro-emu ca export-root') or --aws-root for documents from real Nitro; "
            "nothing is trusted by default"
        )
    return roots


def _read_file(spec: str, what: str) -> bytes:
    try:
        if spec == "-":
            return sys.stdin.buffer.read()
        return Path(spec).read_bytes()
    except OSError as error:
        raise _BadInput(f"{what} {spec}: cannot read: {error.strerror or error}") from error


def _read_document(spec: str) -> bytes:
    """The document's bytes: raw CBOR as is, base64 text (standard or URL-safe) decoded."""
    raw = _read_file(spec, "FILE")
    if not raw.strip():
        raise _BadInput(f"FILE {spec}: empty")
    # A COSE_Sign1 starts with 0x84 or 0xd2, never with base64's alphabet.
    if not _BASE64_TEXT.fullmatch(raw):
        return raw
    text = b"".join(raw.split()).rstrip(b"=")
    text += b"=" * (-len(text) % 4)
    try:
        if b"-" in text or b"_" in text:
            return base64.urlsafe_b64decode(text)
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as error:
        raise _BadInput(f"FILE {spec}: neither CBOR nor valid base64 ({error})") from error


def _parse_time(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError as error:
        raise _BadInput(f"--at {text!r}: not an ISO 8601 time (e.g. 2024-01-31T12:00:00Z)") from error
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _parse_pcrs(specs: list[str]) -> dict[int, bytes] | None:
    if not specs:
        return None
    expected: dict[int, bytes] = {}
    for spec in specs:
        index, sep, value = spec.partition("=")
        if not sep or not index.strip().isdecimal() or not 0 <= int(index) < 32:
            raise _BadInput(f"--pcr {spec!r}: expected N=HEX with N in 0..31")
        expected[int(index)] = _parse_hex(f"--pcr {index}", value)
    return expected


def _parse_hex(what: str, text: str) -> bytes:
    try:
        return bytes.fromhex(text.strip().removeprefix("0x"))
    except ValueError as error:
        raise _BadInput(f"{what}: {text!r} is not hex") from error


def _parse_max_age(seconds: float | None) -> timedelta | None:
    if seconds is None:
        return None
    if not seconds >= 0 or seconds == float("inf"):
        raise _BadInput(f"--max-age {seconds}: must be a non-negative number of seconds")
    return timedelta(seconds=seconds)
