"""``python -m emulator.demo``: the confidential-service demo (``make demo``)."""

from __future__ import annotations

from emulator.demo.confidential_service import main

raise SystemExit(main())
