"""Typed FL events. Each is a frozen dataclass stored as one JSON value under `events/<seq>`.

Every event carries the envelope `v` (schema version), `type`, `id` (unique, so a retried
append that actually landed is recognised instead of written twice), `ts` (epoch seconds),
`node` (writer) and `term` (the aggregator term it was written under; 0 when unfenced). In a
secured cluster it also carries `sig`, its writer's signature over its key and the rest of the
value (raftfl/core/seal.py); an unsigned event stores no `sig` field at all, so the schema
version is unchanged and older events still decode.
Decoding (`Event.from_json`, also `decode`) checks every field's type and range, so a
hand-written value is skipped as malformed instead of breaking the fold.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar

from raftfl.core.records import MalformedRecord, Record, from_fields, loads_bounded, require
from raftfl.core.seal import SIG_CHARS

SCHEMA_VERSION = 1
MAX_NAME = 255  # a node name (host:port)
MAX_REJECTED = 32  # rejected updates named in one fit_results (the rest are only counted)
MAX_REASON = 300  # characters of one rejection's reason


class MalformedEvent(MalformedRecord):
    """A value under the event prefix that is not a raftfl event of a known schema."""


# Counts and positions: replay does arithmetic or ordering on them.
_NON_NEGATIVE = ("round", "rounds", "term", "results", "failures", "num_examples", "size",
                 "chunks", "fallback_round", "clients", "rank", "revision")


@dataclass(frozen=True, kw_only=True)
class Event(Record):
    type: ClassVar[str] = "event"
    KIND: ClassVar[str] = "event"
    node: str
    term: int = 0
    ts: float = field(default_factory=time.time)
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    v: int = SCHEMA_VERSION
    sig: str = ""  # the writer's signature (core/seal.py), in a secured cluster

    def check(self) -> None:
        require(0 < len(self.node) <= MAX_NAME, f"node name of {len(self.node)} characters")
        require(len(self.sig) <= SIG_CHARS, f"a signature of {len(self.sig)} characters")
        for f in fields(self):
            if f.name in _NON_NEGATIVE:
                value = getattr(self, f.name)
                require(value >= 0, f"{f.name} {value} is negative")

    def to_dict(self) -> dict[str, Any]:
        out = {"type": self.type, **asdict(self)}
        if not self.sig:
            del out["sig"]
        return out

    @classmethod
    def from_json(cls, raw: bytes | str) -> Event:  # type: ignore[override]
        """Parse one stored value into its event type, or raise MalformedEvent saying why."""
        try:
            obj = loads_bounded(raw, cls.MAX_BYTES)
            if not isinstance(obj, dict):
                raise MalformedEvent("not a JSON object")
            if type(obj.get("v")) is not int or obj["v"] != SCHEMA_VERSION:
                raise MalformedEvent(f"schema version {_short(obj.get('v'))}, expected {SCHEMA_VERSION}")
            kind = EVENT_TYPES.get(obj["type"]) if isinstance(obj.get("type"), str) else None
            if kind is None:
                raise MalformedEvent(f"unknown event type {_short(obj.get('type'))}")
            event = from_fields(kind, obj, kind.type)
        except MalformedEvent:
            raise
        except MalformedRecord as exc:
            raise MalformedEvent(str(exc)) from exc
        if not isinstance(event, cls):
            raise MalformedEvent(f"{event.type}, expected {cls.type}")
        return event


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


@dataclass(frozen=True, kw_only=True)
class RunStarted(Event):
    type: ClassVar[str] = "run_started"
    rounds: int
    initial_model: str
    state_sha256: str = ""  # the ServerApp's durable state at round 0, stored as a model


@dataclass(frozen=True, kw_only=True)
class AggregatorElected(Event):
    """The winner of an election, with the ranking every node computed at `revision`."""

    type: ClassVar[str] = "aggregator_elected"
    flower_address: str
    rank: int
    score: float | None
    revision: int
    ranking: list[dict[str, Any]]
    previous: str | None = None
    vacant_since: float | None = None  # when the winner saw the role vacant


@dataclass(frozen=True, kw_only=True)
class StepDown(Event):
    type: ClassVar[str] = "step_down"
    reason: str


@dataclass(frozen=True, kw_only=True)
class RoundStarted(Event):
    type: ClassVar[str] = "round_started"
    round: int
    base_model: str
    clients: int


@dataclass(frozen=True, kw_only=True)
class FitResults(Event):
    """One training attempt's outcome. `rejected` (added within schema 1: older readers
    ignore it, older events read as {}) names the workers whose update the aggregator refused
    (raftfl/flower/screen.py) and why; they are counted in `failures`."""

    type: ClassVar[str] = "fit_results"
    round: int
    results: int
    failures: int
    num_examples: int
    rejected: dict[str, str] = field(default_factory=dict)  # node -> reason

    def check(self) -> None:
        super().check()
        require(len(self.rejected) <= MAX_REJECTED,
                f"{len(self.rejected)} rejections, more than {MAX_REJECTED}")
        for who, why in self.rejected.items():
            require(0 < len(who) <= MAX_NAME and len(why) <= MAX_REASON,
                    "a rejection's node or reason is too long")


@dataclass(frozen=True, kw_only=True)
class CheckpointSaved(Event):
    type: ClassVar[str] = "checkpoint_saved"
    round: int
    sha256: str
    size: int
    chunks: int


@dataclass(frozen=True, kw_only=True)
class RoundCommitted(Event):
    type: ClassVar[str] = "round_committed"
    round: int
    model_sha256: str
    base_model: str
    loss: float | None  # the headline evaluation, when the app reports one
    accuracy: float | None
    results: int
    metrics: dict[str, Any] = field(default_factory=dict)  # train/evaluate/evaluate_fn/clients
    state_sha256: str = ""  # the ServerApp's durable state at this commit, stored as a model


@dataclass(frozen=True, kw_only=True)
class CheckpointFallback(Event):
    """A checkpoint failed verification; the writer fell back to an older valid one."""

    type: ClassVar[str] = "checkpoint_fallback"
    bad_sha256: str
    round: int
    fallback_round: int
    fallback_sha256: str
    reason: str


@dataclass(frozen=True, kw_only=True)
class GridExchange(Event):
    """One grid call of a ServerApp with its own loop, recorded so that a successor can
    replay it (raftfl/flower/journal.py). `answer` names the stored replies (or push ids)."""

    type: ClassVar[str] = "grid_exchange"
    call: int
    kind: str
    request: str
    answer: str
    replies: int
    start_state: str = ""  # call 1: the process RNGs as the ServerApp started, stored as a model

    def check(self) -> None:
        super().check()
        require(self.call >= 1, f"call {self.call} is not positive")
        require(self.kind in ("send_and_receive", "push", "pull", "nodes"),
                f"kind {self.kind[:40]!r}")
        require(_is_sha256(self.request) and _is_sha256(self.answer)
                and (not self.start_state or _is_sha256(self.start_state)), "not sha256 hashes")
        require(self.replies >= 0, f"replies {self.replies} is negative")


def _is_sha256(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdef" for c in text)


@dataclass(frozen=True, kw_only=True)
class RunCompleted(Event):
    type: ClassVar[str] = "run_completed"
    rounds: int
    model_sha256: str


@dataclass(frozen=True, kw_only=True)
class RunStopped(Event):
    """An operator stopped the run (`raftfl run stop`): the aggregator ends its ServerApp
    and moves on to the next run; a queued run is skipped."""

    type: ClassVar[str] = "run_stopped"
    reason: str = ""


@dataclass(frozen=True, kw_only=True)
class NodeJoined(Event):
    type: ClassVar[str] = "node_joined"


@dataclass(frozen=True, kw_only=True)
class NodeLeft(Event):
    type: ClassVar[str] = "node_left"


@dataclass(frozen=True, kw_only=True)
class Handover(Event):
    """A planned handover (`raftfl aggregator handover`): the holder of `term` finished
    round `round` and resigns so that `to` takes the role at once, with no lease wait."""

    type: ClassVar[str] = "handover"
    to: str
    round: int  # the run's last committed round when the holder resigned
    ranked: bool = False  # `to` is the best-ranked other node (no --to given)
    requested_by: str = ""


@dataclass(frozen=True, kw_only=True)
class FailoverPaused(Event):
    """`raftfl pause` (maintenance mode): a vacant role is not filled automatically until
    `raftfl resume`; `revision` is the pause key's create revision."""

    type: ClassVar[str] = "failover_paused"
    revision: int
    reason: str = ""


