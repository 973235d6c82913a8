"""CLI commands: build-enclave, describe-eif, sign-eif, pcr, prune-images (see emulator.cli.app; nitro-facts §3.5).

Human messages go to stderr, JSON to stdout, formatted like ``serde_json::to_string_pretty``
(2-space indent). Failures raise :class:`~emulator.errors.NitroCliError` subclasses, which the
dispatcher prints as ``[ Exx ] ...`` and turns into the exit status.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from emulator.eif.signing import certificate_info, pem_to_der
from emulator.errors import EmulatorError
from emulator.eif.measurements import pcr_of, pcr_of_stream
from emulator.nitro_cli_errors import nitro_cli_error


def print_json(value: Any) -> None:
    """Print like ``serde_json::to_string_pretty`` (UTF-8, 2-space indent)."""
    print(json.dumps(value, indent=2, ensure_ascii=False))


def _sorted_json(value: Any) -> Any:
    # serde_json::Value objects are BTreeMaps (no preserve_order): keys come out sorted.
    if isinstance(value, dict):
        return {key: _sorted_json(value[key]) for key in sorted(value)}
    if isinstance(value, list):
        return [_sorted_json(item) for item in value]
    return value


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _build_enclave(args: argparse.Namespace) -> int:
    from emulator.engine.client import docker_client
    from emulator.eif.build import build_docker_image, build_eif, load_custom_metadata

    from emulator.engine.client import EngineUnavailableError

    custom = load_custom_metadata(args.metadata) if args.metadata else None
    try:
        client = docker_client()
    except EngineUnavailableError as error:
        # nitro-cli fails at its image pull/inspect step: E50
        raise nitro_cli_error("DockerImagePullError", detail=str(error)) from error
    try:
        if args.docker_dir:
            build_docker_image(client, Path(args.docker_dir), args.docker_uri)
        _progress("Start building the Enclave Image...")
        measurements = build_eif(
            client,
            args.docker_uri,
            Path(args.output_file),
            signing_certificate=Path(args.signing_certificate) if args.signing_certificate else None,
            private_key=Path(args.private_key) if args.private_key else None,
            name=args.name,
            version=args.version,
            metadata=custom,
            ramdisk_format=args.format,
            notify=_progress,
        )
    finally:
        client.close()
    _progress("Enclave Image successfully created.")
    print_json({"Measurements": measurements.to_nitro_cli_json()})
    return 0


def describe_eif_json(eif: Any) -> dict[str, Any]:
    """describe-eif's ``EifDescribeInfo`` in nitro-cli's field order (nitro-facts §3.5)."""
    described: dict[str, Any] = {
        "EifVersion": eif.version,
        "Measurements": eif.measurements.to_nitro_cli_json(),
        "IsSigned": eif.is_signed,
    }
    if eif.signature is not None:
        described["SigningCertificate"] = certificate_info(eif.signature.certificate)
    described["CheckCRC"] = eif.crc_ok
    if eif.signature_ok is not None:
        described["SignatureCheck"] = eif.signature_ok
    identity = eif.metadata
    if isinstance(identity, dict):
        build = identity.get("BuildMetadata") or {}
        described["ImageName"] = identity.get("ImageName")
        described["ImageVersion"] = identity.get("ImageVersion")
        metadata = {
            "BuildTime": build.get("BuildTime"),
            "BuildTool": build.get("BuildTool"),
            "BuildToolVersion": build.get("BuildToolVersion"),
            "OperatingSystem": build.get("OperatingSystem"),
            "KernelVersion": build.get("KernelVersion"),
            "DockerInfo": _sorted_json(identity.get("DockerInfo")),
        }
        custom = identity.get("CustomMetadata")
        if isinstance(custom, dict):  # #[serde(flatten)]: the user's keys, sorted
            metadata.update(_sorted_json(custom))
        elif custom is not None:
            metadata["CustomMetadata"] = custom
        described["Metadata"] = metadata
    return described


def _describe_eif(args: argparse.Namespace) -> int:
    from emulator.eif.file import read_eif

    print_json(describe_eif_json(read_eif(Path(args.eif_path))))
    return 0


def _sign_eif(args: argparse.Namespace) -> int:
    """nitro-cli 1.4's ``sign-eif`` (``src/lib.rs`` ``sign_eif``): sign the EIF in place.

    nitro-cli reports every failure of this command, a bad EIF included, as E60; its
    clap definition makes each of ``--signing-certificate`` and ``--private-key`` require the
    other, and without both there is no signer (E60 "Failed to create EifSigner").
    """
    from emulator.eif.file import sign_eif_file
    from emulator.eif.signing import EifSigner
    from emulator.errors import NitroCliError

    if not args.eif_path:
        raise nitro_cli_error("MissingArgument", "eif-path")
    if bool(args.signing_certificate) != bool(args.private_key):  # clap: each `requires` the other
        missing = "private-key" if args.signing_certificate else "signing-certificate"
        raise nitro_cli_error("MissingArgument", missing)
    if not args.signing_certificate:
        raise nitro_cli_error(
            "EIFSigningError",
            detail="Failed to create EifSigner: pass both --signing-certificate and --private-key.",
        )
    try:
        signer = EifSigner.from_files(Path(args.signing_certificate), Path(args.private_key))
        measurements = sign_eif_file(Path(args.eif_path), signer)
    except NitroCliError as error:
        raise nitro_cli_error("EIFSigningError", detail=f"Failed to sign image: {error.message}") from error
    _progress("Enclave Image successfully signed.")
    print_json({"Measurements": measurements.to_nitro_cli_json()})
    return 0


def _read_chunks(path: Path) -> Any:
    with open(path, "rb") as stream:
        while block := stream.read(1 << 20):
            yield block


def _pcr(args: argparse.Namespace) -> int:
    if args.input and args.signing_certificate:
        raise nitro_cli_error("ConflictingArgument", "input", "signing-certificate")
    if not args.input and not args.signing_certificate:
        raise nitro_cli_error("MissingArgument", "input")
    path = Path(args.input or args.signing_certificate)
    try:
        if args.input:
            print_json({"PCR": pcr_of_stream(_read_chunks(path)).hex()})
            return 0
        der = pem_to_der(path.read_bytes())
    except OSError as error:
        raise nitro_cli_error(
            "FileOperationFailure", str(path), "Open", detail=f"({error.strerror}); check the path."
        ) from error
    except ValueError as error:
        raise nitro_cli_error(
            "FileOperationFailure",
            str(path),
            "Parse",
            detail="The file is not a PEM X.509 certificate; pass the signing certificate.",
        ) from error
    print_json({"PCR8": pcr_of(der).hex()})
    return 0


class ImagePruneError(EmulatorError):
    """The engine refused to list the cached enclave images or their containers."""


def prune_enclave_images(client: Any, dry_run: bool = False) -> dict[str, list[str]]:
    """Remove the cached ``nitro-emu/enclave:*`` images that no container uses.

    An image used by any container (running or stopped: the engine refuses to delete those
    anyway) is kept. Only the ``nitro-emu/enclave:`` tags are removed, so an image the user
    also tagged otherwise survives under its other names. Returns the sorted tags
    ``{"Removed": [...], "Kept": [...]}``; with ``dry_run`` nothing is removed and
    ``Removed`` lists what would be.

    Raises:
        ImagePruneError: the engine could not list images or containers.
    """
    import docker.errors

    from emulator.eif.ramdisk import ENCLAVE_REPOSITORY

    prefix = f"{ENCLAVE_REPOSITORY}:"
    try:
        images = client.images.list(name=ENCLAVE_REPOSITORY)
        containers = client.containers.list(all=True, sparse=True)
    except docker.errors.APIError as error:
        raise ImagePruneError(
            f"listing {ENCLAVE_REPOSITORY} images or the containers failed "
            f"({error.explanation or error}); check that the Docker engine is healthy"
        ) from error
    # sparse listings carry the image id as ImageID (full inspections as Image)
    used = {c.attrs.get("ImageID") or c.attrs.get("Image") for c in containers}
    removed: list[str] = []
    kept: list[str] = []
    for image in images:
        tags = sorted(tag for tag in image.tags if tag.startswith(prefix))
        if image.id in used:
            kept.extend(tags)
            continue
        for tag in tags:
            if dry_run:
                removed.append(tag)
                continue
            try:
                client.images.remove(tag)
            except docker.errors.ImageNotFound:
                removed.append(tag)  # gone already (a concurrent prune): the goal holds
            except docker.errors.APIError:
                kept.append(tag)  # e.g. a container started on it meanwhile (409 conflict)
            else:
                removed.append(tag)
    return {"Removed": sorted(removed), "Kept": sorted(kept)}


def _prune_images(args: argparse.Namespace) -> int:
    from emulator.engine.client import docker_client

    client = docker_client()
    try:
        result = prune_enclave_images(client, dry_run=args.dry_run)
    finally:
        client.close()
    print_json(result)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add build-enclave, describe-eif, sign-eif, pcr and prune-images to the top-level parser."""
    build = subparsers.add_parser(
        "build-enclave", help="build an enclave image file (EIF) from a Docker image"
    )
    build.add_argument("--docker-uri", required=True, help="the Docker image to build from")
    build.add_argument("--docker-dir", help="build the image from this Dockerfile directory first")
    build.add_argument("--output-file", required=True, help="the EIF to write")
    build.add_argument("--signing-certificate", help="PEM certificate to sign the EIF with")
    build.add_argument("--private-key", help="PEM ECDSA private key of the certificate")
    build.add_argument("--name", help="the image name stored in the EIF metadata")
    build.add_argument("--version", help="the image version stored in the EIF metadata")
    build.add_argument("--metadata", help="a JSON file stored as the EIF's custom metadata")
    build.add_argument(
        "--format", choices=("nitro-emu", "nitro-cli"), default="nitro-emu",
        help="application ramdisk: nitro-emu's reproducible archive (default) or nitro-cli's cpio layout",
    )
    build.set_defaults(handler=_build_enclave)

    describe = subparsers.add_parser("describe-eif", help="describe an enclave image file")
    describe.add_argument("--eif-path", required=True, help="the EIF to describe")
    describe.set_defaults(handler=_describe_eif)

    sign = subparsers.add_parser("sign-eif", help="sign an existing EIF in place (adds PCR8)")
    sign.add_argument("--eif-path", help="the EIF to sign; an existing signature is replaced")
    sign.add_argument("--signing-certificate", help="PEM X.509 certificate of the signing key")
    sign.add_argument("--private-key", help="PEM ECDSA private key of the certificate")
    sign.set_defaults(handler=_sign_eif)

    pcr = subparsers.add_parser(
        "pcr", help="compute the PCR of a file, or PCR8 of a signing certificate"
    )
    pcr.add_argument("--input", help="the file to measure")
    pcr.add_argument("--signing-certificate", help="the PEM certificate whose PCR8 to compute")
    pcr.set_defaults(handler=_pcr)

    prune = subparsers.add_parser(
        "prune-images",
        help="remove the cached enclave images (nitro-emu/enclave:*) that no container uses",
    )
    prune.add_argument(
        "--all-unused", action="store_true", default=True,
        help="remove every cached enclave image no container uses (the default)",
    )
    prune.add_argument("--dry-run", action="store_true", help="list what would be removed; remove nothing")
    prune.set_defaults(handler=_prune_images)
