"""Injected faults of the local KMS: throttling, internal errors, a disabled or pending-
deletion key, latency, dropped or truncated answers, per operation (docs/testing-unhappy-paths.md).

The server reads its plan on every request; ``nitro-emu fault kms`` and ``nitro_kms.faults``
write it. A ``kms serve`` of a state dir uses ``<home>/kms/faults.json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from emulator.kms.errors import ValidationException
from emulator.kms.responses import INJECTABLE_ERRORS
from emulator.kms.shapes import OPERATIONS
from emulator.settings import Settings
from fake_nsm.faults import Fault, FaultControl, FaultPlan, checked_fault

FAULTS_FILE = "faults.json"


def kms_faults_path(settings: Settings) -> Path:
    return settings.home / "kms" / FAULTS_FILE


def check_kms_fault(operation: str, options: dict[str, Any]) -> Fault:
    """A :class:`Fault` for the KMS, refused with what is allowed when it names nothing real."""
    return checked_fault(operation, options, server="KMS", kind="operation", requests=OPERATIONS, errors=tuple(INJECTABLE_ERRORS),
                         refuse=ValidationException)


def kms_fault_control(plan: FaultPlan) -> FaultControl:
    return FaultControl(plan, check_kms_fault)
