"""The Docker engine: one client for every room, and the local base image.

| module | holds |
|---|---|
| ``client`` | the Docker SDK client, engine errors, image checks |
| ``base_image`` | the Debian base image (debootstrap where no registry answers) |
| ``image_load`` | a one-layer image given to ``docker load``, its layer streamed |
| ``tar_stream`` | tar headers packed without tarfile, and a tar streamed from file ranges |
"""

from __future__ import annotations

from emulator.engine.base_image import ensure_base_image
from emulator.engine.client import EngineUnavailableError, docker_client, image_exists

__all__ = ["EngineUnavailableError", "docker_client", "ensure_base_image", "image_exists"]
