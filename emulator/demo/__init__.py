"""The demo: the confidential service end to end (``python -m emulator.demo``), and the same
as a compose stack (``python -m emulator.demo.compose``)."""
