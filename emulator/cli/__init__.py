"""The ``nitro-emu`` command: ``app`` parses, one module per command group does the work.

| module | commands |
|---|---|
| ``app`` | the parser, dispatch, error reporting |
| ``eif`` | build-enclave, describe-eif, pcr, prune-images |
| ``enclaves`` | run-enclave, describe-enclaves, terminate-enclave, console, explain |
| ``vsock`` | vsock connect / listen, vsock-forward |
| ``nsm`` | nsm serve |
| ``ca`` / ``attest`` / ``verify`` | the test CA, minting and verifying documents |
| ``shim`` | exec (run a parent program through the shim) |
| ``images`` | base-image |
"""

from __future__ import annotations

from emulator.cli.app import main

__all__ = ["main"]
