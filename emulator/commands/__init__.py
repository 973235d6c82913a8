"""One module per command group of ``nitro-emu``; see :mod:`emulator.cli`."""
