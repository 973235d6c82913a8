"""Docker fixtures other integration tests reuse: enclave app images, EIFs, running enclaves.

- ``build_app_image(files, cmd=..., include_fake_nsm=True)``: an image ``FROM`` the local
  base image with ``files`` ({path in image: text or bytes}) and, by default, the project's
  ``fake_nsm`` package on ``PYTHONPATH`` (so enclave code can ``import fake_nsm.client``).
  Cached by content hash (tag ``nitro-emu-test/app:<hash>``).
- ``build_app_eif(image, directory)``: ``emulator.eif.file.build_eif`` -> (path, Measurements).
- ``run_test_enclave(eif, memory_mib=..., ...)``: a context manager that runs an enclave
  in the current ``NITRO_EMU_HOME`` and always terminates it.
- ``probe_eif``: a session EIF whose app prints one JSON line of facts (``FACTS {...}``)
  then waits (see ``PROBE_APP``); ``minimum_memory(eif)``: nitro-cli's 4x-EIF minimum.
- an autouse leak check for ``docker`` tests that use ``nitro_home``: afterwards no
  container labelled with that home, no live supervisor, no runtime or state dir remains
  (whatever remains is removed, then the test fails).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import signal
import tarfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from tests.integration.runtime_helpers import PROBE_APP, minimum_memory, wait_for_output  # noqa: F401 - re-exported

ROOT = Path(__file__).resolve().parents[2]
APP_REPOSITORY = "nitro-emu-test/app"

def _image_context(files: Mapping[str, str | bytes], cmd: list[str], include_fake_nsm: bool, base: str) -> bytes:
    """A tar build context: Dockerfile, the files, and optionally fake_nsm/."""
    lines = [f"FROM {base}"]
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:

        def add(name: str, data: bytes, mode: int = 0o644) -> None:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), mode, 0
            archive.addfile(info, io.BytesIO(data))

        if include_fake_nsm:
            for source in sorted((ROOT / "fake_nsm").glob("*.py")):
                add(f"fake_nsm/{source.name}", source.read_bytes())
            lines += ["COPY fake_nsm /opt/nitro-emu/fake_nsm", "ENV PYTHONPATH=/opt/nitro-emu"]
        for index, (path, content) in enumerate(sorted(files.items())):
            data = content.encode() if isinstance(content, str) else content
            add(f"files/{index}", data)
            lines.append(f"COPY files/{index} {path}")
        lines.append(f"CMD {__import__('json').dumps(cmd)}")
        add("Dockerfile", ("\n".join(lines) + "\n").encode())
    return buffer.getvalue()


@pytest.fixture(scope="session")
def build_app_image(docker_client, base_image) -> Callable[..., str]:  # type: ignore[no-untyped-def]
    """Factory: build (or reuse) an enclave app image; returns its tag."""

    def build(
        files: Mapping[str, str | bytes],
        *,
        cmd: list[str] | None = None,
        include_fake_nsm: bool = True,
    ) -> str:
        command = cmd or ["python3", "-u", sorted(files)[0]]
        context = _image_context(files, command, include_fake_nsm, base_image)
        tag = f"{APP_REPOSITORY}:{hashlib.sha256(context).hexdigest()[:24]}"
        with contextlib.suppress(Exception):
            docker_client.images.get(tag)
            return tag
        docker_client.images.build(fileobj=io.BytesIO(context), custom_context=True, tag=tag, rm=True, forcerm=True)
        return tag

    return build


@pytest.fixture(scope="session")
def build_app_eif(docker_client) -> Callable[..., tuple[Path, Any]]:  # type: ignore[no-untyped-def]
    """Factory: build an EIF of a local image into a directory; returns (path, Measurements)."""
    from emulator.eif import build_eif

    def build(image: str, directory: Path, name: str = "app", **options: Any) -> tuple[Path, Any]:
        output = Path(directory) / f"{name}.eif"
        measurements = build_eif(docker_client, image, output, **options)
        return output, measurements

    return build


@pytest.fixture(scope="session")
def probe_image(build_app_image) -> str:  # type: ignore[no-untyped-def]
    return build_app_image({"/app/probe.py": PROBE_APP})


@pytest.fixture(scope="session")
def probe_eif(build_app_eif, probe_image, tmp_path_factory) -> tuple[Path, Any]:  # type: ignore[no-untyped-def]
    """(path, Measurements) of the probe app's EIF, built once per session."""
    return build_app_eif(probe_image, tmp_path_factory.mktemp("eif"), name="probe")


