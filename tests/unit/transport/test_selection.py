"""Choosing a transport, and what the engine transport mounts and copies (no Docker)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from emulator.enclave.state import EnclaveInfo
from emulator.settings import Settings
from emulator.transport import selection
from emulator.transport.companion import files_archive
from emulator.transport.engine import EngineTransport, EngineTransportError
from emulator.transport.host import HostTransport


def _enclave() -> EnclaveInfo:
    return EnclaveInfo(enclave_id="i-0123456789abcdef0-enc0123456789abcdef", name="app", cid=16, process_id=1,
                       cpu_ids=[1], memory_mib=512, state="RUNNING", flags="NONE", measurements={},
                       eif_path="/app.eif", instance_id="i-0123456789abcdef0", started_at_ms=0)


class _Engine:
    """Stands in for a docker client: only info() is asked, for the cache key."""

    def __init__(self, engine_id: str) -> None:
        self.engine_id = engine_id

    def info(self) -> dict[str, str]:
        return {"ID": self.engine_id}


def test_an_unknown_transport_is_refused_naming_the_choices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(selection.ENV_TRANSPORT, "vm")
    with pytest.raises(selection.TransportChoiceError, match="'vm' is not a transport; use one of auto, host, engine"):
        selection.requested()


def test_engine_is_taken_as_asked_without_a_probe(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(selection.ENV_TRANSPORT, "ENGINE")
    monkeypatch.setattr(selection, "_probe", lambda *args: pytest.fail("probed"))
    choice = selection.choose(Settings(home=tmp_path), _Engine("e1"))  # type: ignore[arg-type]
    assert choice == selection.Choice("engine", "NITRO_EMU_TRANSPORT=engine")


def test_host_on_an_engine_that_cannot_see_the_host_says_what_to_do(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv(selection.ENV_TRANSPORT, "host")
    monkeypatch.setattr(selection, "_probe", lambda *args: (False, "a container cannot mount /x (no such path)"))
    with pytest.raises(selection.TransportChoiceError) as raised:
        selection.choose(Settings(home=tmp_path), _Engine("e2"))  # type: ignore[arg-type]
    assert "cannot mount /x" in str(raised.value) and "use NITRO_EMU_TRANSPORT=engine" in str(raised.value)


def test_auto_follows_the_probe_and_remembers_it_per_engine(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv(selection.ENV_TRANSPORT, raising=False)
    calls: list[str] = []

    def probe(settings: Settings, client: _Engine) -> tuple[bool, str]:
        calls.append(client.engine_id)
        return client.engine_id == "native", f"probed {client.engine_id}"

    monkeypatch.setattr(selection, "_probe", probe)
    settings = Settings(home=tmp_path / "home")
    assert selection.choose(settings, _Engine("native")).name == "host"  # type: ignore[arg-type]
    assert selection.choose(settings, _Engine("desktop")).name == "engine"  # type: ignore[arg-type]
    selection._memo.clear()  # noqa: SLF001 - a new process: the answer comes from the cache file
    assert selection.choose(settings, _Engine("desktop")).describe() == "engine (probed desktop)"  # type: ignore[arg-type]
    assert calls == ["native", "desktop"]
    assert "engine (auto: probed desktop)" in selection.announced(_Engine("desktop"))  # type: ignore[arg-type]
    selection._memo.clear()  # noqa: SLF001


def test_the_engine_transport_mounts_only_its_volume(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    extra = {str(tmp_path / "shim"): ("/run/nitro-emu/lib", True), "/dev/null": ("/dev/nsm", True)}
    volumes = EngineTransport().mounts(settings, _enclave(), tmp_path / "run" / "16", extra)
    assert volumes == {
        "nitro-emu-i-0123456789abcdef0-enc0123456789abcdef": {"bind": "/run/nitro-emu", "mode": "rw"},
        "/dev/null": {"bind": "/dev/nsm", "mode": "ro"},
    }
    host = HostTransport().mounts(settings, _enclave(), tmp_path / "run" / "16", extra)
    assert host[str(tmp_path / "run" / "16")]["bind"] == "/run/nitro-emu"
    assert host[str(tmp_path / "run" / "parent")] == {"bind": "/run/nitro-emu/parent", "mode": "ro"}


def test_a_mount_outside_the_runtime_dir_cannot_be_carried(tmp_path: Path) -> None:
    with pytest.raises(EngineTransportError, match="/etc/app is not under /run/nitro-emu"):
        EngineTransport().mounts(Settings(home=tmp_path), _enclave(), tmp_path, {str(tmp_path): ("/etc/app", True)})


def test_files_copied_into_the_volume_belong_to_the_companion_and_keep_exec_bits(tmp_path: Path) -> None:
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "libshim.so").write_bytes(b"\x7fELF")
    (tmp_path / "lib" / "libshim.so").chmod(0o755)
    (tmp_path / "lib" / "notes").write_text("x")
    archive = tarfile.open(fileobj=io.BytesIO(files_archive({str(tmp_path / "lib"): "lib"})))
    members = {m.name: m for m in archive.getmembers()}
    assert sorted(members) == ["lib", "lib/libshim.so", "lib/notes"]
    assert {(m.uid, m.gid) for m in members.values()} == {(65534, 65534)}
    assert (members["lib"].mode, members["lib/libshim.so"].mode, members["lib/notes"].mode) == (0o755, 0o755, 0o644)
    assert archive.extractfile("lib/libshim.so").read() == b"\x7fELF"  # type: ignore[union-attr]
