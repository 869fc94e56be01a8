"""Latency probing and the sliding-window mean the election ranks by.

Each node probes every live peer and appends one sample per probe cycle to its own stream
(`latency/<node>/<seq>`), attached to its lease, so a departed node's samples vanish with it.
Unreachable peers are recorded as `null`, never as 0 ms.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

log = logging.getLogger(__name__)

TEST_EXTRA_RTT_ENV = "RAFTFL_TEST_EXTRA_RTT_MS"


@dataclass(frozen=True)
class Sample:
    node: str
    seq: int
    ts: float
    rtt_ms: dict[str, float | None]  # peer -> RTT, None = unreachable
    method: str


@dataclass(frozen=True)
class RttSummary:
    mean_ms: float | None  # None when no peer answered in the window
    samples: int
    unreachable: int
    last_ts: float | None


def summarize(samples: Iterable[Sample], live: set[str], window: int) -> dict[str, RttSummary]:
    """Per node, mean RTT over its last `window` samples, to peers that are still live.

    Pure: every node calls it on the same replicated samples and gets the same numbers.
    """
    by_node: dict[str, list[Sample]] = {}
    for s in samples:
        by_node.setdefault(s.node, []).append(s)
    out: dict[str, RttSummary] = {}
    for node, items in by_node.items():
        recent = sorted(items, key=lambda s: s.seq)[-window:]
        values: list[float] = []
        unreachable = 0
        for s in recent:
            for peer, rtt in s.rtt_ms.items():
                if peer == node or peer not in live:
                    continue
                if rtt is None:
                    unreachable += 1
                else:
                    values.append(rtt)
        mean = sum(values) / len(values) if values else None
        out[node] = RttSummary(mean, len(recent), unreachable, recent[-1].ts if recent else None)
    return out


class Prober:
    """Measures RTT to peers: ICMP via ping3 where allowed, else a TCP connect round trip."""

    def __init__(self, timeout: float = 1.0):
        self.timeout = timeout
        self.method: str | None = None
        self.extra_ms = _test_extra_rtt()

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


def _test_extra_rtt() -> float:
    """TEST ONLY: RAFTFL_TEST_EXTRA_RTT_MS adds a fixed delay to every RTT this node measures.

    On loopback all RTTs are equal, so tests use it to make one node look far away.
    """
    raw = os.environ.get(TEST_EXTRA_RTT_ENV, "")
    try:
        return float(raw) if raw else 0.0
    except ValueError:
        log.warning("ignoring %s=%r: not a number", TEST_EXTRA_RTT_ENV, raw)
        return 0.0


def parse_sample(node: str, seq: int, obj: Mapping[str, object]) -> Sample:
    rtts = obj.get("rtt_ms")
    if not isinstance(rtts, dict):
        raise ValueError("rtt_ms missing")
    return Sample(node, seq, float(obj.get("ts", 0.0)),  # type: ignore[arg-type]
                  {str(k): (None if v is None else float(v)) for k, v in rtts.items()},
                  str(obj.get("method", "?")))
