"""The enclave runtime on a real engine, measured from inside running enclaves.

One probe EIF per session (see conftest ``PROBE_APP``): it prints its view of the world as a
``FACTS`` JSON line, with an attestation document from its own NSM, then waits.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from emulator.errors import NitroCliError
from emulator.enclave.state import read_record
from emulator.settings import Settings
from tests.integration.runtime_helpers import minimum_memory, put_in_runtime_dir, wait_for_output

pytestmark = [pytest.mark.docker, pytest.mark.timeout(300)]

RUN_KEYS = ["EnclaveName", "EnclaveID", "ProcessID", "EnclaveCID", "NumberOfCPUs", "CPUIDs", "MemoryMiB"]
DESCRIBE_KEYS = RUN_KEYS + ["State", "Flags", "Measurements"]


@pytest.fixture(autouse=True)
def _terminate_left_enclaves(nitro_home: Path) -> Any:
    """A failing test still terminates its enclaves (before the leak check looks)."""
    yield
    from emulator.enclave.runtime import terminate_all

    with contextlib.suppress(NitroCliError):
        terminate_all()


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run ``nitro-emu`` in process; returns (exit status, stdout, stderr)."""
    from emulator.cli.app import main

    capsys.readouterr()
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def facts_of(enclave_id: str) -> dict[str, Any]:
    text = wait_for_output(enclave_id, "FACTS ", timeout=90)
    line = next(line for line in text.splitlines() if line.startswith("FACTS "))
    return json.loads(line[len("FACTS "):])


