"""The emulator's exception tree.

EmulatorError
 +-- NitroCliError         a failure with a nitro-cli error code (``[ Exx ]``, exit status)
 +-- BaseImageError        (emulator.engine.base_image)
 +-- ...                   one subclass per failure a caller can act on, next to its module
"""

from __future__ import annotations


class EmulatorError(Exception):
    """Base class of every error raised by the ``emulator`` package."""


class NitroCliError(EmulatorError):
    """An error that nitro-cli reports with a numbered code.

    Attributes:
        code: the numeric code, e.g. 4 for ``E04``; also the process exit status.
        message: one line that says what happened and what to do.
    """

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"[ E{code:02d} ] {message}")
        self.code = code
        self.message = message
