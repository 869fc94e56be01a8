"""A run's state as of one event, stored so that a node reads only the events after it.

Why: a node that (re)starts rebuilds each run's state by decoding and folding its whole log,
and a federation's log only grows. So the aggregator stores the folded state under
`runs/<id>/snapshot` every 1,000 events (raftfl/node/recorder.py), fenced by its term like
every aggregator write, and a reader starts from it and folds only the events after its
`seq` (raftfl/etcd/eventlog.py): the same state as folding everything, for a fraction of
the decoding.

The value is a `Snapshot` record: the run, the newest event folded (`seq`), the revision
the writer read the log at (every key of the log as of that revision is folded in), the
writer's term and name, the state (`state`: each `FLState` field, events in their stored
form, so they are decoded by the very decoder and bounds the log's own events are) and the
sha256 of the state's canonical JSON.

Bounds: the whole value is at most `MAX_SNAPSHOT_BYTES` (1 MiB; etcd refuses requests over
1.5 MiB, and the fenced transaction adds its key and compare), parsed with the depth bound of
every record; each event in it at most an event's own bound. A state that does not fit is
not snapshotted (`TooBig`). The state is bounded (raftfl/core/replay.py: the newest `WINDOW`
rounds' records, older history as ranges and counts), so a training run's snapshot stays
near 100 KB however many rounds it commits; what still grows is an own-loop ServerApp's
recorded grid calls (about 0.4 KB each: the journal replays them all) and violation records.

A snapshot that does not parse, fails its hash, contradicts itself or has another version
(an older one holds the unbounded state) is ignored with one warning, and the reader folds
the full log instead: a bad snapshot costs time, never the state. Like an event, a snapshot
is only as trustworthy as etcd's access control: the hash guards against corruption and hand
edits, not against a writer who can also write the hash.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from raftfl.core.errors import RaftflError
from raftfl.core.events import (
    MAX_NAME,
    AggregatorElected,
    CheckpointFallback,
    CheckpointSaved,
    Event,
    GridExchange,
    RoundCommitted,
    RunCompleted,
    RunStopped,
    StepDown,
)
from raftfl.core.keys import MAX_RUN_ID
from raftfl.core.records import MAX_INT, MAX_TEXT, SKIPS, MalformedRecord, Record, require
from raftfl.core.replay import WINDOW, FLState, RoundSet

SNAPSHOT_VERSION = 2  # bump when FLState or its encoding here changes: old ones are then ignored
MAX_SNAPSHOT_BYTES = 1024 * 1024
MIN_EVENT_BYTES = 64  # an event's JSON holds at least its 32-digit id, type, node, term, ts, v
_SHA256 = re.compile(r"[0-9a-f]{64}")


class TooBig(RaftflError):
    """The state does not fit in one snapshot: none is written, readers fold the log."""


@dataclass(frozen=True, kw_only=True)
class Snapshot(Record):
    KIND: ClassVar[str] = "snapshot"
    MAX_BYTES: ClassVar[int] = MAX_SNAPSHOT_BYTES
    run: int
    seq: int  # the newest event folded into `state`
    revision: int  # the log was read at this revision: every key it had then is folded in
    term: int  # the aggregator term it was written under
    node: str  # its writer
    sha256: str  # of `state`'s canonical JSON (`digest`)
    state: dict[str, Any]
    ts: float = field(default_factory=time.time)
    v: int = SNAPSHOT_VERSION

    def check(self) -> None:
        require(self.v == SNAPSHOT_VERSION, f"version {self.v}, expected {SNAPSHOT_VERSION}")
        require(1 <= self.run <= MAX_RUN_ID, f"run {self.run} not in 1..{MAX_RUN_ID}")
        require(self.seq >= 1, f"seq {self.seq}")
        require(1 <= self.term <= self.revision,
                f"term {self.term} not in 1..revision {self.revision}")
        require(0 < len(self.node) <= MAX_NAME, f"node name of {len(self.node)} characters")
        require(_SHA256.fullmatch(self.sha256) is not None, "sha256 is not 64 hex digits")


def encode(state: FLState, *, run: int, revision: int, term: int, node: str) -> str:
    """The value to store for `state` (read from the log at `revision`); TooBig if it does
    not fit in MAX_SNAPSHOT_BYTES."""
    held = sum(len(getattr(state, name)) for name, codec in _FIELDS.items() if codec.events)
    if held * MIN_EVENT_BYTES > MAX_SNAPSHOT_BYTES:
        raise TooBig(f"its state holds {held} events, at least {held * MIN_EVENT_BYTES} bytes, "
                     f"more than {MAX_SNAPSHOT_BYTES}")
    doc = {name: codec.encode(getattr(state, name)) for name, codec in _FIELDS.items()}
    snap = Snapshot(run=run, seq=state.last_seq, revision=revision, term=term, node=node,
                    sha256=digest(doc), state=doc)
    try:
        return snap.to_json()
    except ValueError as exc:  # the size: everything else was checked when it was built
        raise TooBig(str(exc)) from exc


def digest(doc: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def restore(snap: Snapshot) -> FLState:
    """The state `snap` holds, verified against its hash and checked field by field (the
    bounds of every record); MalformedRecord says why not."""
    actual = digest(snap.state)
    if actual != snap.sha256:
        raise MalformedRecord(f"sha256 mismatch: the state hashes to {actual[:12]}, "
                              f"the snapshot says {snap.sha256[:12]}")
    kwargs: dict[str, Any] = {}
    for name, codec in _FIELDS.items():
        if name not in snap.state:
            raise MalformedRecord(f"state field {name} missing")
        kwargs[name] = codec.decode(snap.state[name], f"state field {name}")
    state = FLState(**kwargs)
    _check_bounded(state)
    if state.last_seq != snap.seq:
        raise MalformedRecord(f"its state ends at seq {state.last_seq}, the snapshot says {snap.seq}")
    if state.max_term > snap.revision:
        raise MalformedRecord(f"term {state.max_term} is later than its revision {snap.revision}")
    return state


def _check_bounded(state: FLState) -> None:
    """A state the fold could have made: its windows within WINDOW, its records of committed
    rounds among the committed ones (a fold continued from anything else would differ from
    the full log's)."""
    for name in _WINDOWED:
        if len(getattr(state, name)) > WINDOW:
            raise MalformedRecord(f"state field {name} holds more than {WINDOW} items")
    if not state.committed_rounds.valid():
        raise MalformedRecord("state field committed_rounds: not sorted, disjoint ranges of rounds")
    if any(rnd not in state.committed_rounds for rnd in state.committed):
        raise MalformedRecord("state field committed holds a round committed_rounds does not")
    if state.commits < len(state.commit_order) or state.election_count < len(state.elections) \
            or state.starts < sum(state.started.values()):
        raise MalformedRecord("its counts are smaller than the records they count")


def read(raw: bytes, key: str, run: int, mod_revision: int) -> tuple[Snapshot, FLState] | None:
    """The snapshot stored at `key` (last written at `mod_revision`) and its state, or None,
    with one warning per key and reason, when it cannot be used."""
    try:
        snap = Snapshot.from_json(raw)
        if snap.run != run:
            raise MalformedRecord(f"it is run {snap.run}'s")
        if snap.revision >= mod_revision:
            raise MalformedRecord(f"it claims revision {snap.revision}, not before its own "
                                  f"write at {mod_revision}")
        return snap, restore(snap)
    except MalformedRecord as exc:
        SKIPS.skip("snapshot", key, f"{exc}; folding the full log instead")
        return None


# -- the state's fields ---------------------------------------------------------------------


@dataclass(frozen=True)
class _Codec:
    encode: Callable[[Any], Any]
    decode: Callable[[Any, str], Any]  # (stored, where) -> value, or MalformedRecord
    events: bool = False  # a container of events (counted against the size bound)


def _int(value: Any, where: str) -> int:
    if type(value) is not int or not 0 <= value <= MAX_INT:
        raise MalformedRecord(f"{where}: {str(value)[:40]} is not a count")
    return value


def _str(value: Any, where: str) -> str:
    if not isinstance(value, str) or len(value) > MAX_TEXT:
        raise MalformedRecord(f"{where}: not a text of at most {MAX_TEXT} characters")
    return value


def _optional(inner: Callable[[Any, str], Any]) -> _Codec:
    return _Codec(lambda v: v, lambda v, where: None if v is None else inner(v, where))


def _list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise MalformedRecord(f"{where}: not a list")
    return value


def _ints(value: Any, where: str) -> list[int]:
    return [_int(v, where) for v in _list(value, where)]


def _pairs(second: Callable[[Any, str], Any]) -> Callable[[Any, str], list[tuple[int, Any]]]:
    """[[int, x], ...] -> [(int, x), ...]"""
    def decode(value: Any, where: str) -> list[tuple[int, Any]]:
        out = []
        for pair in _list(value, where):
            if not isinstance(pair, list) or len(pair) != 2:
                raise MalformedRecord(f"{where}: not a list of pairs")
            out.append((_int(pair[0], where), second(pair[1], where)))
        return out
    return decode


def _event(kind: type[Event]) -> Callable[[Any, str], Any]:
    def decode(value: Any, where: str) -> Event:
        if not isinstance(value, str):
            raise MalformedRecord(f"{where}: an event is not stored as a string")
        try:
            return kind.from_json(value)
        except MalformedRecord as exc:
            raise MalformedRecord(f"{where}: {exc}") from exc
    return decode


def _events(kind: type[Event]) -> _Codec:
    one = _event(kind)
    return _Codec(lambda evs: [ev.to_json() for ev in evs],
                  lambda v, where: [one(x, where) for x in _list(v, where)], events=True)


def _keyed(kind: type[Event], key: str) -> _Codec:
    """A dict of events keyed by one of their fields (stored as the list of its values)."""
    many = _events(kind)
    return _Codec(lambda d: many.encode(d.values()),
                  lambda v, where: {getattr(ev, key): ev for ev in many.decode(v, where)},
                  events=True)


def _one(kind: type[Event]) -> _Codec:
    one = _event(kind)
    return _Codec(lambda ev: None if ev is None else ev.to_json(),
                  lambda v, where: None if v is None else one(v, where))


_COUNT = _Codec(lambda v: v, _int)
_INTS = _Codec(lambda v: v, _ints)
_PAIRS = _pairs(_int)
_REJECTIONS = _pairs(_str)

_WINDOWED = ("committed", "commit_order", "started", "checkpoints", "elections", "step_downs",
             "fallbacks")
_FIELDS: dict[str, _Codec] = {  # every FLState field; dicts keep their order (the windows')
    "rounds": _optional(_int),
    "initial_model": _optional(_str),
    "initial_state": _Codec(lambda v: v, _str),
    "committed": _keyed(RoundCommitted, "round"),
    "committed_rounds": _Codec(lambda rs: [list(span) for span in rs.spans],
                               lambda v, where: RoundSet(_PAIRS(v, where))),
    "commit_order": _INTS,
    "commits": _COUNT,
    "started": _Codec(lambda d: [[r, n] for r, n in d.items()],
                      lambda v, where: dict(_PAIRS(v, where))),
    "starts": _COUNT,
    "checkpoints": _keyed(CheckpointSaved, "sha256"),
    "elections": _events(AggregatorElected),
    "election_count": _COUNT,
    "elected_terms": _Codec(sorted, lambda v, where: set(_ints(v, where))),
    "step_downs": _events(StepDown),
    "fallbacks": _events(CheckpointFallback),
    "completed": _one(RunCompleted),
    "exchanges": _keyed(GridExchange, "call"),
    "stopped": _one(RunStopped),
    "max_term": _COUNT,
    "duplicate_commits": _INTS,
    "stale_commits": _INTS,
    "chain_breaks": _INTS,
    "rolled_back": _INTS,
    "rejected": _Codec(lambda v: [list(x) for x in v], _REJECTIONS),
    "last_seq": _COUNT,
    "events": _COUNT,
}
