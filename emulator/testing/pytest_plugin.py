"""pytest plugin ``nitro_emu``: running enclaves as fixtures.

Registered through the ``pytest11`` entry point, so installing nitro-emu enables it::

    @pytest.mark.nitro_enclave(dockerfile_dir="enclave/", memory_mib=256)
    def test_echo(nitro_enclave):
        with nitro_enclave.connect(5000) as sock:
            sock.sendall(b"ping")
            assert sock.recv(4) == b"ping"

Fixtures: ``nitro_state_dir`` and ``nitro_ca`` (session), ``nitro_enclave_factory``
(session; an :class:`emulator.testing.handles.EnclaveFactory`), ``nitro_enclave`` (per test; an
:class:`emulator.testing.handles.EnclaveHandle` configured by the ``nitro_enclave`` marker),
``nitro_kms`` (session; an :class:`emulator.testing.kms.LocalKms`: a local KMS trusting the
session's CA, on VSOCK port 8000 for the enclaves, with boto3 clients).
Options (group "nitro-emu"): ``--nitro-keep never|failed|always``, ``--nitro-state-dir``,
``--nitro-cache-dir``.

This module is imported by every pytest run of a project that installs nitro-emu, so its
top level imports only pytest and the standard library; the emulator loads on first use.
Under pytest-xdist each worker gets its own state dir (``<dir>/<worker id>``), its own CID
range and worker-tagged enclave names; the workers share one build cache
(``NITRO_EMU_CACHE_DIR``, beside the workers' temp dirs) unless that variable is set.
"""

from __future__ import annotations

import os
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from emulator.testing.handles import EnclaveFactory, EnclaveHandle
    from emulator.testing.kms import LocalKms

KEEP_CHOICES = ("never", "failed", "always")
ENV_CACHE = "NITRO_EMU_CACHE_DIR"  # emulator.settings.ENV_CACHE (not imported: see the docstring)
MARKER = "nitro_enclave"
_HANDLES: pytest.StashKey[list[EnclaveHandle]] = pytest.StashKey()
_REPORTS: pytest.StashKey[dict[str, pytest.TestReport]] = pytest.StashKey()  # by phase ("setup", "call", ...)
_KEPT: pytest.StashKey[list[tuple[str, str]]] = pytest.StashKey()  # (enclave id, summary line)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("nitro-emu", "nitro-emu enclaves (emulator.testing.pytest_plugin)")
    group.addoption(
        "--nitro-keep",
        choices=KEEP_CHOICES,
        default="never",
        help="leave enclaves running after their test: never (default), failed, always",
    )
    group.addoption(
        "--nitro-state-dir",
        default=None,
        metavar="DIR",
        help="NITRO_EMU_HOME for the session's enclaves (per xdist worker: DIR/<worker>); "
        "default: a fresh temporary directory",
    )
    group.addoption(
        "--nitro-cache-dir",
        default=None,
        metavar="DIR",
        help="where built EIFs are cached by image id (default: ~/.cache/nitro-emu/eif)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{MARKER}(image=None, dockerfile_dir=None, memory_mib=None, cpu_count=1, "
        "debug_mode=False, instance_id=None, build_args=None, clock_offset=0.0): the enclave that the "
        "nitro_enclave fixture runs (give image= or dockerfile_dir=)",
    )
    config.stash[_KEPT] = []


def pytest_report_header(config: pytest.Config) -> str:
    """Which transport the session's enclaves get (docs/transport.md)."""
    from emulator.engine.client import EngineUnavailableError, docker_client
    from emulator.transport.selection import TransportChoiceError, announced

    try:
        client = docker_client()
    except EngineUnavailableError:
        client = None
    try:
        return f"nitro-emu transport: {announced(client)}"
    except TransportChoiceError as error:
        return f"nitro-emu transport: {error}"
    finally:
        if client is not None:
            client.close()


def _worker() -> str:
    return os.environ.get("PYTEST_XDIST_WORKER", "main")


@pytest.fixture(scope="session")
def nitro_state_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This session's (this worker's) ``NITRO_EMU_HOME``: short, private, created 0700."""
    option = request.config.getoption("--nitro-state-dir")
    if option:
        base = Path(option).expanduser().absolute()
        home = base / _worker() if "PYTEST_XDIST_WORKER" in os.environ else base
    else:
        home = tmp_path_factory.mktemp("nitro", numbered=True)
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    home.chmod(0o700)
    return home


def _shared_build_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Under xdist, one build cache (shim, EIF summaries) for all of the session's workers.

    Each worker has its own state dir; without this each one's first enclave compiled the shim
    and hashed the EIF again (about 6 s of CPU per worker, docs/scale.md). xdist gives each
    worker ``<session basetemp>/popen-<worker>``, so the session's cache sits beside them.
    """
    return tmp_path_factory.getbasetemp().parent / "nitro-cache"


@pytest.fixture(scope="session")
def nitro_enclave_factory(
    request: pytest.FixtureRequest, nitro_state_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EnclaveFactory]:
    """Builds EIFs (cached by content) and runs enclaves; terminates leftovers at session end."""
    from emulator.testing.handles import EnclaveFactory

    previous = os.environ.get(ENV_CACHE)
    if "PYTEST_XDIST_WORKER" in os.environ and previous is None:
        os.environ[ENV_CACHE] = str(_shared_build_cache(tmp_path_factory))
    cache = request.config.getoption("--nitro-cache-dir")
    factory = EnclaveFactory(nitro_state_dir, cache_dir=Path(cache) if cache else None, worker=_worker())
    try:
        yield factory
        kept = {enclave_id for enclave_id, _ in request.config.stash.get(_KEPT, [])}
        factory.close(keep=frozenset(kept))
    finally:
        if previous is None:
            os.environ.pop(ENV_CACHE, None)


