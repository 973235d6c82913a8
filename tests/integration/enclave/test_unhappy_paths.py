"""Enclave clocks and injected NSM faults on a real enclave, through its real supervisor.

The NSM client is the unmodified ``fake_nsm.client.NsmClient`` (what enclave code uses); the
verdicts are the verifier's. ``describe-enclaves`` must show what is armed.
"""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from emulator.cli import main
from emulator.testing.handles import EnclaveFactory, EnclaveHandle, EnclaveSpec
from fake_nsm.errors import CertificateExpiredError, InternalError, StaleDocumentError
from fake_nsm.verifier import read_unverified_document, verify_attestation_document

pytestmark = [pytest.mark.docker]

APP = "import time\nprint('waiting', flush=True)\ntime.sleep(3600)\n"


@pytest.fixture(scope="module")
def enclave(tmp_path_factory: pytest.TempPathFactory, docker_client: Any, base_image: str) -> Any:
    context = tmp_path_factory.mktemp("sleeper")
    (context / "app.py").write_text(APP)
    (context / "Dockerfile").write_text(f'FROM {base_image}\nCOPY app.py /app/\nCMD ["python3", "/app/app.py"]\n')
    factory = EnclaveFactory(tmp_path_factory.mktemp("unhappy") / "home", docker_client=docker_client, worker="unhappy")
    spec = EnclaveSpec(dockerfile_dir=context).checked()
    handle = factory.start(spec, name="sleeper")
    yield factory, handle, spec
    factory.close()


def describe(handle: EnclaveHandle, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> tuple[dict[str, Any], str]:
    monkeypatch.setenv("NITRO_EMU_HOME", str(handle.home))
    assert main(["describe-enclaves"]) == 0
    out, err = capsys.readouterr()
    (record,) = [entry for entry in json.loads(out) if entry["EnclaveID"] == handle.enclave_id]
    return record, err


def test_an_nsm_fault_hits_the_client_then_clears(
    enclave: tuple[EnclaveFactory, EnclaveHandle, EnclaveSpec], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _, handle, _ = enclave
    handle.faults.add("Attestation", error="InternalError", count=1)
    record, err = describe(handle, monkeypatch, capsys)
    assert record["NitroEmuFaults"] == ["Attestation: error InternalError (1 left)"]
    assert "has NSM faults armed" in err
    with pytest.raises(InternalError):
        handle.attest_raw(nonce=b"n")
    assert handle.attest(nonce=b"n").nonce == b"n"   # served again
    record, _ = describe(handle, monkeypatch, capsys)
    assert "NitroEmuFaults" not in record             # nitro-cli's keys only, once nothing is armed


@pytest.mark.parametrize(
    ("offset", "verdict"),
    # a leaf is issued at enclave time for 3 h: four hours ago it has expired by now; two hours
    # ahead it is not valid yet; ten minutes ago the chain holds but the document is stale
    [(-4 * 3600, CertificateExpiredError), (2 * 3600, CertificateExpiredError), (-600, StaleDocumentError)],
    ids=["leaf-expired", "from-the-future", "stale"],
)
def test_the_enclave_clock_dates_documents_and_certificates(
    enclave: tuple[EnclaveFactory, EnclaveHandle, EnclaveSpec], offset: int, verdict: type[Exception],
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    factory, handle, _ = enclave
    handle.clock.set_offset(offset)
    try:
        raw = handle.attest_raw(nonce=b"t")
        record, _ = describe(handle, monkeypatch, capsys)
    finally:
        handle.clock.set_offset(0)
    assert record["NitroEmuClockOffset"] == offset
    stamped = datetime.fromtimestamp(read_unverified_document(raw).timestamp / 1000, timezone.utc)
    assert abs((stamped - datetime.now(timezone.utc)) - timedelta(seconds=offset)) < timedelta(seconds=60)
    with pytest.raises(verdict):  # at the host's time
        verify_attestation_document(raw, trusted_roots=[factory.ca.root_der], max_age=timedelta(minutes=5))
    # at the enclave's own time the document is sound: only the clock differs
    verify_attestation_document(raw, trusted_roots=[factory.ca.root_der], at=stamped, max_age=timedelta(minutes=5))


def test_the_clock_command_sets_and_shows_it(
    enclave: tuple[EnclaveFactory, EnclaveHandle, EnclaveSpec], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _, handle, _ = enclave
    monkeypatch.setenv("NITRO_EMU_HOME", str(handle.home))
    try:
        assert main(["clock", "--enclave-id", handle.enclave_id, "--offset", "-86400"]) == 0
        shown = json.loads(capsys.readouterr().out)
        assert shown["NitroEmuClockOffset"] == -86400
        enclave_time = datetime.fromisoformat(shown["EnclaveTime"])
        assert abs(datetime.now(timezone.utc) - timedelta(days=1) - enclave_time) < timedelta(seconds=60)
        assert main(["clock", "--enclave-id", handle.enclave_id, "--offset", "1e12"]) == 1
        assert "within" in capsys.readouterr().err
    finally:
        handle.clock.set_offset(0)



def test_the_spec_clock_offset_starts_an_enclave_in_the_past(enclave: tuple[EnclaveFactory, EnclaveHandle, EnclaveSpec]) -> None:
    """``@pytest.mark.nitro_enclave(..., clock_offset=-600)``: its first document is already old."""
    factory, _, spec = enclave
    past = factory.start(replace(spec, clock_offset=-600), name="past")
    try:
        raw = past.attest_raw(nonce=b"p")
        assert past.clock.offset() == -600
    finally:
        past.terminate()
    stamped = datetime.fromtimestamp(read_unverified_document(raw).timestamp / 1000, timezone.utc)
    assert abs(datetime.now(timezone.utc) - timedelta(seconds=600) - stamped) < timedelta(seconds=60)
    with pytest.raises(StaleDocumentError):
        verify_attestation_document(raw, trusted_roots=[factory.ca.root_der], max_age=timedelta(minutes=5))
