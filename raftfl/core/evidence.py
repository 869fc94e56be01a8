"""Evidence that the aggregator's host is gone, so the role can be freed before its lease runs out.

A crash leaves evidence long before a lease expires: the dead node's etcd member and its
Flower endpoint refuse connections within milliseconds. A node that follows an aggregator
probes both; `observe` folds the probes into `Evidence` (pure). The rule:

* **gone** (local evidence): both endpoints failed in every probe of a streak of at least
  `REFUSED_STREAK` probes that were all *refused* (the host answers, nothing listens), or of
  at least `evidence_s` seconds (half the lease TTL: raftfl/node/options.py) of any
  failure (a silent host, or a partition);
* **confirmed**: more than half of the other live members (by their member records, the
  holder excluded) have published the same suspicion for the same term.

Then one node deletes the role key guarded by its create revision (the term), and the
election starts at once. A frozen (SIGSTOP) aggregator is *not* gone by this rule: its
kernel still accepts connections, so its lease decides, as before. A false positive costs one
spurious failover and never a lost or doubled round: every aggregator write is fenced on the
term, so a deposed aggregator that is in fact alive cannot commit and steps down.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

REFUSED_STREAK = 3


class Probe(Enum):
    OK = "ok"
    REFUSED = "refused"  # connection refused: the host is up, nothing listens
    FAILED = "failed"  # timeout, unreachable: the host (or the path to it) is silent


@dataclass(frozen=True)
class Evidence:
    term: int
    holder: str
    refused: int = 0  # probes in a row where every endpoint refused
    failed: int = 0  # probes in a row where every endpoint failed either way
    since: float | None = None  # monotonic time of the first probe of the failing streak


def fold(ev: Evidence, probes: list[Probe], now: float) -> Evidence:
    """One probe round of all the holder's endpoints, folded into the evidence so far."""
    if not probes or any(p is Probe.OK for p in probes):
        return Evidence(ev.term, ev.holder)
    refused = ev.refused + 1 if all(p is Probe.REFUSED for p in probes) else 0
    return Evidence(ev.term, ev.holder, refused, ev.failed + 1,
                    ev.since if ev.since is not None else now)


def gone(ev: Evidence, now: float, evidence_s: float) -> bool:
    if ev.refused >= REFUSED_STREAK:
        return True
    return ev.since is not None and now - ev.since >= evidence_s


def confirmed(suspecting: frozenset[str], members: frozenset[str], holder: str) -> bool:
    """More than half of the other live members suspect the holder."""
    others = members - {holder}
    return bool(others) and 2 * len(suspecting & others) > len(others)


def rank_step(max_rtt_ms: float | None, cap: float, floor: float = 0.2) -> float:
    """How long a rank waits for the one above it: long enough to see its campaign arrive
    (a few round trips through etcd), never longer than the configured `--rank-step`."""
    if max_rtt_ms is None:
        return cap
    return min(cap, max(floor, 3 * max_rtt_ms / 1000 + 0.1))
