"""Where an enclave's sockets live: bind-mounted host dirs, or a volume relayed by a companion."""
