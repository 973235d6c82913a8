"""EIFs for tests, built once and cached by content (used by ``emulator.testing.handles``).

Two caches, both keyed by content so that a changed input always rebuilds:

- a Dockerfile directory is built into the local image ``nitro-emu-test/<digest>:latest``,
  where the digest covers every file's path, mode and bytes plus the build arguments; an
  existing tag is reused without a build;
- an image becomes ``<cache_dir>/<image id>.eif``; an existing file is reused (its
  measurements read back from it). Parallel workers (pytest-xdist) take a per-key file lock,
  so one builds while the others wait, and the file appears atomically (rename).

Built test images carry the label ``org.nitro-emu.test-image=1`` so they can be listed and
removed (``docker image ls -f label=org.nitro-emu.test-image``).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emulator.errors import EmulatorError
from emulator.eif.measurements import Measurements

TEST_IMAGE_REPOSITORY = "nitro-emu-test"
TEST_IMAGE_LABEL = "org.nitro-emu.test-image"
_SKIPPED_DIRS = {"__pycache__", ".git", ".pytest_cache"}
BUILD_LOG_LINES = 20


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/nitro-emu/eif`` (``~/.cache/nitro-emu/eif``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "nitro-emu" / "eif"


@dataclass(frozen=True)
class BuiltEnclave:
    """An EIF ready to run.

    Attributes:
        image: the Docker image it was built from (tag or id).
        image_id: that image's id (``sha256:...``), the cache key.
        eif_path: the cached EIF.
        measurements: its PCRs.
    """

    image: str
    image_id: str
    eif_path: Path
    measurements: Measurements


def directory_digest(directory: Path, build_args: Mapping[str, str] | None = None) -> str:
    """SHA-256 over a build context: relative paths, modes, contents, and build arguments."""
    digest = hashlib.sha256()
    for root, dirs, files in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if d not in _SKIPPED_DIRS)
        for name in sorted(files):
            path = Path(root) / name
            info = path.lstat()
            relative = path.relative_to(directory).as_posix()
            digest.update(f"{relative}\0{stat.S_IMODE(info.st_mode):o}\0".encode())
            if stat.S_ISLNK(info.st_mode):
                digest.update(os.readlink(path).encode())
            elif stat.S_ISREG(info.st_mode):
                digest.update(hashlib.sha256(path.read_bytes()).digest())
    for key, value in sorted((build_args or {}).items()):
        digest.update(f"ARG\0{key}\0{value}\0".encode())
    return digest.hexdigest()


def _build_log_tail(log: Any) -> str:
    lines: list[str] = []
    for entry in log or ():
        if isinstance(entry, dict):
            text = entry.get("stream") or entry.get("error") or ""
            lines.extend(line for line in str(text).splitlines() if line.strip())
    return "\n".join(lines[-BUILD_LOG_LINES:])


class EnclaveBuilder:
    """Turns images and Dockerfile directories into cached EIFs.

    Args:
        docker: a callable returning the Docker SDK client (opened lazily).
        cache_dir: where EIFs are kept (default :func:`default_cache_dir`).
    """

    def __init__(self, docker: Callable[[], Any], *, cache_dir: Path | None = None) -> None:
        self._docker = docker
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self._built: dict[str, BuiltEnclave] = {}

    def from_dockerfile(self, directory: Path, *, build_args: Mapping[str, str] | None = None) -> BuiltEnclave:
        """Build ``directory``'s Dockerfile (unless this content was built before), then its EIF."""
        return self.from_image(self.build_image(directory, build_args=build_args))

    def build_image(self, directory: Path, *, build_args: Mapping[str, str] | None = None) -> str:
        """The tag of the image built from ``directory`` (built now if this content is new)."""
        import docker.errors

        from emulator.engine.client import image_exists
        from emulator.testing.spec import EnclaveBuildError

        client = self._docker()
        tag = f"{TEST_IMAGE_REPOSITORY}/{directory_digest(directory, build_args)[:24]}:latest"
        if image_exists(client, tag):
            return tag
        try:
            client.images.build(
                path=str(directory),
                tag=tag,
                buildargs=dict(build_args or {}),
                labels={TEST_IMAGE_LABEL: "1"},
                rm=True,
                forcerm=True,
                pull=False,
            )
        except docker.errors.BuildError as error:
            raise EnclaveBuildError(
                f"the Dockerfile in {directory} failed to build: {error.msg}\n"
                f"last lines of the build:\n{_build_log_tail(error.build_log)}"
            ) from error
        except (docker.errors.APIError, TypeError) as error:
            raise EnclaveBuildError(f"the Dockerfile in {directory} could not be built: {error}") from error
        return tag

    def from_image(self, image: str) -> BuiltEnclave:
        """The EIF of a local image (built into the cache unless its id was built before)."""
        from emulator.eif.build import build_eif
        from emulator.eif.file import read_eif
        from emulator.testing.spec import EnclaveBuildError

        import docker.errors

        client = self._docker()
        try:
            image_id = client.images.get(image).id
        except docker.errors.ImageNotFound as error:
            raise EnclaveBuildError(
                f"image {image!r} is not in the local Docker engine; build or pull it first, "
                "or use dockerfile_dir=..."
            ) from error
        except docker.errors.APIError as error:
            raise EnclaveBuildError(f"cannot inspect image {image!r}: {error}") from error
        if image_id in self._built:
            return self._built[image_id]
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        key = image_id.split(":")[-1][:32]
        eif_path = self.cache_dir / f"{key}.eif"
        with open(self.cache_dir / f"{key}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one xdist worker builds, the others wait
            measurements: Measurements | None = None
            if eif_path.is_file():
                try:
                    measurements = read_eif(eif_path).measurements
                except EmulatorError:
                    eif_path.unlink()  # a damaged cache entry: build it again
            if measurements is None:
                partial = eif_path.with_name(f".{key}.{os.getpid()}.partial")
                try:
                    measurements = build_eif(client, image_id, partial)
                    os.replace(partial, eif_path)
                except EmulatorError as error:
                    raise EnclaveBuildError(f"building the EIF of {image!r} failed: {error}") from error
                finally:
                    partial.unlink(missing_ok=True)
        built = BuiltEnclave(image=image, image_id=image_id, eif_path=eif_path, measurements=measurements)
        self._built[image_id] = built
        return built
