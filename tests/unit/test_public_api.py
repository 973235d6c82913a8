"""The public surface of each package, and the promise that enclave-side code stays light."""

from __future__ import annotations

import subprocess
import sys

import pytest

import importlib

import ca
import emulator
import fake_nsm

ROOMS = ["emulator.eif", "emulator.enclave", "emulator.engine", "emulator.kms", "emulator.testing", "emulator.vsock"]


@pytest.mark.parametrize("name", ["ca", "emulator", "fake_nsm", *ROOMS])
def test_all_is_sorted_and_every_name_resolves(name: str) -> None:
    package = importlib.import_module(name)
    assert list(package.__all__) == sorted(package.__all__)
    for attribute in package.__all__:
        assert getattr(package, attribute) is not None, attribute


@pytest.mark.parametrize(("package", "module"), [("emulator.vsock", "emulator.vsock.host"),
                                                 ("emulator.testing", "emulator.testing.handles")])
def test_lazy_packages_export_exactly_their_modules_api(package: str, module: str) -> None:
    """The lazy ``__init__`` lists the names without importing the module: they must agree."""
    assert sorted(importlib.import_module(package).__all__) == sorted(importlib.import_module(module).__all__)


def test_unknown_names_raise_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        fake_nsm.nope  # noqa: B018
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        emulator.nope  # noqa: B018


@pytest.mark.parametrize("module", ["fake_nsm.client", "emulator.vsock.enclave"])
def test_enclave_side_modules_import_only_stdlib_and_cbor2(module: str) -> None:
    """Inside an enclave image only Python and cbor2 exist: nothing heavier may load."""
    heavy = ("cryptography", "pycose", "docker", "requests", "urllib3")
    code = (
        f"import sys, {module}\n"
        f"bad = [m for m in sys.modules if m.split('.')[0] in {heavy!r}]\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "", f"{module} pulled in {result.stdout.strip()}"
