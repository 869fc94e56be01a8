"""Ranking aggregator candidates from replicated context: a pure, deterministic function.

Every node ranks with the same inputs (read at the same etcd revision) and the same weights,
so they all agree on who should take over without talking to each other.

    score = priority_w * priority
          - rtt_w * mean_rtt_ms            (no RTT yet: counted as `missing_rtt_ms`)
          + cpu_w * cpu_free               (0..1)
          + mem_w * min(mem_free_gb, 8)/8  (0..1)
          - stale_penalty     if the node has no sample newer than `fresh_s` before the newest
                              (its prober stalled: every node rewrites its sample at least
                              every `latency.refresh_for(fresh_s)`)
          - previous_penalty  if it held the role last time

`nofailover` nodes are never candidates. Ties break by node name.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from raftfl.core.latency import Sample, summarize
from raftfl.core.member_record import MemberInfo

RTT_WINDOW = 10  # samples per peer in a candidate's mean RTT


@dataclass(frozen=True)
class Weights:
    priority: float = 10.0
    rtt: float = 1.0
    cpu: float = 2.0
    mem: float = 1.0
    missing_rtt_ms: float = 50.0
    stale_penalty: float = 20.0
    previous_penalty: float = 100.0
    fresh_s: float = 90.0  # refreshes every 60 s: a 2 s probe cycle plus 28 s of clock skew


@dataclass(frozen=True)
class Candidate:
    node: str
    priority: float = 0.0
    nofailover: bool = False
    cpu_free: float = 0.0
    mem_free_mb: float = 0.0
    mean_rtt_ms: float | None = None
    last_sample_ts: float | None = None


@dataclass(frozen=True)
class Ranked:
    node: str
    score: float
    rtt_ms: float | None
    stale: bool
    previous: bool

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def score(c: Candidate, w: Weights, newest_ts: float | None, previous: str | None) -> Ranked:
    stale = c.last_sample_ts is None or (newest_ts is not None and newest_ts - c.last_sample_ts > w.fresh_s)
    rtt = c.mean_rtt_ms if c.mean_rtt_ms is not None else w.missing_rtt_ms
    value = (w.priority * c.priority - w.rtt * rtt + w.cpu * max(0.0, min(c.cpu_free, 1.0))
             + w.mem * min(c.mem_free_mb / 1024.0, 8.0) / 8.0
             - (w.stale_penalty if stale else 0.0)
             - (w.previous_penalty if c.node == previous else 0.0))
    return Ranked(c.node, round(value, 6), c.mean_rtt_ms, stale, c.node == previous)


def rank(candidates: list[Candidate], weights: Weights = Weights(),
         previous: str | None = None) -> list[Ranked]:
    """Best first. Scores are rounded so float noise cannot reorder equal inputs."""
    eligible = [c for c in candidates if not c.nofailover]
    newest = max((c.last_sample_ts for c in eligible if c.last_sample_ts), default=None)
    ranked = [score(c, weights, newest, previous) for c in eligible]
    return sorted(ranked, key=lambda r: (-r.score, r.node))


def candidates(members: dict[str, MemberInfo], samples: list[Sample],
               window: int = RTT_WINDOW) -> list[Candidate]:
    """Context of every live member, from replicated data only."""
    rtt = summarize(samples, set(members), window)
    return [
        Candidate(node=m.node, priority=m.priority, nofailover=m.nofailover,
                  cpu_free=m.cpu_free, mem_free_mb=m.mem_free_mb,
                  mean_rtt_ms=rtt[m.node].mean_ms if m.node in rtt else None,
                  last_sample_ts=rtt[m.node].last_ts if m.node in rtt else None)
        for m in members.values()
    ]
