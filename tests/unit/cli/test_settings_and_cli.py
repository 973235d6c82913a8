"""The state-dir settings and the CLI's error contract."""

from __future__ import annotations

import pytest

from emulator.cli import app as cli
from emulator.errors import NitroCliError
from emulator.settings import Settings, get_settings


def test_home_defaults_under_the_user_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.delenv("NITRO_EMU_HOME", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert get_settings().home == tmp_path / "data" / "nitro-emu"


def test_home_follows_the_environment_each_call(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("NITRO_EMU_HOME", str(tmp_path / "a"))
    first = get_settings()
    monkeypatch.setenv("NITRO_EMU_HOME", str(tmp_path / "b"))
    assert first.home == tmp_path / "a"
    assert get_settings().home == tmp_path / "b"


def test_paths_are_short_and_keyed_by_cid(tmp_path) -> None:
    settings = Settings(home=tmp_path)
    assert settings.run_dir(16) == tmp_path / "run" / "16"
    assert settings.parent_dir == tmp_path / "run" / "parent"
    assert settings.enclave_dir("i-0-enc1") == tmp_path / "enclaves" / "i-0-enc1"


def test_ensure_home_is_private(tmp_path) -> None:
    home = Settings(home=tmp_path / "state").ensure_home()
    assert home.stat().st_mode & 0o777 == 0o700


def test_nitro_cli_error_prints_code_line_and_exits_with_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def failing(_args: object) -> int:
        raise NitroCliError(4, "Invalid argument provided. Check the flag value.")

    parser = cli.build_parser()
    real_parse = parser.parse_args
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    monkeypatch.setattr(
        parser, "parse_args", lambda argv: real_parse(["base-image"]).__class__(handler=failing)
    )
    assert cli.main([]) == 4
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "[ E04 ] Invalid argument provided. Check the flag value."
    assert err[1].endswith("cli-errors.html#E04")


def test_unknown_exceptions_are_not_swallowed(monkeypatch: pytest.MonkeyPatch) -> None:
    def buggy(_args: object) -> int:
        raise ZeroDivisionError("a bug must surface, not hide behind a one-liner")

    parser = cli.build_parser()
    real_parse = parser.parse_args
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    monkeypatch.setattr(
        parser, "parse_args", lambda argv: real_parse(["base-image"]).__class__(handler=buggy)
    )
    with pytest.raises(ZeroDivisionError):
        cli.main([])
