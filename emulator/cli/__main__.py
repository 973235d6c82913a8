"""``python -m emulator.cli``: the same as the ``nitro-emu`` command."""

from __future__ import annotations

from emulator.cli.app import main

raise SystemExit(main())