@dataclass(frozen=True, kw_only=True)
class FailoverResumed(Event):
    type: ClassVar[str] = "failover_resumed"
    revision: int  # of the pause it ends
    paused_s: float | None = None


EVENT_TYPES: dict[str, type[Event]] = {
    cls.type: cls
    for cls in (
        RunStarted, AggregatorElected, StepDown, RoundStarted, FitResults,
        CheckpointSaved, RoundCommitted, CheckpointFallback, RunCompleted, RunStopped,
        GridExchange, NodeJoined, NodeLeft, Handover, FailoverPaused, FailoverResumed,
    )
}


decode = Event.from_json  # the reader's name for it


def describe(ev: Event) -> str:
    """One readable line per event, for the node's log and the demo."""
    match ev:
        case RunStarted():
            return f"run started by {ev.node}: {ev.rounds} rounds from model {ev.initial_model[:12]}"
        case AggregatorElected():
            return f"elected {ev.node} (term {ev.term}, rank {ev.rank})"
        case StepDown():
            return f"{ev.node} stepped down: {ev.reason}"
        case RoundStarted():
            return f"round {ev.round} started by {ev.node} with {ev.clients} workers"
        case FitResults():
            return (f"round {ev.round}: {ev.results} results, {ev.failures} failures "
                    f"({ev.num_examples} examples)"
                    + "".join(f"; rejected {who}: {why}" for who, why in ev.rejected.items()))
        case CheckpointSaved():
            return f"round {ev.round} checkpoint {ev.sha256[:12]} saved ({ev.size} bytes)"
        case RoundCommitted():
            score = "" if ev.accuracy is None else f"accuracy {ev.accuracy:.3f} "
            return f"round {ev.round} committed: {score}(term {ev.term})"
        case CheckpointFallback():
            return (f"checkpoint {ev.bad_sha256[:12]} of round {ev.round} is unreadable "
                    f"({ev.reason}); falling back to round {ev.fallback_round}")
        case RunCompleted():
            return f"run completed, model {ev.model_sha256[:12]}" if ev.model_sha256 \
                else "run completed (the ServerApp committed no model)"
        case GridExchange():
            return f"grid call {ev.call} recorded ({ev.kind}, {ev.replies} replies)"
        case RunStopped():
            return f"run stopped by {ev.node}" + (f": {ev.reason}" if ev.reason else "")
        case NodeJoined():
            return f"{ev.node} joined"
        case NodeLeft():
            return f"{ev.node} left"
        case Handover():
            how = "best-ranked " if ev.ranked else ""
            return (f"{ev.node} hands term {ev.term} over to {how}{ev.to} after round "
                    f"{ev.round}")
        case FailoverPaused():
            return f"failover paused by {ev.node} (revision {ev.revision})"
        case FailoverResumed():
            took = "" if ev.paused_s is None else f" after {ev.paused_s:.0f}s"
            return f"failover resumed by {ev.node}{took}"
    return f"{ev.type} by {ev.node} (term {ev.term})"
