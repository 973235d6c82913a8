"""What every bench script prints about the machine, and the percentile they report.

The bench scripts are run as ``python bench/<name>.py`` from the repository root, so this
directory is on ``sys.path`` (Python puts a script's directory there) and they import this
module as ``import _machine``.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
from collections.abc import Sequence


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo``; ``platform.processor()`` elsewhere."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine(packages: Sequence[str] = (), *, system: bool = False, load: bool = False) -> str:
    """CPU model, cores and Python version, then the OS, package versions and load if asked.

    Args:
        packages: distributions whose installed versions the figures depend on.
        system: add the kernel name and release.
        load: add the 1, 5 and 15 minute load averages (other tenants skew the figures).
    """
    parts = [cpu_model(), f"{os.cpu_count()} cores", f"Python {platform.python_version()}"]
    if system:
        parts.append(f"{platform.system()} {platform.release()}")
    parts.extend(f"{name} {importlib.metadata.version(name)}" for name in packages)
    if load and hasattr(os, "getloadavg"):
        parts.append("load average " + " ".join(f"{value:.2f}" for value in os.getloadavg()))
    return ", ".join(parts)


def percentile(values: Sequence[float], fraction: float) -> float:
    """The value below which ``fraction`` of ``values`` lie (nearest rank, no interpolation)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]
