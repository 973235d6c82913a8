"""build-enclave against the real engine: reproducible PCRs, describe-eif, loading the image back."""

from __future__ import annotations

import contextlib
import functools
import io
import json
import tarfile
import uuid
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import docker
import docker.errors
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from emulator.eif.boot_blobs import boot_blobs
from emulator.cli.app import main
from emulator.eif import EifImage, build_eif, read_eif
from emulator.eif.ramdisk import DockerImagePullError, enclave_image_tag, load_enclave_image

# Each Dockerfile instruction is a container commit with the classic builder (seconds each on
# fuse-overlayfs), so the Dockerfile stays short and the three builds happen once per module.
pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(400)]

DOCKERFILE = """\
FROM {base}
COPY app.py /app/app.py
WORKDIR /app/data
ENV GREETING="hello world" MODE=enclave
USER 1000:1000
ENTRYPOINT ["python3"]
CMD ["/app/app.py"]
"""
APP = b"print('hello from the enclave')\n"
# (mtime, size) of a module's source vs what its timestamp pyc records (PEP 552 header)
PYC_CHECK = """
import importlib.util, json, email, os, struct
rows = []
for module in (json, email):
    header = open(importlib.util.cache_from_source(module.__file__), "rb").read(16)
    stat = os.stat(module.__file__)
    rows.append((module.__name__, [int(stat.st_mtime), stat.st_size], list(struct.unpack("<8xII", header))))
print(json.dumps(rows))
"""


@dataclass(frozen=True)
class Built:
    tag: str
    eif: Path
    stdout: str = ""
    stderr: str = ""

    @functools.cached_property
    def image(self) -> EifImage:
        """The EIF, read once (reading 170 MB is not free on a busy machine)."""
        return read_eif(self.eif)


def _signing_files(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "nitro-emu test signer")])
    now = datetime.now(timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(1).not_valid_before(now).not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA384())
    )
    (directory / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "key.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                          serialization.NoEncryption())
    )
    return directory / "cert.pem", directory / "key.pem"


@pytest.fixture(scope="module")
def builds(docker_client, base_image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Built]]:  # type: ignore[no-untyped-def]
    """Three images and their EIFs: A twice (no cache), B with one app byte changed."""
    work = tmp_path_factory.mktemp("build")
    suffix = uuid.uuid4().hex[:10]
    tags = {name: f"nitro-emu-test/eif-{name}:{suffix}" for name in ("a1", "a2", "b")}
    context_a, context_b = work / "ctx-a", work / "ctx-b"
    for context, app in ((context_a, APP), (context_b, APP.replace(b"hello", b"jello"))):
        context.mkdir()
        (context / "Dockerfile").write_text(DOCKERFILE.format(base=base_image))
        (context / "app.py").write_bytes(app)
    cert, key = _signing_files(work)
    built: dict[str, Built] = {
        name: Built(tags[name], work / f"{name}.eif") for name in ("a1", "a2", "b")
    }

    def build_image(name: str, then_eif: bool) -> None:
        client = docker.from_env()  # one client per thread
        try:
            client.images.build(path=str(context_a), tag=tags[name], nocache=True, rm=True, forcerm=True)
            if then_eif:
                build_eif(client, tags[name], built[name].eif, signing_certificate=cert, private_key=key)
        finally:
            client.close()

    def cli_build(name: str, *extra: str) -> None:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            status = main(["build-enclave", "--docker-uri", tags[name], "--output-file",
                           str(built[name].eif), "--name", "app", "--version", "7", *extra])
        assert status == 0, err.getvalue()
        built[name] = Built(tags[name], built[name].eif, out.getvalue(), err.getvalue())

    try:
        # The engine's work (builds, exports) overlaps; A2's EIF comes last through the CLI.
        with ThreadPoolExecutor(max_workers=2) as pool:
            jobs = [pool.submit(build_image, "a1", True), pool.submit(build_image, "a2", False)]
            cli_build("b", "--docker-dir", str(context_b))
            for job in jobs:
                job.result()
        cli_build("a2")
        yield built
    finally:
        for tag in tags.values():
            with contextlib.suppress(docker.errors.ImageNotFound):
                docker_client.images.remove(tag, force=True)


def test_rebuilding_the_same_dockerfile_gives_the_same_pcrs(builds, docker_client) -> None:  # type: ignore[no-untyped-def]
    first, second = docker_client.images.get(builds["a1"].tag), docker_client.images.get(builds["a2"].tag)
    # nocache: new layers whose directories (/app, /app/data) carry new mtimes
    assert first.id != second.id
    one, two = builds["a1"].image.measurements, builds["a2"].image.measurements
    assert (one.pcr0, one.pcr1, one.pcr2) == (two.pcr0, two.pcr1, two.pcr2)
    assert one.pcr8 is not None and two.pcr8 is None  # signing adds PCR8 and leaves PCR0 alone


def test_one_changed_app_byte_changes_pcr0_and_pcr2_only(builds) -> None:  # type: ignore[no-untyped-def]
    a, b = builds["a2"].image.measurements, builds["b"].image.measurements
    assert a.pcr0 != b.pcr0 and a.pcr2 != b.pcr2
    assert a.pcr1 == b.pcr1 == boot_blobs().pcr1