def test_enclaves_are_isolated_and_attested_as_built(  # type: ignore[no-untyped-def]
    nitro_home: Path, probe_eif, docker_client, capsys
) -> None:
    from ca import TestCA
    from fake_nsm.device import instance_pcr
    from fake_nsm.verifier import verify_attestation_document

    eif, measurements = probe_eif
    memory = minimum_memory(eif)
    status, out, err = cli(capsys, "run-enclave", "--eif-path", str(eif), "--memory", str(memory),
                           "--cpu-count", "1", "--debug-mode")
    assert status == 0, err
    run = json.loads(out)
    assert list(run) == RUN_KEYS
    assert err.splitlines() == [
        "Start allocating memory...",
        f"Started enclave with enclave-cid: {run['EnclaveCID']}, memory: {memory} MiB, cpu-ids: {run['CPUIDs']}",
    ]
    assert (run["EnclaveName"], run["EnclaveCID"], run["NumberOfCPUs"], run["MemoryMiB"]) == ("probe", 16, 1, memory)
    status, out, err = cli(capsys, "run-enclave", "--eif-path", str(eif), "--memory", str(memory),
                           "--cpu-count", "1", "--enclave-cid", "5")
    assert status == 0, err
    production = json.loads(out)
    assert (production["EnclaveName"], production["EnclaveCID"]) == ("probe_1", 5)
    assert production["ProcessID"] != run["ProcessID"] and production["CPUIDs"] != run["CPUIDs"]

    status, out, _ = cli(capsys, "describe-enclaves", "--metadata")
    described = {entry["EnclaveID"]: entry for entry in json.loads(out)}
    assert set(described) == {run["EnclaveID"], production["EnclaveID"]}
    debug = described[run["EnclaveID"]]
    assert list(debug) == DESCRIBE_KEYS + ["ImageName", "ImageVersion", "Metadata"]
    assert {k: debug[k] for k in RUN_KEYS} == run
    assert (debug["State"], debug["Flags"]) == ("RUNNING", "DEBUG_MODE")
    assert described[production["EnclaveID"]]["Flags"] == "NONE"
    assert debug["Measurements"] == measurements.to_nitro_cli_json()  # build PCRs even in debug mode

    container = docker_client.containers.get(f"nitro-emu-{run['EnclaveID']}")
    host = container.attrs["HostConfig"]
    assert host["NetworkMode"] == "none" and host["ReadonlyRootfs"] is True
    assert host["CapDrop"] == ["ALL"] and host["SecurityOpt"] == ["no-new-privileges"]
    assert host["Memory"] == host["MemorySwap"] == memory << 20 and host["PidsLimit"] > 0
    assert set(host["Tmpfs"]) == {"/tmp", "/run"}
    record = read_record(Settings(home=nitro_home), run["EnclaveID"])
    assert record is not None
    if record.extra["transport"] == "engine":  # one volume, no path of the host at all
        assert [(m["Type"], m["Name"], m["Destination"], m["RW"]) for m in container.attrs["Mounts"]] == [
            ("volume", f"nitro-emu-{run['EnclaveID']}", "/run/nitro-emu", True)]
    else:
        binds = {m["Source"]: m for m in container.attrs["Mounts"] if m["Type"] == "bind"}
        run_dir, parent = str(nitro_home / "run" / "16"), str(nitro_home / "run" / "parent")
        assert binds[run_dir]["Destination"] == "/run/nitro-emu" and binds[run_dir]["RW"] is True
        assert binds[parent]["Destination"] == "/run/nitro-emu/parent" and binds[parent]["RW"] is False
        for source, mount in binds.items():  # anything else (the LD_PRELOAD shim) is read-only, never ca/
            assert source in (run_dir, parent) or not mount["RW"]
            assert nitro_home / "ca" not in (Path(source), *Path(source).parents)
    assert container.labels["org.nitro-emu.home"] == str(nitro_home)
    assert container.labels["org.nitro-emu.supervisor-pid"] == str(run["ProcessID"])

    root = TestCA.load_or_create(nitro_home / "ca").root_certificate
    for enclave, debug_mode in ((run, True), (production, False)):
        facts = facts_of(enclave["EnclaveID"])
        assert facts["interfaces"] == ["lo"]
        assert facts["connect_gateway"] == facts["connect_internet"] == "ENETUNREACH"
        assert facts["write_root"] == facts["write_usr"] == "EROFS" and facts["write_tmp"] == "written"
        assert facts["cap_eff"] == facts["cap_bnd"] == "0000000000000000" and facts["no_new_privs"] == "1"
        assert facts["nproc"] == enclave["NumberOfCPUs"]
        assert facts["key_files"] == []
        assert int(facts["cgroup_memory_limit"]) == memory << 20
        assert facts["env"] == {
            "NITRO_EMU_CID": str(enclave["EnclaveCID"]),
            "NITRO_EMU_ENCLAVE_ID": enclave["EnclaveID"],
            "NITRO_EMU_NSM_SOCKET": "/run/nitro-emu/nsm.sock",
        }
        document = verify_attestation_document(
            base64.b64decode(facts["attestation_b64"]), trusted_roots=[root], nonce=b"probe-nonce",
            allow_debug=debug_mode,
        )
        assert document.module_id == facts["module_id"] == enclave["EnclaveID"]
        assert document.user_data == b"probe"
        expected = {0: bytes(48), 1: bytes(48), 2: bytes(48)} if debug_mode else measurements.pcrs()
        assert {i: document.pcrs[i] for i in (0, 1, 2)} == expected
        assert document.pcrs[8] == bytes(48)  # unsigned EIF
        assert document.pcrs[4] == instance_pcr(enclave["EnclaveID"].split("-enc")[0])
        # The instance certificate names the same parent instance as PCR4 (the supervisor
        # created this home's CA: it must take the home's instance id, as `ca init` would).
        instance_cert = x509.load_der_x509_certificate(document.cabundle[-1])
        common_name = instance_cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
        assert str(common_name).startswith(enclave["EnclaveID"].split("-enc")[0] + ".")

    status, out, _ = cli(capsys, "console", "--enclave-id", run["EnclaveID"], "--disconnect-timeout", "1")
    assert status == 0
    assert out.startswith("Connecting to the console for enclave 16...\nSuccessfully connected to the console.\n")
    assert "FACTS " in out

    status, out, err = cli(capsys, "terminate-enclave", "--enclave-name", "probe_1")
    assert status == 0 and json.loads(out) == {
        "EnclaveName": "probe_1", "EnclaveID": production["EnclaveID"], "Terminated": True}
    assert err == f"Successfully terminated enclave {production['EnclaveID']}.\n"
    status, out, _ = cli(capsys, "terminate-enclave", "--all")
    assert status == 0 and json.loads(out)["EnclaveID"] == run["EnclaveID"]
    assert json.loads(cli(capsys, "describe-enclaves")[1]) == []


def test_allocating_past_memory_kills_the_enclave_and_says_why(  # type: ignore[no-untyped-def]
    nitro_home: Path, probe_eif, capsys
) -> None:
    from emulator.enclave.runtime import enclave_logs, exit_reason, run_enclave, stream_console

    eif, _ = probe_eif
    memory = minimum_memory(eif)
    info = run_enclave(eif, memory_mib=memory, cpu_count=1, debug_mode=True)
    facts_of(info.enclave_id)
    console: dict[str, Any] = {}
    watcher = threading.Thread(
        target=lambda: console.update(reason=stream_console(info, lambda chunk: None, disconnect_timeout=120)))
    watcher.start()
    put_in_runtime_dir(nitro_home, info.enclave_id, info.cid, "allocate", str(memory + 128))
    watcher.join(130)
    assert "out of memory" in (console.get("reason") or ""), (console, enclave_logs(info.enclave_id)[-600:])
    assert "out of memory" in (exit_reason(info.enclave_id) or "")
    log = enclave_logs(info.enclave_id)
    assert "allocating" in log and "FACTS" in log  # the last output is kept
    status, out, err = cli(capsys, "describe-enclaves")
    assert json.loads(out) == [] and f"Enclave {info.enclave_id} has ended: out of memory" in err


