"""Injected NSM faults of running enclaves (docs/testing-unhappy-paths.md).

Each enclave's supervisor serves its NSM with the fault plan ``enclaves/<id>/faults.json``
(host side only; the enclave never sees it). Anything that can name the enclave arms and
clears faults there, and ``describe-enclaves`` shows what is armed (``NitroEmuFaults``).

    faults = nsm_fault_control(settings, enclave_id)
    faults.add("Attestation", error="InternalError", count=2)
    faults.add("*", delay=1.5)
    faults.clear()
"""

from __future__ import annotations

from typing import Any

from emulator.errors import EmulatorError
from emulator.settings import Settings
from fake_nsm.errors import ERROR_CLASSES
from fake_nsm.faults import Fault, FaultControl, FaultError, FaultPlan, checked_fault

#: The NSM requests a fault can name (nsm-api's Request variants), and ``*`` for all.
NSM_REQUESTS = ("Attestation", "DescribeNSM", "DescribePCR", "ExtendPCR", "GetRandom", "LockPCR", "LockPCRs")
FAULTS_FILE = "faults.json"


class FaultSpecError(EmulatorError):
    """A fault that cannot be armed: an unknown request or error code, or no such enclave."""


def nsm_fault_plan(settings: Settings, enclave_id: str) -> FaultPlan:
    """The fault plan the enclave's NSM server reads (its file may not exist yet)."""
    return FaultPlan(settings.enclave_dir(enclave_id) / FAULTS_FILE)


def check_nsm_fault(request: str, options: dict[str, Any]) -> Fault:
    """A :class:`Fault` for the NSM, refused with the allowed names when it names none."""
    return checked_fault(request, options, server="NSM", requests=NSM_REQUESTS, errors=tuple(ERROR_CLASSES),
                         refuse=FaultSpecError)


def nsm_fault_control(settings: Settings, enclave_id: str) -> FaultControl:
    """Arm, clear and list the faults of a running enclave's NSM."""
    if not settings.enclave_dir(enclave_id).is_dir():
        raise FaultSpecError(f"no enclave {enclave_id} in {settings.home}: see `nitro-emu describe-enclaves`")
    return FaultControl(nsm_fault_plan(settings, enclave_id), check_nsm_fault)


def armed_nsm_faults(settings: Settings, enclave_id: str) -> list[str]:
    """One line per armed fault (for describe-enclaves); an unreadable plan says so."""
    try:
        return [rule.describe() for rule in nsm_fault_plan(settings, enclave_id).rules()]
    except FaultError as error:
        return [f"unreadable fault plan: {error}"]
