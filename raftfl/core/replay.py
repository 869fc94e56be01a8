"""`replay(events) -> FLState`: the only way anyone learns where training stands.

A pure fold over the log in key order. It never trusts in-memory state, and it records
instead of hiding anything that would violate an invariant (a second commit of a round, a
commit from an older term, a broken hash chain), so the checker can report it.

Two rules make a hand-written event harmless. An event's `term` can never exceed the create
revision of its own key (terms are create revisions of the role key, and an event is written
after its term began), so a larger one is forged and rejected: accepted, it would make every
later real commit look stale. And the state-changing events an aggregator writes (commits,
fallbacks, completion) count only from a term whose `aggregator_elected` is in the log.
A third holds in a secured cluster, where every event is signed by its `node` (the reader
checks the signature: raftfl/etcd/eventlog.py): a signed event of term T counts only from
T's holder, the node of T's `aggregator_elected` (a member may sign as itself, never claim
another's term). A term older than the newest `WINDOW` elections is not checked.
Rejected events are recorded in `rejected`, never folded, never fatal.

`fold(state, more)` is the same fold continued from a state already folded over the events
before `more` (the event log's incremental view); `FLState.snapshot()` copies a state so a
later fold into the original cannot change what a reader was handed.

The state is bounded, so that it always fits in a snapshot (core/snapshot.py) and a restart
costs the snapshot and the events after it however long the run: per-event records are kept
for the last `WINDOW` only (`committed`, `commit_order`, `started`, `checkpoints`,
`elections`, `step_downs`, `fallbacks`), and the history older than that is summarised:
`committed_rounds` holds every committed round as ranges (enough to catch a second commit of
any round), `commits`, `starts` and `election_count` count. A resume needs only the newest
records (checkpoints are pruned to the last 3 rounds' models, node/recorder.py), and the
full history is in the log itself (`raftfl history`). Kept whole, because a reader
needs all of it: `exchanges` (an own-loop ServerApp is replayed from its first grid call,
flower/journal.py), `elected_terms` (one int per election) and the violation records.
"""

from __future__ import annotations

import bisect
import copy
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, fields, replace
from typing import Any

from raftfl.core.events import (
    AggregatorElected,
    CheckpointFallback,
    CheckpointSaved,
    Event,
    GridExchange,
    RoundCommitted,
    RoundStarted,
    RunCompleted,
    RunStarted,
    RunStopped,
    StepDown,
)


@dataclass(frozen=True)
class Logged:
    """An event with its place in the log: its sequence number and its key's create revision."""

    seq: int
    revision: int
    event: Event


WINDOW = 64  # per-event records kept for the newest this many (the module docstring)


@dataclass
class RoundSet:
    """A set of round numbers as sorted, disjoint, non-adjacent inclusive ranges: a run's
    committed rounds are one range (`1..top`) however many there are."""

    spans: list[tuple[int, int]] = field(default_factory=list)

    def __contains__(self, rnd: object) -> bool:
        if not isinstance(rnd, int):
            return False
        i = bisect.bisect_right(self.spans, (rnd, float("inf")))
        return i > 0 and self.spans[i - 1][0] <= rnd <= self.spans[i - 1][1]

    def __len__(self) -> int:
        return sum(hi - lo + 1 for lo, hi in self.spans)

    def __iter__(self) -> Iterator[int]:
        for lo, hi in self.spans:
            yield from range(lo, hi + 1)

    def __copy__(self) -> RoundSet:
        return RoundSet(list(self.spans))  # the spans are tuples: nothing else to copy

    @property
    def top(self) -> int:
        return self.spans[-1][1] if self.spans else 0

    def add(self, rnd: int) -> None:
        spans = self.spans
        if spans and spans[-1][1] == rnd - 1:  # the usual case: the next round
            spans[-1] = (spans[-1][0], rnd)
            return
        if rnd in self:
            return
        i = bisect.bisect_left(spans, (rnd, rnd))
        lo, hi = rnd, rnd
        if i > 0 and spans[i - 1][1] == rnd - 1:
            i -= 1
            lo = spans[i][0]
            del spans[i]
        if i < len(spans) and spans[i][0] == rnd + 1:
            hi = spans[i][1]
            del spans[i]
        spans.insert(i, (lo, hi))

    def drop_above(self, rnd: int) -> list[int]:
        """Remove every round above `rnd`; returns them, in order."""
        gone: list[int] = []
        while self.spans and self.spans[-1][1] > rnd:
            lo, hi = self.spans.pop()
            if lo <= rnd:
                self.spans.append((lo, rnd))
                lo = rnd + 1
            gone[:0] = range(lo, hi + 1)
        return gone

    def valid(self) -> bool:
        """Sorted, disjoint, non-adjacent ranges of positive rounds (a restored snapshot's)."""
        prev = -1
        for lo, hi in self.spans:
            if not (1 <= lo <= hi and lo > prev + 1):
                return False
            prev = hi
        return True


