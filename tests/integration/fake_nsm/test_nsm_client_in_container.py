"""The in-enclave NSM client in the enclave base image (Debian's Python and cbor2 only).

The host serves an NsmServer; a container of the base image, with nothing but ``fake_nsm`` on
its PYTHONPATH and the socket's directory mounted at ``/run/nitro-emu``, runs every client
call and the codec's golden bytes under the image's cbor2 (5.4 on bookworm).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fake_nsm.device import NsmDevice
from fake_nsm.server import NsmServer

ROOT = Path(__file__).resolve().parents[3]
MODULE_ID = "i-0123456789abcdef0-enc0183d09086c24190"

ENCLAVE_SCRIPT = r"""
import json, sys
import cbor2
from fake_nsm import codec
from fake_nsm.client import NsmClient
from fake_nsm.errors import InvalidIndex, InvalidResponse, ReadOnlyIndex

facts = {"python": sys.version.split()[0], "modules": sorted(m.split(".")[0] for m in sys.modules)}
golden = {
    "DescribeNSM": codec.encode_request(codec.DescribeNSM()).hex(),
    "ExtendPCR": codec.encode_request(codec.ExtendPCR(16, b"abc")).hex(),
    "Attestation": codec.encode_request(codec.Attestation()).hex(),
    "LockPCRs": codec.encode_request(codec.LockPCRs(32)).hex(),
}
facts["golden"] = golden
with NsmClient() as nsm:
    facts["transport"] = type(nsm.transport).__name__
    facts["module_id"] = nsm.describe_nsm().module_id
    facts["locked"] = sorted(nsm.describe_nsm().locked_pcrs)
    facts["pcr0"] = nsm.describe_pcr(0).data.hex()
    facts["extended"] = nsm.extend_pcr(16, b"in the enclave").hex()
    nsm.lock_pcr(16)
    errors = []
    for call in (lambda: nsm.extend_pcr(16, b"x"), lambda: nsm.lock_pcr(2), lambda: nsm.describe_pcr(40)):
        try:
            call()
        except (ReadOnlyIndex, InvalidIndex) as error:
            errors.append(error.code)
    facts["errors"] = list(errors)
    facts["random"] = len(nsm.get_random())
    facts["document"] = nsm.get_attestation_doc(nonce=b"container", public_key=b"k" * 1024).hex()
bad_responses = []
for bad in (b"", b"\xa1", cbor2.dumps("DescribeNSM") + b"\x00", cbor2.dumps({"Error": "Nope"})):
    try:
        codec.decode_response(bad)
    except InvalidResponse as error:
        bad_responses.append(error.code)
facts["bad_responses"] = bad_responses
print("FACTS " + json.dumps(facts))
"""


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[NsmServer, Path]]:
    from ca import TestCA
    from fake_nsm.document_signer import DocumentSigner

    signer = DocumentSigner(TestCA.load_or_create(tmp_path / "ca"), MODULE_ID)
    device = NsmDevice(module_id=MODULE_ID, signer=signer, measurements={0: hashlib.sha384(b"image").digest()})
    with tempfile.TemporaryDirectory(prefix="nsmc-") as run_dir:
        os.chmod(run_dir, 0o777)  # architecture.md: runtime dirs 0777, sockets 0666
        with NsmServer(Path(run_dir) / "nsm.sock", device) as server:
            yield server, tmp_path / "ca"


@pytest.mark.docker
def test_client_in_the_base_image_talks_to_the_host_server(
    docker_client: Any, base_image: str, served: tuple[NsmServer, Path]
) -> None:
    from ca import TestCA
    from fake_nsm.device import extend
    from fake_nsm.verifier import verify_attestation_document

    server, ca_dir = served
    container = docker_client.containers.run(
        base_image,
        ["python3", "-c", ENCLAVE_SCRIPT],
        detach=True,
        network_mode="none",
        environment={"PYTHONPATH": "/opt/nitro-emu", "NITRO_EMU_NSM_SOCKET": "/run/nitro-emu/nsm.sock"},
        volumes={
            str(server.socket_path.parent): {"bind": "/run/nitro-emu", "mode": "rw"},
            str(ROOT / "fake_nsm"): {"bind": "/opt/nitro-emu/fake_nsm", "mode": "ro"},
        },
        labels={"org.nitro-emu.test": "nsm-client-in-container"},
    )
    try:
        status = container.wait(timeout=120)
        logs = container.logs().decode(errors="replace")
    finally:
        container.remove(force=True)
    assert status["StatusCode"] == 0, logs
    facts = json.loads(next(line for line in logs.splitlines() if line.startswith("FACTS "))[6:])
    assert facts["transport"] == "SocketTransport"
    # Nothing beyond the standard library and cbor2 was imported by the client.
    assert not {"cryptography", "pycose", "docker", "ca", "emulator"} & set(facts["modules"])
    assert facts["golden"] == {
        "DescribeNSM": "6b44657363726962654e534d",
        "ExtendPCR": "a169457874656e64504352a265696e64657810646461746143616263",
        "Attestation": "a16b4174746573746174696f6ea369757365725f64617461f6656e6f6e6365f66a7075626c69635f6b6579f6",
        "LockPCRs": "a1684c6f636b50435273a16572616e67651820",
    }
    assert facts["module_id"] == server.device.module_id
    assert facts["locked"] == list(range(16))
    assert facts["pcr0"] == server.device.pcr(0).hex()
    assert facts["extended"] == extend(bytes(48), b"in the enclave").hex()
    assert facts["errors"] == ["ReadOnlyIndex", "ReadOnlyIndex", "InvalidIndex"]
    assert facts["random"] == 256
    assert facts["bad_responses"] == ["InvalidResponse"] * 4
    root = TestCA.load_or_create(ca_dir).root_certificate
    document = verify_attestation_document(bytes.fromhex(facts["document"]), trusted_roots=[root], nonce=b"container")
    assert document.pcrs[16] == bytes.fromhex(facts["extended"])
