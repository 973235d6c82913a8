"""CLI: ``nitro-emu ca init | show | export-root``, the test CA (docs/ca.md).

The CA lives in ``$NITRO_EMU_HOME/ca``. Its chain is named after the emulated parent
instance (the same id run-enclave uses, so PCR4 and the instance certificate agree).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys

from emulator.enclave.resources import open_home_ca
from emulator.settings import get_settings


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``ca init``, ``ca show`` and ``ca export-root`` to the top-level parser."""
    parser = subparsers.add_parser(
        "ca",
        help="the test CA that signs attestation documents",
        description=(
            "Manage the test CA: a root marked TEST and an AWS-shaped chain (regional, zonal, "
            "instance) under $NITRO_EMU_HOME/ca. Verifiers must pin this root (or its SHA-256 "
            "fingerprint) to accept the emulator's documents."
        ),
    )
    commands = parser.add_subparsers(dest="ca_command", metavar="COMMAND")
    commands.required = True

    init = commands.add_parser(
        "init",
        help="create the test CA, or load it and re-issue expired intermediates",
        description="Create the test CA if there is none; otherwise load it, re-issuing "
        "intermediate certificates that expired. Prints what it did.",
    )
    init.set_defaults(handler=_init)

    show = commands.add_parser(
        "show",
        help="print the chain as JSON",
        description="Print the current chain (root first) as JSON: subject, issuer, serial, "
        "SHA-256 fingerprint and validity (ISO 8601, UTC) of each certificate.",
    )
    show.set_defaults(handler=_show)

    export = commands.add_parser(
        "export-root",
        help="write the root certificate to stdout (PEM, or DER with --der)",
        description="Write the test root certificate to stdout, PEM by default. Creates the "
        "CA first if there is none.",
    )
    export.add_argument("--der", action="store_true", help="write raw DER bytes instead of PEM")
    export.set_defaults(handler=_export_root)


def _init(args: argparse.Namespace) -> int:
    ca = open_home_ca(get_settings())
    if ca.created:
        print(f"Created a test CA in {ca.directory}")
    else:
        print(f"Loaded the test CA in {ca.directory}")
    if ca.renewed:
        print(f"Re-issued expired intermediate certificates: {', '.join(ca.renewed)}")
    root = ca.root_certificate
    print(f"Root: {root.subject.rfc4514_string()}")
    print(f"Root SHA-256 fingerprint: {ca.root_sha256}")
    print(f"Root valid until: {root.not_valid_after_utc.isoformat()}")
    print(f"Parent instance: {ca.instance_id} ({ca.region})")
    return 0


def _show(args: argparse.Namespace) -> int:
    from cryptography.hazmat.primitives.serialization import Encoding

    ca = open_home_ca(get_settings(), create=False)
    chain = []
    for level, cert in ca.certificates():
        chain.append(
            {
                "level": level,
                "subject": cert.subject.rfc4514_string(),
                "issuer": cert.issuer.rfc4514_string(),
                "serial": format(cert.serial_number, "x"),
                "sha256_fingerprint": hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest(),
                "not_before": cert.not_valid_before_utc.isoformat(),
                "not_after": cert.not_valid_after_utc.isoformat(),
            }
        )
    report = {
        "directory": str(ca.directory),
        "region": ca.region,
        "instance_id": ca.instance_id,
        "renewed": list(ca.renewed),
        "certificates": chain,
    }
    print(json.dumps(report, indent=2))
    return 0


def _export_root(args: argparse.Namespace) -> int:
    ca = open_home_ca(get_settings())
    if ca.created:
        print(f"nitro-emu: created a new test CA in {ca.directory}", file=sys.stderr)
    data = ca.root_der if args.der else ca.root_pem
    sys.stdout.flush()
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()
    return 0