def test_a_killed_supervisor_takes_its_container_along(  # type: ignore[no-untyped-def]
    nitro_home: Path, probe_eif, docker_client
) -> None:
    from emulator.enclave.runtime import exit_reason, run_enclave

    eif, _ = probe_eif
    info = run_enclave(eif, memory_mib=minimum_memory(eif), cpu_count=1)
    label = {"label": f"org.nitro-emu.home={nitro_home}"}
    assert len(docker_client.api.containers(filters={"label": f"org.nitro-emu.enclave-id={info.enclave_id}"})) == 1
    os.kill(info.process_id, signal.SIGKILL)
    killed = time.monotonic()
    while docker_client.api.containers(all=True, filters=label):
        assert time.monotonic() - killed < 5.0, "the container outlived its supervisor by 5 s"
        time.sleep(0.05)
    deadline = time.monotonic() + 5
    while (nitro_home / "run" / str(info.cid)).exists() or (nitro_home / "enclaves" / info.enclave_id).exists():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert "killed" in (exit_reason(info.enclave_id) or "")


def _corrupt_copy(eif: Path, directory: Path, *, truncate: bool) -> Path:
    copy = directory / ("truncated.eif" if truncate else "flipped.eif")
    shutil.copyfile(eif, copy)
    with open(copy, "r+b") as handle:
        if truncate:
            handle.truncate(eif.stat().st_size // 2)
        else:
            handle.seek(eif.stat().st_size - 1000)  # inside the application ramdisk
            byte = handle.read(1)
            handle.seek(-1, os.SEEK_CUR)
            handle.write(bytes([byte[0] ^ 0xFF]))
    return copy


def test_bad_input_gets_nitro_cli_codes_and_leaves_nothing(  # type: ignore[no-untyped-def]
    nitro_home: Path, probe_eif, tmp_path, capsys
) -> None:
    from emulator.enclave.runtime import run_enclave

    eif, _ = probe_eif
    memory = str(minimum_memory(eif))
    base = ["run-enclave", "--memory", memory, "--cpu-count", "1"]

    def code(*argv: str) -> tuple[int, str]:
        status, _, err = cli(capsys, *argv)
        assert "Traceback" not in err
        return status, err

    assert code(*base, "--eif-path", str(tmp_path / "missing.eif"))[0] == 19
    status, err = code(*base, "--eif-path", str(_corrupt_copy(eif, tmp_path, truncate=True)))
    assert status == 35 and "truncated" in err
    status, err = code(*base, "--eif-path", str(_corrupt_copy(eif, tmp_path, truncate=False)))
    assert status == 35 and "CRC" in err
    assert code("run-enclave", "--memory", "64", "--cpu-count", "1", "--eif-path", str(eif))[0] == 26
    assert code("run-enclave", "--memory", "lots", "--cpu-count", "1", "--eif-path", str(eif))[0] == 3
    assert code(*base, "--eif-path", str(eif), "--enclave-cid", "3")[0] == 3
    assert code("terminate-enclave", "--enclave-id", "i-0000000000000000-enc0000000000000000")[0] == 11
    assert code("console", "--enclave-name", "nobody")[0] == 58

    info = run_enclave(eif, memory_mib=int(memory), cpu_count=1, enclave_cid=7)
    try:
        status, err = code(*base, "--eif-path", str(eif), "--enclave-cid", "7")
        assert status == 29 and info.enclave_id in err
        assert code("console", "--enclave-id", info.enclave_id)[0] == 44  # not debug mode
        with pytest.raises(NitroCliError) as caught:
            run_enclave(eif, memory_mib=int(memory), cpu_ids=[info.cpu_ids[0]])
        assert caught.value.code == 21
    finally:
        with contextlib.suppress(NitroCliError):
            cli(capsys, "terminate-enclave", "--enclave-id", info.enclave_id)


def test_an_enclave_that_cannot_start_leaves_nothing(  # type: ignore[no-untyped-def]
    nitro_home: Path, build_app_image, build_app_eif, tmp_path, capsys
) -> None:
    image = build_app_image({"/app/README": "no program here"}, cmd=["/app/missing-program"], include_fake_nsm=False)
    eif, _ = build_app_eif(image, tmp_path, name="broken")
    status, out, err = cli(capsys, "run-enclave", "--eif-path", str(eif), "--memory", str(minimum_memory(eif)),
                           "--cpu-count", "1")
    assert status == 36 and out == ""
    assert "missing-program" in err and "Traceback" not in err
    assert list((nitro_home / "enclaves").iterdir()) == []
    assert [p.name for p in (nitro_home / "run").iterdir()] == ["parent"]
