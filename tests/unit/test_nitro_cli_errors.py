"""nitro-cli's error table: codes, names, messages and the NitroCliError built from them."""

from __future__ import annotations

import pytest

from emulator.errors import NitroCliError
from emulator.nitro_cli_errors import (
    ERRORS_BY_CODE,
    MISSING_INFO,
    UnknownErrorCode,
    explain,
    lookup,
    nitro_cli_error,
)


def test_table_is_dense_from_e00_to_e60_with_unique_names() -> None:
    assert sorted(ERRORS_BY_CODE) == list(range(61))
    assert len({row.name for row in ERRORS_BY_CODE.values()}) == 61


@pytest.mark.parametrize(
    ("code", "name"),
    [(0, "UnspecifiedError"), (19, "FileOperationFailure"), (35, "EifParsingError"),
     (36, "EnclaveBootFailure"), (44, "EnclaveConsoleConnectionFailure"),
     (48, "EifBuildingError"), (50, "DockerImagePullError"), (59, "EIFSignatureCheckerError"),
     (60, "EIFSigningError")],
)
def test_codes_follow_nitro_cli_enum_order(code: int, name: str) -> None:
    assert lookup(name).code == code
    assert lookup(f"E{code:02d}").name == name
    assert lookup(code).label == f"E{code:02d}"


def test_error_carries_code_as_exit_status_and_bracketed_label() -> None:
    error = nitro_cli_error("EnclaveBootFailure", detail="The container exited with status 1.")
    assert isinstance(error, NitroCliError)
    assert error.code == 36
    assert str(error).startswith("[ E36 ] Enclave boot failure. ")
    assert str(error).endswith(" The container exited with status 1.")


def test_placeholders_are_filled_or_marked_missing_like_nitro_cli() -> None:
    assert nitro_cli_error("MissingArgument", "--memory").message == (
        "Missing mandatory argument. User did not provide the `--memory` argument."
    )
    assert nitro_cli_error("ConflictingArgument", "--cpu-count").message == (
        f"Conflicting arguments. User provided both `--cpu-count` and `{MISSING_INFO}`."
    )


def test_message_form_depends_on_how_much_is_known() -> None:
    short = nitro_cli_error("InsufficientMemoryRequested", "memory", "0").message
    assert short.endswith("memory should be greated than 0 MB.")
    full = nitro_cli_error("InsufficientMemoryRequested", "memory", "64", "128").message
    assert full.endswith("the minimum memory should be 128 MB")
    assert "\nFile: 'x.eif', failing operation: 'Open'." in lookup(19).message("x.eif", "Open")
    assert "\nFile:" not in lookup(19).message("x.eif")


def test_explain_uses_nitro_cli_long_text() -> None:
    assert "`--memory` is missing a value" in explain("E01")
    assert explain("e57").startswith("Hasher error.")


@pytest.mark.parametrize("bad", ["E61", "X1", "", "E123", 99])
def test_unknown_codes_are_rejected_as_invalid_argument(bad: object) -> None:
    with pytest.raises(UnknownErrorCode) as caught:
        lookup(bad)  # type: ignore[arg-type]
    assert caught.value.code == 3
