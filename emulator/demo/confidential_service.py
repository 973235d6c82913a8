"""``make demo``: the confidential service (examples/confidential-service) end to end.

    python -m emulator.demo.confidential_service            # build, run, attest, send a secret, clean up
    python -m emulator.demo.confidential_service --keep     # leave the enclave running and print how to stop it
    python -m emulator.demo.confidential_service --purge    # also remove the cached EIF and images at the end

Steps, each printed as one transcript line: make sure the local base image with Python,
cbor2 and cryptography exists (debootstrap from Debian's packages when no registry is
reachable; cached by tag), stage the enclave's build context, build its EIF and print the
PCRs, run the enclave, let the parent-side client verify its attestation document against
the test CA and the PCRs and send a sealed secret, show that a client expecting another
build refuses, then terminate the enclave and remove its state dir. The EIF (by image id)
and the enclave images (by content tag) stay cached, so later runs start in seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

from emulator.errors import EmulatorError

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_DIR = ROOT / "examples" / "confidential-service"
CRYPTO_IMAGE = "nitro-emu/crypto:bookworm"
# python3-cffi-backend is named explicitly: debootstrap does not resolve the virtual
# packages (python3-cffi-backend-api-*) that python3-cryptography depends on.
CRYPTO_PACKAGES: tuple[str, ...] = (
    "python3-minimal",
    "python3-cbor2",
    "python3-cffi-backend",
    "python3-cryptography",
    "python3-docker",
    "python3-attr",
    "python3-ecdsa",
    "python3-asn1crypto",
    "python3-oscrypto",
)
# The in-enclave modules of nitro-emu the enclave app imports (stdlib + cbor2 only).
VENDORED: tuple[str, ...] = (
    "fake_nsm/client.py",
    "fake_nsm/codec.py",
    "fake_nsm/errors.py",
    "emulator/vsock/enclave.py",
    "emulator/errors.py",
    "emulator/kms/cms.py",
)
SERVICE_PORT = 5005


class DemoError(EmulatorError):
    """A demo step failed; the message names the step."""


def ensure_crypto_image(client: Any) -> str:
    """The local image the example's enclave is built FROM (Debian + python3-cryptography)."""
    from emulator.engine.base_image import ensure_base_image

    return ensure_base_image(client, tag=CRYPTO_IMAGE, packages=CRYPTO_PACKAGES)


def stage_enclave_context(destination: Path) -> Path:
    """Copy the enclave app, protocol.py and the vendored nitro-emu modules into a context."""
    shutil.copytree(EXAMPLE_DIR / "enclave", destination, dirs_exist_ok=True)
    shutil.copy2(EXAMPLE_DIR / "protocol.py", destination / "protocol.py")
    for relative in VENDORED:
        target = destination / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / relative, target)
        # Empty package markers (emulator/, emulator/vsock/, fake_nsm/): the real __init__
        # files import host-only code lazily, but the enclave needs none of it.
        for package in Path(relative).parents[:-1]:
            (destination / package / "__init__.py").touch()
    return destination


