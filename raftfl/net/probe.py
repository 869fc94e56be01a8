"""RTT probes to peers: ICMP via ping3 where allowed, else a TCP connect round trip.

What the samples mean, and when one is worth writing, is pure (raftfl/core/latency.py).
"""

from __future__ import annotations

import logging
import socket
import time

log = logging.getLogger(__name__)


class Prober:
    """Measures RTT to peers. `extra_ms` is added to every RTT measured (the lab uses it to make
    one loopback node look far away); 0 outside tests."""

    def __init__(self, timeout: float = 1.0, extra_ms: float = 0.0):
        self.timeout = timeout
        self.method: str | None = None
        self.extra_ms = extra_ms

    def _icmp_allowed(self) -> bool:
        if self.method is None:
            import ping3  # lazy: ping3 opens raw sockets, and only the prober needs it

            try:
                ok = ping3.ping("127.0.0.1", timeout=self.timeout) not in (None, False)
            except (PermissionError, OSError):
                ok = False
            self.method = "icmp" if ok else "tcp"
            if not ok:
                log.warning("ICMP ping not permitted (needs root or net.ipv4.ping_group_range); "
                            "measuring latency with TCP connect round trips instead")
        return self.method == "icmp"

    def probe(self, host: str, tcp_port: int) -> float | None:
        """One RTT in ms, or None when the peer did not answer in time."""
        rtt = self._icmp(host) if self._icmp_allowed() else self._tcp(host, tcp_port)
        return None if rtt is None else rtt + self.extra_ms

    def _icmp(self, host: str) -> float | None:
        import ping3

        try:
            rtt = ping3.ping(host, timeout=self.timeout, unit="ms")
        except OSError:
            return None
        return float(rtt) if rtt not in (None, False) else None

    def _tcp(self, host: str, port: int) -> float | None:
        start = time.perf_counter()
        try:
            with socket.create_connection((host, port), timeout=self.timeout):
                return (time.perf_counter() - start) * 1000.0
        except OSError:
            return None