@pytest.fixture(scope="session")
def nitro_ca(nitro_enclave_factory: EnclaveFactory) -> Any:
    """The session's test CA (``ca.TestCA``): the root its enclaves' documents chain to."""
    return nitro_enclave_factory.ca


@pytest.fixture(scope="session")
def nitro_kms(nitro_enclave_factory: EnclaveFactory) -> Iterator[LocalKms]:
    """The session's local KMS (an :class:`emulator.testing.kms.LocalKms`).

    It trusts the session's test CA for Recipient documents, keeps nothing on disk, and the
    session's enclaves reach it on VSOCK (3, 8000), as through ``vsock-proxy 8000`` on Nitro.
    ``nitro_kms.client()`` is an unmodified boto3 client of it.
    """
    from emulator.testing.kms import LocalKms

    with LocalKms(nitro_enclave_factory.home, trusted_roots=[nitro_enclave_factory.ca.root_der]) as kms:
        yield kms


@pytest.fixture
def nitro_enclave(
    request: pytest.FixtureRequest, nitro_enclave_factory: EnclaveFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[EnclaveHandle]:
    """A running enclave as the test's ``nitro_enclave`` marker describes it.

    While the test runs, ``NITRO_EMU_HOME`` names the session's state dir, so ``nitro-emu``
    commands and :mod:`emulator.vsock.host` reach the enclave directly too.
    """
    from emulator.testing.handles import EnclaveSpec, EnclaveTestError

    marker = request.node.get_closest_marker(MARKER)
    where = f"@pytest.mark.{MARKER} on {request.node.nodeid}"
    if marker is None:
        pytest.fail(
            f"the nitro_enclave fixture needs a marker: @pytest.mark.{MARKER}(image=...) or "
            f"(dockerfile_dir=...) on {request.node.nodeid}",
            pytrace=False,
        )
    kwargs = dict(marker.kwargs)
    if isinstance(kwargs.get("dockerfile_dir"), (str, os.PathLike)):
        # Relative to the test module, so a test finds its enclave wherever pytest runs.
        kwargs["dockerfile_dir"] = Path(request.node.path).parent / kwargs["dockerfile_dir"]
    problem = None
    try:
        spec = EnclaveSpec.from_arguments(marker.args, kwargs, where=where)
        handle = nitro_enclave_factory.start(spec, name=request.node.name)
    except EnclaveTestError as error:
        problem = str(error)
    except Exception as error:  # noqa: BLE001 - e.g. a NitroCliError from run-enclave
        problem = f"{where}: the enclave did not start: {error}"
    if problem is not None:  # outside the except: no chained traceback in the report
        pytest.fail(problem, pytrace=False)
    request.node.stash.setdefault(_HANDLES, []).append(handle)
    monkeypatch.setenv("NITRO_EMU_HOME", str(nitro_enclave_factory.home))
    yield handle
    keep = request.config.getoption("--nitro-keep")
    reports = request.node.stash.get(_REPORTS, {})
    failed = any(report.failed for report in reports.values())
    if keep == "always" or (keep == "failed" and failed):
        if handle.is_running():
            _keep(request.config, handle)
            return
    handle.terminate()


def _keep(config: pytest.Config, handle: EnclaveHandle) -> None:
    """Record a kept enclave for the terminal summary (sent to the xdist controller too)."""
    line = (
        f"{handle.name}: cid {handle.cid}, id {handle.enclave_id}; stop it with "
        f"NITRO_EMU_HOME={handle.home} nitro-emu terminate-enclave --enclave-id {handle.enclave_id}"
    )
    config.stash[_KEPT].append((handle.enclave_id, line))
    workeroutput = getattr(config, "workeroutput", None)
    if workeroutput is not None:  # an xdist worker: the controller prints the summary
        workeroutput.setdefault("nitro_emu_kept", []).append(line)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    """xdist controller: collect the enclaves a worker kept."""
    lines = getattr(node, "workeroutput", {}).get("nitro_emu_kept", [])
    node.config.stash.setdefault(_KEPT, []).extend(("", line) for line in lines)


def pytest_runtest_teardown(item: pytest.Item) -> None:
    """The session's KMS keeps its keys between tests, never a test's injected faults."""
    kms = getattr(item, "funcargs", {}).get("nitro_kms")
    if kms is not None:
        kms.faults.clear()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    """Fail the test when one of its enclaves died while it ran, with the enclave's output."""
    try:
        result = yield
    except BaseException as error:
        dead = _dead_enclave(item)
        if dead is not None:
            raise dead.died_error("(it died during the test)") from error
        raise
    dead = _dead_enclave(item)
    if dead is not None:
        raise dead.died_error("(it died during the test)")
    return result


def _dead_enclave(item: pytest.Item) -> EnclaveHandle | None:
    for handle in item.stash.get(_HANDLES, []):
        if not handle.terminated and not handle.is_running():
            return handle
    return None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Remember each phase's report; attach the enclaves' output to a failed one."""
    report: pytest.TestReport = yield
    item.stash.setdefault(_REPORTS, {})[report.when] = report
    if report.failed:
        from emulator.testing.handles import tail

        for handle in item.stash.get(_HANDLES, []):
            report.sections.append(
                (f"nitro-emu enclave {handle.name} ({handle.enclave_id}) output", tail(handle.logs()))
            )
    return report


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    kept = config.stash.get(_KEPT, [])
    if not kept:
        return
    if getattr(config, "workeroutput", None) is not None:
        return  # an xdist worker: the controller prints them
    terminalreporter.section("nitro-emu: enclaves left running (--nitro-keep)")
    for _, line in kept:
        terminalreporter.write_line(line)
