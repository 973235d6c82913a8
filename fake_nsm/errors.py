"""Errors of the fake NSM package.

NsmError                      base of everything the device, server and client raise
 +-- (one subclass per NSM ErrorCode, named after it, in fake_nsm.codec / client)
VerificationError             an attestation document failed a check (fake_nsm.verifier)
 +-- (one subclass per check)
"""

from __future__ import annotations


class NsmError(Exception):
    """Base class of the NSM device, server and client errors."""


class VerificationError(Exception):
    """An attestation document failed verification; subclasses name the failed check."""
