"""`replay(events) -> FLState`: the only way anyone learns where training stands.

A pure fold over the log in key order. It never trusts in-memory state, and it records
instead of hiding anything that would violate an invariant (a second commit of a round, a
commit from an older term, a broken hash chain), so the checker can report it.

Two rules make a hand-written event harmless. An event's `term` can never exceed the create
revision of its own key (terms are create revisions of the role key, and an event is written
after its term began), so a larger one is forged and rejected: accepted, it would make every
later real commit look stale. And the state-changing events an aggregator writes (commits,
fallbacks, completion) count only from a term whose `aggregator_elected` is in the log.
Rejected events are recorded in `rejected`, never folded, never fatal.

`fold(state, more)` is the same fold continued from a state already folded over the events
before `more` (the event log's incremental view); `FLState.snapshot()` copies a state so a
later fold into the original cannot change what a reader was handed.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass, field, fields, replace

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


@dataclass
class FLState:
    rounds: int | None = None
    initial_model: str | None = None
    initial_state: str = ""  # the ServerApp's durable state recorded with round 0
    committed: dict[int, RoundCommitted] = field(default_factory=dict)
    commit_order: list[int] = field(default_factory=list)
    started: dict[int, int] = field(default_factory=dict)  # round -> times started
    checkpoints: dict[str, CheckpointSaved] = field(default_factory=dict)
    elections: list[AggregatorElected] = field(default_factory=list)
    elected_terms: set[int] = field(default_factory=set)
    step_downs: list[StepDown] = field(default_factory=list)
    fallbacks: list[CheckpointFallback] = field(default_factory=list)
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
    # max(committed), kept by the fold: computed per commit, it made a fold quadratic.
    top_round: int = field(default=0, repr=False, compare=False)

    @property
    def last_committed_round(self) -> int:
        return self.top_round

    @property
    def last_model(self) -> str | None:
        """Hash of the newest committed global model (the initial model before round 1)."""
        if self.committed:
            return self.committed[self.last_committed_round].model_sha256
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
                                if isinstance(getattr(self, f.name), dict | list | set)})


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
            state.elections.append(ev)
            state.elected_terms.add(ev.term)
        case StepDown():
            state.step_downs.append(ev)
        case RoundStarted():
            state.started[ev.round] = state.started.get(ev.round, 0) + 1
        case CheckpointSaved():
            state.checkpoints[ev.sha256] = ev
        case CheckpointFallback():
            # The newest checkpoint is unreadable, so the rounds after the fallback are
            # undone and will be committed again from the fallback model.
            state.fallbacks.append(ev)
            for rnd in sorted(r for r in state.committed if r > ev.fallback_round):
                del state.committed[rnd]
                state.rolled_back.append(rnd)
            state.top_round = max(state.committed, default=0)
        case RoundCommitted():
            if ev.round in state.committed:
                state.duplicate_commits.append(item.seq)
                return
            expected_base = state.last_model if ev.round == state.next_round else None
            if ev.round != state.next_round or ev.base_model != expected_base:
                state.chain_breaks.append(ev.round)
            state.committed[ev.round] = ev
            state.top_round = max(state.top_round, ev.round)
            state.commit_order.append(ev.round)
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
