"""Failovers, recovery times and fit outcomes of a run, folded from its event log (pure).

The metrics and the dashboard's failover timeline come from the replicated log, never from a
node's memory, so every node reports the same numbers for the same log. Events count only
when `replay` accepts them (raftfl/core/replay.py: a forged or unelected event is rejected).

* A **failover** is every `aggregator_elected` after the run's first, as the demo's summary
  (raftfl/core/invariants.py `failovers`) counts them.
* Its **cause** is how the previous term ended, as the log shows it when the election is
  folded: `handover` (its holder recorded `handover`), `step_down` (it recorded `step_down`:
  its lease lapsed, or it was fenced out), `shutdown` (it recorded `node_left`: Ctrl-C, node
  leave), else `lost` (killed, frozen or cut off: its lease ran out, or the others took over
  on evidence).
* The outage **began** at the event that ended the term; for a lost holder at the later of its
  last event (it was alive then) and the vacancy minus one lease TTL (a lease kept alive
  until the holder died runs out one TTL later at most). The demo measures from the kill,
  which only the lab knows; this bound is at most one keepalive interval (0.5 s) earlier.
* It **resumed** at the new term's first `round_started`; **recovery** is resumed − began.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from raftfl.core.events import AggregatorElected, FitResults, Handover, NodeLeft, RoundStarted, StepDown
from raftfl.core.replay import FLState, Logged, fold

CAUSES = ("handover", "step_down", "shutdown", "lost")

# The aggregator's screening (raftfl/flower/screen.py) says why it refused an update in one
# line; a metric label must come from a small fixed set, so each line is classed by its words.
REJECT_CLASSES: tuple[tuple[str, str], ...] = (
    ("unreadable update", "unreadable"),
    ("array records", "structure"),
    ("missing from", "structure"),
    ("unexpected array", "structure"),
    ("serialised as", "serialisation"),
    ("is not one numpy array", "serialisation"),
    ("header does not match", "serialisation"),
    ("has shape", "shape"),
    ("has dtype", "dtype"),
    ("non-finite", "non_finite"),
    ("is not finite", "non_finite"),
    ("num-examples", "num_examples"),
    ("update norm", "norm"),
)
REJECT_REASONS = tuple(dict.fromkeys(label for _, label in REJECT_CLASSES)) + ("other",)


def reject_reason(line: str) -> str:
    """The class of one refusal reason, for the `reason` label."""
    return next((label for words, label in REJECT_CLASSES if words in line), "other")


@dataclass(frozen=True)
class Failover:
    term: int  # the new term
    node: str  # its aggregator
    previous: str | None  # the aggregator before it
    cause: str  # one of CAUSES
    began: float | None  # epoch seconds: when the previous term stopped working
    vacant_since: float | None  # when the new aggregator saw the role vacant
    elected_at: float
    resumed_at: float | None = None  # the new term's first round_started

    @property
    def recovery_s(self) -> float | None:
        if self.began is None or self.resumed_at is None:
            return None
        return round(max(0.0, self.resumed_at - self.began), 3)

    def to_dict(self) -> dict[str, Any]:
        return {"term": self.term, "node": self.node, "previous": self.previous,
                "cause": self.cause, "began": self.began, "vacant_since": self.vacant_since,
                "elected_at": self.elected_at, "resumed_at": self.resumed_at,
                "recovery_s": self.recovery_s}


@dataclass
class RunStats:
    """One run's log folded so far; `add` continues it with the events that follow."""

    lease_ttl: float
    state: FLState = field(default_factory=FLState)
    failovers: list[Failover] = field(default_factory=list)
    fit_failures: int = 0  # failed fits, refused updates included
    rejected: dict[str, int] = field(default_factory=dict)  # reason class -> refused updates
    _last_ts: dict[int, float] = field(default_factory=dict)  # term -> its newest event's time
    _ended: dict[int, tuple[str, float]] = field(default_factory=dict)  # term -> (cause, when)

    def add(self, items: Iterable[Logged]) -> RunStats:
        for item in items:
            seen = len(self.state.rejected)
            fold(self.state, [item])
            if len(self.state.rejected) == seen:  # replay accepted it
                self._apply(item.event)
        return self

    def _apply(self, ev: Any) -> None:
        if ev.term:
            self._last_ts[ev.term] = max(ev.ts, self._last_ts.get(ev.term, ev.ts))
        match ev:
            case AggregatorElected() if len(self.state.elections) > 1:
                self.failovers.append(self._failover(ev, self.state.elections[-2]))
            case RoundStarted():
                self._resumed(ev.term, ev.ts)
            case FitResults():
                self.fit_failures += ev.failures
                for why in ev.rejected.values():
                    reason = reject_reason(why)
                    self.rejected[reason] = self.rejected.get(reason, 0) + 1
            case Handover():
                self._ended.setdefault(ev.term, ("handover", ev.ts))
            case StepDown():
                self._ended.setdefault(ev.term, ("step_down", ev.ts))
            case NodeLeft() if self.state.elections and self.state.elections[-1].node == ev.node:
                self._ended.setdefault(self.state.elections[-1].term, ("shutdown", ev.ts))

    def _failover(self, el: AggregatorElected, prev: AggregatorElected) -> Failover:
        cause, began = self._ended.get(prev.term, ("lost", None))
        if began is None:
            last = self._last_ts.get(prev.term)
            floor = el.vacant_since - self.lease_ttl if el.vacant_since is not None else None
            began = max((t for t in (last, floor) if t is not None), default=None)
        return Failover(term=el.term, node=el.node, previous=el.previous or prev.node,
                        cause=cause, began=began, vacant_since=el.vacant_since,
                        elected_at=el.ts)

    def _resumed(self, term: int, ts: float) -> None:
        for i, fo in enumerate(self.failovers):
            if fo.term == term and fo.resumed_at is None:
                self.failovers[i] = replace(fo, resumed_at=ts)


@dataclass(frozen=True)
class Totals:
    """What the counters say, summed over runs; every cause and reason is present (from 0)."""

    rounds_committed: int
    failovers: dict[str, int]  # cause -> failovers
    recoveries: tuple[float, ...]  # seconds, one per failover that resumed
    fit_failures: int
    rejected: dict[str, int]  # reason class -> refused updates


def totals(runs: Iterable[RunStats]) -> Totals:
    failovers, rejected = dict.fromkeys(CAUSES, 0), dict.fromkeys(REJECT_REASONS, 0)
    rounds = fits = 0
    recoveries: list[float] = []
    for stats in runs:
        rounds += stats.state.commits
        fits += stats.fit_failures
        for fo in stats.failovers:
            failovers[fo.cause] += 1
            if fo.recovery_s is not None:
                recoveries.append(fo.recovery_s)
        for reason, n in stats.rejected.items():
            rejected[reason] += n
    return Totals(rounds, failovers, tuple(recoveries), fits, rejected)
