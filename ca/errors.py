"""Errors of the test CA.

CAError
 +-- CANotFoundError        no test CA in the directory (``TestCA.load``); run ``ca init``
 +-- CAStorageError         a CA file is unreadable, corrupt or cannot be written
 +-- RootValidityError      the requested time lies outside what the test root can cover
 +-- InvalidEnclaveIdError  an enclave id is not ``i-<17 hex>-enc<16 hex>``
"""

from __future__ import annotations

from pathlib import Path


class CAError(Exception):
    """Base class of every error raised by the ``ca`` package."""


class CANotFoundError(CAError):
    """The directory holds no test CA.

    Attributes:
        directory: where the CA was looked for.
    """

    def __init__(self, directory: Path) -> None:
        super().__init__(
            f"no test CA in {directory}; create one with `nitro-emu ca init`"
        )
        self.directory = directory


class CAStorageError(CAError):
    """A CA file could not be read, parsed or written.

    Attributes:
        path: the file concerned.
    """

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(
            f"test CA file {path}: {problem}; remove the CA directory "
            f"{path.parent} to start over with a new test root"
        )
        self.path = path


class RootValidityError(CAError):
    """A certificate was needed at a time the test root cannot cover.

    Attributes:
        at: the time asked for.
        not_before, not_after: the root's validity window.
    """

    def __init__(self, at: object, not_before: object, not_after: object, hint: str) -> None:
        super().__init__(
            f"the test root is valid from {not_before} to {not_after}, which cannot cover "
            f"a chain issued at {at}; {hint}"
        )
        self.at = at
        self.not_before = not_before
        self.not_after = not_after


class InvalidEnclaveIdError(CAError, ValueError):
    """An enclave id does not have nitro-cli's form ``i-<17 hex>-enc<16 hex>``.

    Attributes:
        enclave_id: the rejected value.
    """

    def __init__(self, enclave_id: str) -> None:
        super().__init__(
            f"invalid enclave id {enclave_id!r}: expected i-<17 hex digits>-enc<16 hex digits>, "
            "e.g. i-020b6af9246d90e92-enc0183d09086c24190"
        )
        self.enclave_id = enclave_id
