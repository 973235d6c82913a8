"""Deprecated path, kept for this release: the plugin is :mod:`emulator.testing.pytest_plugin`.

pytest loads it through the ``nitro_emu`` entry point, so nothing needs this module; names
imported from here (fixtures, helpers) are forwarded. It defines no hooks itself, so naming it
with ``-p`` does not register the plugin twice.
"""

from __future__ import annotations

import importlib
from typing import Any


def __getattr__(name: str) -> Any:
    return getattr(importlib.import_module("emulator.testing.pytest_plugin"), name)
