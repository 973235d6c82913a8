"""CLI: ``nitro-emu base-image``, the local Debian base image for registry-less machines."""

from __future__ import annotations

import argparse

from emulator.engine.base_image import BASE_IMAGE_TAG, BASE_PACKAGES


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``base-image`` to the top-level parser."""
    parser = subparsers.add_parser(
        "base-image",
        help="build (once, cached by tag) a local Debian image with Python for enclaves",
        description=(
            "Build a Debian bookworm image with Python 3 and cbor2: with debootstrap from "
            "Debian's packages when run as root (no container registry needed), otherwise "
            "FROM debian:bookworm-slim through a registry. Prints the tag."
        ),
    )
    parser.add_argument("--tag", default=BASE_IMAGE_TAG, help=f"image tag (default {BASE_IMAGE_TAG})")
    parser.add_argument(
        "--package",
        action="append",
        default=[],
        metavar="NAME",
        help="an extra Debian package to include (repeatable)",
    )
    parser.set_defaults(handler=_base_image)


def _base_image(args: argparse.Namespace) -> int:
    from emulator.engine.base_image import ensure_base_image
    from emulator.engine.client import docker_client

    packages = (*BASE_PACKAGES, *args.package)
    print(ensure_base_image(docker_client(), tag=args.tag, packages=packages))
    return 0
