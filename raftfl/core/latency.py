"""Latency samples and the sliding-window mean the election ranks by (the probes that
measure them are the network edge's: raftfl/net/probe.py).

Each node probes every live peer every probe cycle and appends a sample to its own stream
(`latency/<node>/<seq>`), attached to its lease, so a departed node's samples vanish with it.
Unreachable peers are recorded as `null`, never as 0 ms.

A sample goes through Raft to every voter, so one per cycle from every node was most of the
Raft traffic of a round once models moved out of etcd (3 nodes idle: 7.3 of 12.9 kB/s). A
cycle whose RTTs match the last written sample (`worth_writing`) writes nothing, but a sample
is rewritten at least every `refresh_for(fresh_s)`: two thirds of the ranking's `fresh_s`,
so a node that measured nothing new is not marked stale even with a slow probe cycle (2 s)
and several seconds of clock skew between hosts. "Match" is judged on what the ranking
reads, the mean over the reachable peers: one peer's RTT spiking on a busy host moved the
score by a fraction of a point but wrote a sample (16 nodes at load 12: a sample every 2 s
from every node, 62% of the Raft bytes of a round). The refresh only proves that the
writer's prober still runs (a dead, frozen or cut-off node's samples die with its lease):
with `fresh_s` 10 s, refreshes every 7 s were 16 nodes' largest Raft cost, hence 90 s: a
refresh a minute (a sample cost 3.8 kB of Raft traffic at 5 voters; an idle 16-node cluster
sent 4.7 kB/s at a refresh every 30 s, of which 2.7 kB/s were Raft heartbeats).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

from raftfl.core.records import MalformedRecord, Record, from_fields, loads_bounded, require

MAX_RTT_MS = 600_000.0
REFRESH_SHARE = 2 / 3  # of the ranking's fresh_s: the longest a node goes without a sample
CHANGE_RATIO = 0.25  # a mean RTT this much off the written one is news ...
CHANGE_MIN_MS = 5.0  # ... and moved by this much (5 points of score; LAN jitter is not news)


def refresh_for(fresh_s: float) -> float:
    """The longest a node goes without writing a sample, when the ranking calls a node stale
    whose newest sample is `fresh_s` older than the newest of all."""
    return fresh_s * REFRESH_SHARE


def worth_writing(last: dict[str, float | None] | None, last_ts: float,
                  rtts: dict[str, float | None], now: float, refresh_s: float,
                  previous: dict[str, float | None] | None = None) -> bool:
    """Pure: does this cycle's `rtts` say something the last written sample does not? A peer
    gained, or turned unreachable or reachable, is news at once. A peer gone is not: the
    ranking reads only live peers' RTTs, and a node whose lease lapsed and came back is in
    the written sample still (16 nodes at load 12: every lost lease made the other 15 write
    twice, 123 of 186 samples). RTTs are news only when their mean over the peers both
    measured (the score: one point per ms) moved, so one peer's jitter is not, and, given
    the `previous` cycle's RTTs, only when that cycle's mean had moved too: a busy host's
    one-cycle stall is not news, a lasting shift is written one cycle later (16 nodes at
    load 12: half of the samples were such news). A sample `refresh_s` old is due anyway."""
    if last is None or now - last_ts >= refresh_s or not rtts.keys() <= last.keys():
        return True
    if any((rtt is None) != (last[peer] is None) for peer, rtt in rtts.items()):
        return True
    return _moved(last, rtts) and (previous is None or _moved(last, previous))


def _moved(last: dict[str, float | None], rtts: dict[str, float | None]) -> bool:
    common = [peer for peer in rtts if peer in last]
    old, new = _mean(last[p] for p in common), _mean(rtts[p] for p in common)
    if old is None or new is None:
        return False
    return abs(new - old) >= max(CHANGE_MIN_MS, CHANGE_RATIO * old)


def _mean(rtts: Iterable[float | None]) -> float | None:
    values = [v for v in rtts if v is not None]
    return sum(values) / len(values) if values else None


@dataclass(frozen=True)
class Sample(Record):
    """One probe cycle of one node, stored at `latency/<node>/<seq>` (the key holds the seq)."""

    KIND: ClassVar[str] = "latency sample"

    node: str
    seq: int
    ts: float
    rtt_ms: dict[str, float | None]  # peer -> RTT, None = unreachable
    method: str | None  # "icmp" or "tcp"; None before the first probe

    def check(self) -> None:
        require(self.node != "", "no node name")
        require(self.seq >= 0, f"seq {self.seq} is negative")
        require(math.isfinite(self.ts), f"timestamp {self.ts} is not finite")
        for peer, rtt in self.rtt_ms.items():
            # A negative or absurd RTT would rank its writer first: refuse it.
            require(rtt is None or 0.0 <= rtt <= MAX_RTT_MS, f"RTT to {peer} of {rtt} ms")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        del out["seq"]
        return out

    @classmethod
    def from_json(cls, raw: bytes | str, seq: int = 0) -> Sample:  # type: ignore[override]
        """Decode the value stored under sequence number `seq` of the writer's stream."""
        try:
            obj = loads_bounded(raw, cls.MAX_BYTES)
        except MalformedRecord as exc:
            raise MalformedRecord(f"{cls.KIND}: {exc}") from exc
        if not isinstance(obj, dict):
            raise MalformedRecord(f"{cls.KIND}: not a JSON object")
        return from_fields(cls, {**obj, "seq": seq}, cls.KIND)


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
        out[node] = RttSummary(_mean(values), len(recent), unreachable, recent[-1].ts if recent else None)
    return out