@dataclass
class FLState:
    rounds: int | None = None
    initial_model: str | None = None
    initial_state: str = ""  # the ServerApp's durable state recorded with round 0
    # The newest WINDOW committed rounds' records; every committed round: committed_rounds.
    committed: dict[int, RoundCommitted] = field(default_factory=dict)
    committed_rounds: RoundSet = field(default_factory=RoundSet)
    commit_order: list[int] = field(default_factory=list)  # the last WINDOW commits
    commits: int = 0  # every commit folded (a round redone after a fallback counts again)
    started: dict[int, int] = field(default_factory=dict)  # round -> times started (WINDOW rounds)
    starts: int = 0
    checkpoints: dict[str, CheckpointSaved] = field(default_factory=dict)  # the last WINDOW
    elections: list[AggregatorElected] = field(default_factory=list)  # the last WINDOW
    election_count: int = 0
    elected_terms: set[int] = field(default_factory=set)  # every one: rejections need them
    step_downs: list[StepDown] = field(default_factory=list)  # the last WINDOW
    fallbacks: list[CheckpointFallback] = field(default_factory=list)  # the last WINDOW
    completed: RunCompleted | None = None
    exchanges: dict[int, GridExchange] = field(default_factory=dict)  # call -> its record
    stopped: RunStopped | None = None  # an operator's `raftfl run stop`
    max_term: int = 0
    duplicate_commits: list[int] = field(default_factory=list)  # seqs
    stale_commits: list[int] = field(default_factory=list)  # seqs
    chain_breaks: list[int] = field(default_factory=list)  # rounds
    rolled_back: list[int] = field(default_factory=list)  # rounds undone by a fallback
    rejected: list[tuple[int, str]] = field(default_factory=list)  # (seq, why): never folded
    last_seq: int = 0
    events: int = 0

    @property
    def last_committed_round(self) -> int:
        return self.committed_rounds.top

    def holder(self, term: int) -> str | None:
        """The node that won `term` (its newest `aggregator_elected`), None if not recorded
        in the window."""
        return next((e.node for e in reversed(self.elections) if e.term == term), None)

    @property
    def last_model(self) -> str | None:
        """Hash of the newest committed global model (the initial model before round 1).
        Its record is in the window unless a fallback undid more than WINDOW rounds (the
        models of rounds that old are pruned, so no fallback reaches them): None then."""
        top = self.last_committed_round
        if top:
            newest = self.committed.get(top)
            return newest.model_sha256 if newest is not None else None
        return self.initial_model

    @property
    def next_round(self) -> int:
        return self.last_committed_round + 1

    @property
    def aggregator(self) -> str | None:
        return self.elections[-1].node if self.elections else None

    @property
    def done(self) -> bool:
        return self.completed is not None

    @property
    def finished(self) -> bool:
        """Completed or stopped: the run will not train again."""
        return self.completed is not None or self.stopped is not None

    def snapshot(self) -> FLState:
        """A copy with containers of its own (the events in them are immutable)."""
        return replace(self, **{f.name: copy.copy(getattr(self, f.name)) for f in fields(self)
                                if isinstance(getattr(self, f.name), dict | list | set | RoundSet)})


