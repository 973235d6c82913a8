"""The LD_PRELOAD shim: ``nitro_emu_shim.c`` (``/dev/nsm`` and ``AF_VSOCK`` for unmodified
programs) and ``build`` (compiles it once per source hash and hands it to enclaves)."""
