"""Where nitro-emu keeps its state, read lazily from ``NITRO_EMU_*`` variables.

Layout under the state directory (``$NITRO_EMU_HOME``, default ``$XDG_DATA_HOME/nitro-emu``,
that is ``~/.local/share/nitro-emu``)::

    ca/                     the test CA (keys 0600, directory 0700); never mounted anywhere
    enclaves/<enclave-id>/  one running enclave: enclave.json, supervisor log
    run/<cid>/              the enclave's runtime dir, mounted at /run/nitro-emu in it:
                            nsm.sock, vsock/<port> (enclave listeners), parent/ (mount point)
    run/parent/             the parent's VSOCK listeners, <port> each; mounted read-only
                            at /run/nitro-emu/parent in every enclave
    logs/                   one log per finished enclave: its last output and why it ended
    cache/                  build caches (the LD_PRELOAD shim and init by source hash, EIF
                            summaries by path and stat); ``$NITRO_EMU_CACHE_DIR`` puts them
                            elsewhere, e.g. one dir shared by a session's xdist workers

Socket paths stay short (``run/16/vsock/5000``) because ``sun_path`` holds 107 bytes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

ENV_HOME = "NITRO_EMU_HOME"
ENV_CACHE = "NITRO_EMU_CACHE_DIR"


def _default_home() -> Path:
    data_home = os.environ.get("XDG_DATA_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "share"
    )
    return Path(data_home) / "nitro-emu"


@dataclass(frozen=True)
class Settings:
    """Paths of one nitro-emu state directory. Nothing is created until asked."""

    home: Path
    #: Where the build caches live; None: ``<home>/cache``.
    cache: Path | None = None

    @classmethod
    def from_env(cls) -> Settings:
        raw = os.environ.get(ENV_HOME)
        cache = os.environ.get(ENV_CACHE)
        return cls(
            home=Path(raw).expanduser().absolute() if raw else _default_home(),
            cache=Path(cache).expanduser().absolute() if cache else None,
        )

    @property
    def ca_dir(self) -> Path:
        return self.home / "ca"

    @property
    def enclaves_dir(self) -> Path:
        return self.home / "enclaves"

    def enclave_dir(self, enclave_id: str) -> Path:
        return self.enclaves_dir / enclave_id

    @property
    def run_root(self) -> Path:
        return self.home / "run"

    def run_dir(self, cid: int) -> Path:
        """The runtime dir of the enclave with this CID (``/run/nitro-emu`` inside it)."""
        return self.run_root / str(cid)

    @property
    def parent_dir(self) -> Path:
        """Where the parent's VSOCK listeners live (CID 3)."""
        return self.run_root / "parent"

    @property
    def logs_dir(self) -> Path:
        return self.home / "logs"

    @property
    def cache_dir(self) -> Path:
        """Content-addressed build caches, safe to share between state dirs."""
        return self.cache if self.cache is not None else self.home / "cache"

    def ensure_home(self) -> Path:
        """Create the state directory (0700) if needed and return it."""
        self.home.mkdir(mode=0o700, parents=True, exist_ok=True)
        return self.home


def get_settings() -> Settings:
    """The settings in force now (re-read each call, so tests can change the environment)."""
    return Settings.from_env()
