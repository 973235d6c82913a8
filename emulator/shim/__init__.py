"""/dev/nsm and AF_VSOCK for unmodified programs, two ways: the LD_PRELOAD shim
(``nitro_emu_shim.c``, built and handed to enclaves by ``build``) for programs that call libc,
and the seccomp syscall interceptor (``nitro_emu_intercept.c``, built and put in front of the
enclave's entrypoint by ``intercept``) for static binaries, Go and raw system calls."""
