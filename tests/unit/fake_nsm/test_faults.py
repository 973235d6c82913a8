"""Injected NSM faults: the plan itself, then the NSM server through the unmodified client."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.unit.fake_nsm.nsm_helpers import make_device

from fake_nsm.client import NsmClient, SocketTransport
from fake_nsm.errors import InternalError, InvalidOperation
from fake_nsm.faults import Fault, FaultError, FaultPlan
from fake_nsm.server import NsmServer


def test_counted_rules_fire_then_go_and_other_processes_see_the_same_plan(tmp_path: Path) -> None:
    path = tmp_path / "faults.json"
    armer, server = FaultPlan(path), FaultPlan(path)  # two views, as a CLI and a supervisor
    armer.add(Fault("Attestation", error="InternalError", count=2))
    armer.add(Fault("*", delay=0.0))
    assert server.take("DescribePCR") == Fault("*", delay=0.0)  # the catch-all, not counted
    assert server.take("Attestation").error == "InternalError"  # type: ignore[union-attr]
    assert [rule.describe() for rule in armer.rules()] == [
        "Attestation: error InternalError (1 left)", "*: delay 0 s (until cleared)"]
    assert server.take("Attestation").error == "InternalError"  # type: ignore[union-attr]
    assert server.take("Attestation") == Fault("*", delay=0.0)  # exhausted: the next rule
    assert armer.clear() == 1 and server.take("Attestation") is None
    assert oct(path.stat().st_mode & 0o777) == "0o600"


@pytest.mark.parametrize(
    ("options", "words"),
    [({}, "exactly one thing"), ({"error": "X", "drop": True}, "exactly one thing"),
     ({"delay": -1.0}, "delay=-1.0"), ({"drop": True, "count": 0}, "count=0")],
)
def test_a_rule_that_means_nothing_is_refused(options: dict[str, object], words: str) -> None:
    with pytest.raises(FaultError, match=words):
        Fault("Attestation", **options)  # type: ignore[arg-type]


def test_a_broken_plan_file_is_an_error_not_a_silent_pass(tmp_path: Path) -> None:
    path = tmp_path / "faults.json"
    path.write_text(json.dumps({"faults": [{"request": "Attestation", "explode": True}]}))
    with pytest.raises(FaultError, match="unknown fault fields"):
        FaultPlan(path).rules()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[FaultPlan, Path]]:
    with tempfile.TemporaryDirectory(prefix="nsmf-") as short:
        socket_path = Path(short) / "nsm.sock"
        plan = FaultPlan(Path(short) / "faults.json")
        with NsmServer(socket_path, make_device(tmp_path / "ca"), faults=plan):
            yield plan, socket_path


def client(socket_path: Path) -> NsmClient:
    return NsmClient(SocketTransport(socket_path, timeout=10))


def test_an_injected_error_reaches_the_client_as_its_typed_error(served: tuple[FaultPlan, Path]) -> None:
    plan, socket_path = served
    plan.add(Fault("Attestation", error="InternalError", count=1))
    with client(socket_path) as nsm:
        with pytest.raises(InternalError):
            nsm.get_attestation_doc(nonce=b"n")
        assert nsm.get_attestation_doc(nonce=b"n")  # the next one is served
        assert nsm.describe_nsm().max_pcrs == 32     # other requests were never hit


def test_a_refused_extend_changes_nothing(served: tuple[FaultPlan, Path]) -> None:
    plan, socket_path = served
    with client(socket_path) as nsm:
        before = nsm.describe_pcr(16).data
        plan.add(Fault("ExtendPCR", error="InvalidOperation", count=1))
        with pytest.raises(InvalidOperation):
            nsm.extend_pcr(16, b"data")
        assert nsm.describe_pcr(16).data == before


@pytest.mark.parametrize("action", [{"drop": True}, {"truncate": True}])
def test_dropped_and_truncated_answers_fail_that_call_only(served: tuple[FaultPlan, Path], action: dict[str, bool]) -> None:
    plan, socket_path = served
    plan.add(Fault("GetRandom", count=1, **action))  # type: ignore[arg-type]
    with client(socket_path) as nsm:
        with pytest.raises(InternalError, match="closed the connection"):
            nsm.get_random()
    with client(socket_path) as nsm:  # a new connection is served normally
        assert len(nsm.get_random()) == 256
    assert plan.rules() == []


def test_a_delay_still_answers(served: tuple[FaultPlan, Path]) -> None:
    plan, socket_path = served
    plan.add(Fault("*", delay=0.05, count=2))
    with client(socket_path) as nsm:
        assert nsm.describe_nsm().module_id and nsm.describe_pcr(0).lock
    assert plan.rules() == []