@pytest.fixture
def run_test_enclave() -> Callable[..., contextlib.AbstractContextManager[Any]]:
    """Context manager factory: run an enclave (current home) and always terminate it."""
    from emulator.enclave.runtime import running_enclave

    return running_enclave


def _leftovers(home: Path) -> list[str]:
    import docker

    from emulator.enclave.container import LABEL_HOME
    from emulator.enclave.state import list_records, supervisor_alive
    from emulator.settings import Settings

    settings = Settings(home=home)
    found: list[str] = []
    client = docker.from_env()
    try:
        for container in client.api.containers(all=True, filters={"label": f"{LABEL_HOME}={home}"}):
            found.append(f"container {container['Names']}")
            with contextlib.suppress(Exception):
                client.api.remove_container(container["Id"], force=True)
        for volume in (client.api.volumes(filters={"label": f"{LABEL_HOME}={home}"}) or {}).get("Volumes") or []:
            found.append(f"volume {volume['Name']}")
            with contextlib.suppress(Exception):
                client.api.remove_volume(volume["Name"], force=True)
    finally:
        client.close()
    for record in list_records(settings):
        if supervisor_alive(record):
            found.append(f"supervisor pid {record.process_id} of {record.enclave_id}")
            with contextlib.suppress(ProcessLookupError):
                os.kill(record.process_id, signal.SIGKILL)
        found.append(f"state dir of {record.enclave_id}")
        shutil.rmtree(settings.enclave_dir(record.enclave_id), ignore_errors=True)
    if settings.run_root.is_dir():
        for entry in settings.run_root.iterdir():
            if entry.name != "parent":
                found.append(f"runtime dir {entry}")
                shutil.rmtree(entry, ignore_errors=True)
    return found


@pytest.fixture(autouse=True)
def _enclave_leak_check(request: pytest.FixtureRequest) -> Iterator[None]:
    """After a docker test with a private home: nothing of its enclaves may remain."""
    if request.node.get_closest_marker("docker") is None or "nitro_home" not in request.fixturenames:
        yield
        return
    home: Path = request.getfixturevalue("nitro_home")
    yield
    deadline = time.monotonic() + 10.0
    leftovers = _leftovers_quiet(home)
    while leftovers and time.monotonic() < deadline:
        time.sleep(0.2)  # an enclave that is just ending gets a moment to clean up
        leftovers = _leftovers_quiet(home)
    found = _leftovers(home)
    if found:
        pytest.fail(f"enclave resources leaked from {request.node.name}: {found}")


def _leftovers_quiet(home: Path) -> bool:
    """True while anything of the home's enclaves exists (no cleanup)."""
    import docker

    from emulator.enclave.container import LABEL_HOME
    from emulator.enclave.state import list_records
    from emulator.settings import Settings

    settings = Settings(home=home)
    client = docker.from_env()
    try:
        if client.api.containers(all=True, filters={"label": f"{LABEL_HOME}={home}"}):
            return True
        if (client.api.volumes(filters={"label": f"{LABEL_HOME}={home}"}) or {}).get("Volumes"):
            return True
    finally:
        client.close()
    if list_records(settings):
        return True
    return settings.run_root.is_dir() and any(e.name != "parent" for e in settings.run_root.iterdir())
