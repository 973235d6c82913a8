"""Errors of the test CA.

CAError
 +-- (subclasses next to the code that raises them)
"""

from __future__ import annotations


class CAError(Exception):
    """Base class of every error raised by the ``ca`` package."""
