"""The network edge: name resolution, port checks and RTT probes (sockets live here, not in core)."""