def replay(log: Iterable[Logged]) -> FLState:
    return fold(FLState(), log)


def fold(state: FLState, log: Iterable[Logged]) -> FLState:
    """Continue `state` (folded over the events before `log`) with `log`, in place; returns it.
    `fold(replay(a), b)` equals `replay(a + b)` when `b` follows `a` in log order."""
    for item in log:
        _apply(state, item)
    return state


# Written only by an aggregator, under its term: they count only from an elected term.
_NEEDS_ELECTION = (RoundCommitted, CheckpointFallback, RunCompleted)


def _rejection(state: FLState, item: Logged) -> str | None:
    ev = item.event
    if ev.term > item.revision:
        return f"{ev.type} claims term {ev.term}, later than its own creation (revision {item.revision})"
    if isinstance(ev, AggregatorElected) and not ev.term:
        return "aggregator_elected without a term"
    if isinstance(ev, _NEEDS_ELECTION) and ev.term not in state.elected_terms:
        return f"{ev.type} from term {ev.term}, which has no aggregator_elected"
    if ev.sig and ev.term:
        holder = state.holder(ev.term)
        if holder is not None and holder != ev.node:
            return f"{ev.type}: signer {ev.node} does not hold term {ev.term} ({holder} does)"
    return None


def _apply(state: FLState, item: Logged) -> None:
    ev = item.event
    state.events += 1
    state.last_seq = max(state.last_seq, item.seq)
    reason = _rejection(state, item)
    if reason is not None:
        state.rejected.append((item.seq, reason))
        return
    if ev.term and ev.term < state.max_term and isinstance(ev, RoundCommitted):
        state.stale_commits.append(item.seq)
        return
    state.max_term = max(state.max_term, ev.term)
    match ev:
        case RunStarted():
            if state.rounds is None:
                state.rounds, state.initial_model = ev.rounds, ev.initial_model
                state.initial_state = ev.state_sha256
        case AggregatorElected():
            _append(state.elections, ev)
            state.election_count += 1
            state.elected_terms.add(ev.term)
        case StepDown():
            _append(state.step_downs, ev)
        case RoundStarted():
            _put(state.started, ev.round, state.started.get(ev.round, 0) + 1)
            state.starts += 1
        case CheckpointSaved():
            _put(state.checkpoints, ev.sha256, ev)
        case CheckpointFallback():
            # The newest checkpoint is unreadable, so the rounds after the fallback are
            # undone and will be committed again from the fallback model.
            _append(state.fallbacks, ev)
            for rnd in state.committed_rounds.drop_above(ev.fallback_round):
                state.committed.pop(rnd, None)
                state.rolled_back.append(rnd)
        case RoundCommitted():
            if ev.round in state.committed_rounds:
                state.duplicate_commits.append(item.seq)
                return
            expected_base = state.last_model if ev.round == state.next_round else None
            if ev.round != state.next_round or ev.base_model != expected_base:
                state.chain_breaks.append(ev.round)
            _put(state.committed, ev.round, ev)
            state.committed_rounds.add(ev.round)
            _append(state.commit_order, ev.round)
            state.commits += 1
        case GridExchange():
            # A later term's call replaces an earlier one's: the app diverged from the record
            # there, and the new term's path is the one to replay (flower/journal.py).
            known = state.exchanges.get(ev.call)
            if known is None or known.term < ev.term:
                state.exchanges[ev.call] = ev
        case RunCompleted():
            if state.completed is None:
                state.completed = ev
        case RunStopped():
            if state.stopped is None:
                state.stopped = ev


def _append(window: list[Any], item: Any) -> None:
    """Append to a list kept to its newest WINDOW items."""
    window.append(item)
    if len(window) > WINDOW:
        del window[0]


def _put(window: dict[Any, Any], key: Any, value: Any) -> None:
    """Set in a dict kept to its WINDOW most recently added keys (in insertion order, which
    a snapshot keeps)."""
    window[key] = value
    if len(window) > WINDOW:
        del window[next(iter(window))]
