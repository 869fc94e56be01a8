"""Typed FL events. Each is a frozen dataclass stored as one JSON value under `events/<seq>`.

Every event carries the envelope `v` (schema version), `type`, `id` (unique, so a retried
append that actually landed is recognised instead of written twice), `ts` (epoch seconds),
`node` (writer) and `term` (the aggregator term it was written under; 0 when unfenced).
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar

SCHEMA_VERSION = 1


class MalformedEvent(ValueError):
    """A value under the event prefix that is not a raftfl event of a known schema."""


@dataclass(frozen=True, kw_only=True)
class Event:
    type: ClassVar[str] = "event"
    node: str
    term: int = 0
    ts: float = field(default_factory=time.time)
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    v: int = SCHEMA_VERSION

    def to_json(self) -> str:
        return json.dumps({"type": self.type, **asdict(self)}, sort_keys=True)


@dataclass(frozen=True, kw_only=True)
class RunStarted(Event):
    type: ClassVar[str] = "run_started"
    rounds: int
    initial_model: str


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
    type: ClassVar[str] = "fit_results"
    round: int
    results: int
    failures: int
    num_examples: int


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
    loss: float
    accuracy: float
    results: int


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
class RunCompleted(Event):
    type: ClassVar[str] = "run_completed"
    rounds: int
    model_sha256: str


@dataclass(frozen=True, kw_only=True)
class NodeJoined(Event):
    type: ClassVar[str] = "node_joined"


@dataclass(frozen=True, kw_only=True)
class NodeLeft(Event):
    type: ClassVar[str] = "node_left"


EVENT_TYPES: dict[str, type[Event]] = {
    cls.type: cls
    for cls in (
        RunStarted, AggregatorElected, StepDown, RoundStarted, FitResults,
        CheckpointSaved, RoundCommitted, CheckpointFallback, RunCompleted, NodeJoined, NodeLeft,
    )
}


def decode(raw: bytes | str) -> Event:
    """Parse one stored value, or raise MalformedEvent saying why."""
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedEvent(f"not JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise MalformedEvent("not a JSON object")
    if type(obj.get("v")) is not int or obj["v"] != SCHEMA_VERSION:
        raise MalformedEvent(f"schema version {obj.get('v')!r}, expected {SCHEMA_VERSION}")
    cls = EVENT_TYPES.get(obj.get("type"))  # type: ignore[arg-type]
    if cls is None:
        raise MalformedEvent(f"unknown event type {obj.get('type')!r}")
    names = {f.name for f in fields(cls)}
    try:
        event = cls(**{k: v for k, v in obj.items() if k in names})
    except TypeError as exc:
        raise MalformedEvent(f"bad {cls.type} fields: {exc}") from exc
    for name in _INT_FIELDS & names:
        if type(getattr(event, name)) is not int:
            raise MalformedEvent(f"bad {cls.type} field {name}: {getattr(event, name)!r}")
    return event


# Fields replay does arithmetic or ordering on: a string here would break the fold.
_INT_FIELDS = {"round", "rounds", "term", "results", "failures", "num_examples", "size",
               "chunks", "fallback_round", "clients", "rank", "revision"}


def to_dict(event: Event) -> dict[str, Any]:
    return {"type": event.type, **asdict(event)}