def load_client() -> ModuleType:
    """The example's parent-side client module (examples/confidential-service/client.py)."""
    spec = importlib.util.spec_from_file_location("confidential_client", EXAMPLE_DIR / "client.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


class Transcript:
    """Numbered transcript lines on stdout."""

    def __init__(self, steps: int) -> None:
        self.steps = steps
        self.step = 0

    def next(self, text: str) -> None:
        self.step += 1
        print(f"[{self.step}/{self.steps}] {text}", flush=True)

    def detail(self, text: str) -> None:
        print(f"      {text}", flush=True)


@contextlib.contextmanager
def _workspace(keep: bool) -> Iterator[Path]:
    if keep:
        yield Path(tempfile.mkdtemp(prefix="nitro-demo-"))
        return
    with tempfile.TemporaryDirectory(prefix="nitro-demo-") as work:
        yield Path(work)


DEMO_CREDENTIALS = {"access_key_id": "AKIDNITROEMUDEMO", "secret_access_key": "demo-only-secret"}


def _kms_round_trip(client_module: Any, factory: Any, handle: Any, secret: bytes, out: Transcript) -> None:
    """A local KMS trusting the test CA: the PCR0-pinned key releases the secret to the
    enclave (CiphertextForRecipient), and a key pinned to another image's PCR0 refuses it."""
    import hashlib

    from emulator.testing.kms import LocalKms

    with LocalKms(factory.home, trusted_roots=[factory.ca.root_der]) as kms:
        pcr0 = handle.measurements[0]
        key = kms.create_key(policy=kms.attested_policy({0: pcr0}), Description="demo")
        blob = kms.client().encrypt(KeyId=key, Plaintext=secret)["CiphertextBlob"]
        out.detail(f"local KMS {kms.endpoint_url}, enclaves reach it on VSOCK (3, {kms.vsock_port})")
        out.detail(f"key {key}: kms:RecipientAttestation:ImageSha384 = {pcr0.hex()[:32]}...")
        out.detail(f"the parent holds only the {len(blob)}-byte ciphertext blob")
        with handle.connect(SERVICE_PORT) as sock:
            result = client_module.run_kms_session(
                sock, trusted_root=factory.ca.root_der, expected_pcrs=handle.measurements, blob=blob,
                credentials=DEMO_CREDENTIALS, expected_sha256=hashlib.sha256(secret).digest(),
                say=lambda line: None,
            )
        if not result.digest_matches:
            raise DemoError("the secret the enclave fetched from KMS does not match")
        out.detail("the enclave fetched it (Decrypt with Recipient) and proved it: SHA-256 matches")
        other = bytes(reversed(pcr0))
        pinned_elsewhere = kms.create_key(policy=kms.attested_policy({0: other}), Description="other image")
        blob = kms.client().encrypt(KeyId=pinned_elsewhere, Plaintext=secret)["CiphertextBlob"]
        with handle.connect(SERVICE_PORT) as sock:
            try:
                client_module.run_kms_session(
                    sock, trusted_root=factory.ca.root_der, expected_pcrs=handle.measurements, blob=blob,
                    credentials=DEMO_CREDENTIALS, expected_sha256=b"", say=lambda line: None,
                )
            except client_module.protocol.ProtocolError as refusal:
                out.detail(f"a key pinned to another image's PCR0: {str(refusal)[:100]}...")
            else:
                raise DemoError("KMS released a secret to an enclave whose PCR0 the policy does not name")


def run_demo(*, keep: bool = False, purge: bool = False, secret: bytes = b"correct horse battery staple") -> int:
    """Run the demo; return the exit status (0 when the round trip succeeded)."""
    from emulator.engine.client import docker_client
    from emulator.testing.handles import EnclaveFactory, EnclaveSpec

    out = Transcript(7)
    client_module = load_client()
    docker = docker_client()
    with _workspace(keep) as work:
        out.next(f"base image {CRYPTO_IMAGE} (Debian bookworm: python3, cbor2, cryptography)")
        if not docker.images.list(name=CRYPTO_IMAGE):
            out.detail("not built yet: debootstrap from Debian's packages (about 2 minutes, once)")
        ensure_crypto_image(docker)
        context = stage_enclave_context(work / "context")
        out.detail(f"build context staged in {context} (app.py, protocol.py, vendored nitro-emu modules)")

        # The EIF goes to the shared cache (~/.cache/nitro-emu/eif, by image id) and the
        # image keeps its content tag: a second run, or the tests, build nothing again.
        factory = EnclaveFactory(work / "home", docker_client=docker, worker="demo")
        spec = EnclaveSpec(dockerfile_dir=context, build_args={"BASE": CRYPTO_IMAGE}).checked("demo")
        caches: list[str] = []
        try:
            out.next("build-enclave: Docker image -> EIF; the measurements are:")
            built = factory.build(spec)
            caches += [built.image, str(built.eif_path)]
            for index, value in sorted(built.measurements.pcrs().items()):
                out.detail(f"PCR{index} {value.hex()}")

            out.next("run-enclave (not in debug mode)")
            handle = factory.start(spec, name="confidential-service")
            caches.append(handle.info.image_tag)
            out.detail(f"enclave {handle.enclave_id}, CID {handle.cid}, {handle.info.memory_mib} MiB")
            out.detail(f"transport: {handle.info.extra.get('transport', 'host')} "
                       f"({handle.info.extra.get('transport_reason', '')})")

            out.next("parent client: attest, verify, then send a sealed secret")
            with handle.connect(SERVICE_PORT) as sock:
                result = client_module.run_session(
                    sock,
                    trusted_root=factory.ca.root_der,
                    expected_pcrs=handle.measurements,
                    secret=secret,
                    say=out.detail,
                )
            if not result.digest_matches:
                raise DemoError("the enclave's digest of the secret does not match")

            out.next("a client that reviewed another build refuses to talk")
            wrong = dict(handle.measurements)
            wrong[0] = bytes(48)[:47] + b"\x01"
            with handle.connect(SERVICE_PORT) as sock:
                try:
                    client_module.run_session(
                        sock, trusted_root=factory.ca.root_der, expected_pcrs=wrong, secret=secret, say=lambda _: None
                    )
                except client_module.Refused as refusal:
                    out.detail(f"REFUSED: {str(refusal)[:110]}...")
                else:
                    raise DemoError("the client sent a secret to an enclave with unexpected PCRs")

            out.next("KMS, the AWS way: a key whose policy pins PCR0; the enclave fetches the secret itself")
            _kms_round_trip(client_module, factory, handle, secret, out)

            out.next("enclave output")
            for line in handle.logs().strip().splitlines()[-5:]:
                out.detail(f"| {line}")
        except BaseException:
            factory.close()
            raise
        if keep:
            print(
                f"kept: enclave {handle.enclave_id} (CID {handle.cid}); stop it with "
                f"NITRO_EMU_HOME={factory.home} nitro-emu terminate-enclave --enclave-id {handle.enclave_id}"
            )
            return 0
        factory.close()
        print(f"cleanup: enclave terminated; removed {work}")
        if purge:
            for cache in caches:
                if cache.startswith("/"):
                    Path(cache).unlink(missing_ok=True)
                else:
                    with contextlib.suppress(Exception):
                        docker.images.remove(cache, force=True)
            print(f"purged the caches: {', '.join(caches)}")
        else:
            print(f"kept as caches: {', '.join(caches)} (--purge removes them)")
    print("demo OK: the secret reached only the attested enclave")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m emulator.demo.confidential_service", description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="leave the enclave running at the end")
    parser.add_argument(
        "--purge", action="store_true", help="also remove the cached EIF and enclave images at the end"
    )
    args = parser.parse_args(argv)
    try:
        return run_demo(keep=args.keep, purge=args.purge)
    except (EmulatorError, OSError) as error:
        print(f"demo failed: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