def test_build_enclave_prints_nitro_cli_lines_and_json(builds) -> None:  # type: ignore[no-untyped-def]
    built = builds["a2"]
    assert built.stderr.splitlines() == [
        "Start building the Enclave Image...",
        "Using the locally available Docker image...",
        "Enclave Image successfully created.",
    ]
    measurements = built.image.measurements
    assert json.loads(built.stdout) == {"Measurements": measurements.to_nitro_cli_json()}
    assert list(json.loads(built.stdout)["Measurements"]) == ["HashAlgorithm", "PCR0", "PCR1", "PCR2"]
    assert built.stdout.startswith('{\n  "Measurements": {\n    "HashAlgorithm": "Sha384 { ... }",\n')


def test_describe_eif_of_built_images(builds, docker_client, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    names = {}
    for name, signed in (("a1", True), ("b", False)):
        assert main(["describe-eif", "--eif-path", str(builds[name].eif)]) == 0
        described = json.loads(capsys.readouterr().out)
        eif = builds[name].image
        assert described["Measurements"] == eif.measurements.to_nitro_cli_json()
        assert described["CheckCRC"] is True and described["IsSigned"] is signed
        assert described.get("SignatureCheck") is (True if signed else None)
        assert described["Metadata"]["DockerInfo"]["Id"] == docker_client.images.get(builds[name].tag).id
        assert described["Metadata"]["BuildTool"] == "nitro-emu"
        names[name] = (described["ImageName"], described["ImageVersion"])
    # nitro-cli's defaults: the URI before ':' and the image id without "sha256:"
    image_id = docker_client.images.get(builds["a1"].tag).id.removeprefix("sha256:")
    assert names["a1"] == (builds["a1"].tag.split(":")[0], image_id)
    assert names["b"] == ("app", "7")


def test_loaded_enclave_image_has_the_original_config_and_files(builds, docker_client) -> None:  # type: ignore[no-untyped-def]
    eif = builds["a1"].image
    tag = enclave_image_tag(eif)
    container = None
    try:
        assert load_enclave_image(docker_client, eif) == tag
        loaded = docker_client.images.get(tag)
        assert load_enclave_image(docker_client, eif) == tag  # cached: same image
        assert docker_client.images.get(tag).id == loaded.id
        original = docker_client.images.get(builds["a1"].tag).attrs["Config"]
        for key in ("Entrypoint", "Cmd", "Env", "WorkingDir", "User"):
            assert loaded.attrs["Config"][key] == original[key], key
        container = docker_client.containers.create(
            tag, entrypoint=["cat"], command=["/app/app.py"], network_disabled=True,
            labels={"org.nitro-emu.test": "build-enclave"},
        )
        container.start()
        assert container.wait(timeout=60)["StatusCode"] == 0
        assert container.logs(stdout=True, stderr=False) == APP
        container.remove(force=True)
        # the stdlib's cached pycs are not stale in the enclave (no recompiling on each start)
        container = docker_client.containers.create(
            tag, entrypoint=["python3", "-c", PYC_CHECK], command=[], network_disabled=True,
            labels={"org.nitro-emu.test": "build-enclave"},
        )
        container.start()
        assert container.wait(timeout=60)["StatusCode"] == 0, container.logs()
        checked = json.loads(container.logs(stdout=True, stderr=False))
        assert {module for module, _, _ in checked} == {"json", "email"}
        assert all(source == recorded for _, source, recorded in checked), checked
    finally:
        if container is not None:
            container.remove(force=True)
        with contextlib.suppress(docker.errors.ImageNotFound):
            docker_client.images.remove(tag, force=True)


def test_missing_image_is_e50_and_writes_nothing(docker_client, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    image = "localhost:1/nitro-emu-missing:never"
    with pytest.raises(DockerImagePullError) as caught:
        build_eif(docker_client, image, tmp_path / "x.eif")
    assert caught.value.code == 50 and image in str(caught.value)
    assert list(tmp_path.iterdir()) == []


def test_load_round_trips_awkward_config_values(docker_client, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Env/Cmd/WorkingDir values that Dockerfile syntax must escape survive the import."""
    from emulator.eif import write_eif
    from emulator.eif.ramdisk import write_canonical_archive

    config = {
        "Entrypoint": ["python3", "-c"], "Cmd": ['print("a b")'], "User": "1000:1000", "WorkingDir": "/w d",
        "Env": ["PRICE=5$ each", 'Q=say "hi"', "B=back\\slash", "U=café", "E=", "PATH=/usr/bin:/bin"],
    }
    rootfs = io.BytesIO()
    with tarfile.open(fileobj=rootfs, mode="w") as archive:
        info = tarfile.TarInfo("hello.txt")
        info.size = 2
        archive.addfile(info, io.BytesIO(b"hi"))
    rootfs.seek(0)
    ramdisk = io.BytesIO()
    write_canonical_archive(rootfs, config, ramdisk)
    blobs = boot_blobs()
    write_eif(tmp_path / "x.eif", kernel=blobs.kernel, cmdline=blobs.cmdline, metadata=b"{}",
              ramdisks=(blobs.boot_ramdisk, ramdisk.getvalue()))
    eif = read_eif(tmp_path / "x.eif")
    tag = enclave_image_tag(eif)
    try:
        assert load_enclave_image(docker_client, eif) == tag
        loaded = docker_client.images.get(tag).attrs["Config"]
        assert {key: loaded[key] for key in config} == config
        assert loaded["Labels"]["org.nitro-emu.pcr0"] == eif.measurements.pcr0.hex()
    finally:
        with contextlib.suppress(docker.errors.ImageNotFound):
            docker_client.images.remove(tag, force=True)
