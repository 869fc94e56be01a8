"""The append-only FL event log in etcd, and its readers.

Append is a create-only transaction on `events/<seq>`, optionally fenced by the aggregator
term, so history is never rewritten and a deposed aggregator cannot add to it. Readers
decode in key order, skip (and count) anything malformed, and fold with `replay`. Each event
is paired with its key's create revision, which replay checks the event's term against.

The HA loop asks for the state every cycle, and a federation's log only grows, so
`current()` keeps the folded state (`Folded`) and folds only what was appended since, and
reads only the keys after the newest one it has read (etcd scans the whole range it is asked
for, even to return nothing): a cycle costs the new events, not the history. Appends land
after the newest key their writer has read; a key written below it (by hand, or by a writer
that had not read the newest) is picked up by a sweep of the whole log every `SWEEP_S`.
Readers get a snapshot that later folds leave alone.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from raftfl.core.errors import FencedOut, RaftflError
from raftfl.core.events import Event, MalformedEvent, decode
from raftfl.core.keys import RunKeys, seq_of
from raftfl.core.records import SKIPS, MalformedRecord, loads_bounded
from raftfl.core.replay import FLState, Logged, fold, replay
from raftfl.etcd.store import KV, CreateResult, Fence, Resync, Store

log = logging.getLogger(__name__)

MAX_APPEND_ATTEMPTS = 50
SWEEP_S = 60.0  # how often current() also reads below the newest key (hand-written keys)


@dataclass
class ReadResult:
    events: list[Logged]
    revision: int
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (key, reason)


class Folded:
    """The log folded so far. `add(new)` folds only the new events onto it (events once
    written never change: appends are create-only), and returns a snapshot that equals
    `replay` of everything added, in log order. An event that does not come after the ones
    already folded (a hand-written key below the last sequence number, or an overwritten
    one) makes it fold everything again, so the answer never depends on arrival order."""

    def __init__(self) -> None:
        self._seen: dict[int, Logged] = {}
        self._last = 0  # the highest sequence number folded
        self._state = FLState()  # folded into; never handed out
        self._snapshot = FLState()  # handed out; never folded into
        self.refolds = 0

    def add(self, items: Iterable[Logged]) -> FLState:
        latest = {i.seq: i for i in items}  # one per key: the last read wins
        new = sorted((i for i in latest.values() if self._seen.get(i.seq) != i),
                     key=lambda i: i.seq)
        if not new:
            return self._snapshot
        in_order = new[0].seq > self._last
        for item in new:
            self._seen[item.seq] = item
        self._last = max(self._last, new[-1].seq)
        if in_order:
            fold(self._state, new)
        else:
            self.refolds += 1
            self._state = replay(self._seen[seq] for seq in sorted(self._seen))
        self._snapshot = self._state.snapshot()
        return self._snapshot


class EventLog:
    def __init__(self, store: Store, keys: RunKeys):
        self.store = store
        self.keys = keys
        self._next_hint = 0
        self._folded = Folded()  # behind current()
        self._seen_rev = 0
        self._next_seq = 0  # after the newest key current() has read (0: nothing read yet)
        self._swept = 0.0  # when current() last read the whole log
        self._lock = threading.Lock()

    def append(self, event: Event, fence: Fence | None = None) -> int:
        """Append at the next free sequence number; returns it. Raises FencedOut if fenced."""
        with self._lock:
            seq = max(self._next_hint, self._next_seq) or self._last_seq() + 1
            value = event.to_json()
            for _ in range(MAX_APPEND_ATTEMPTS):
                result = self.store.create(self.keys.event(seq), value, fence=fence)
                if result is CreateResult.CREATED:
                    self._next_hint = seq + 1
                    return seq
                if result is CreateResult.FENCED:
                    raise FencedOut(f"{event.type} rejected: term {fence.create_revision if fence else 0} "
                                    "no longer holds the aggregator role")
                existing = self.store.get(self.keys.event(seq))
                if existing is not None and _event_id(existing.value) == event.id:
                    self._next_hint = seq + 1  # a retried append that had landed already
                    return seq
                seq = max(seq + 1, self._last_seq() + 1)
            raise RaftflError(f"could not append {event.type} after {MAX_APPEND_ATTEMPTS} attempts")

    def _last_seq(self) -> int:
        kvs, _ = self.store.range(self.keys.events, limit=1, descending=True, keys_only=True)
        if kvs and (seq := seq_of(kvs[0].key)) is not None:
            return seq
        # A foreign key sorts last: fall back to a keys-only scan (rare).
        kvs, _ = self.store.range(self.keys.events, keys_only=True)
        return max((s for kv in kvs if (s := seq_of(kv.key)) is not None), default=0)

    def read(self, revision: int | None = None, since: int | None = None,
             from_seq: int | None = None) -> ReadResult:
        """Every event in log order (as of `revision`; only keys written from `since` on;
        only keys from sequence number `from_seq` on)."""
        start = self.keys.event(from_seq) if from_seq else None
        kvs, rev = self.store.range(self.keys.events, revision=revision, min_mod_revision=since,
                                    start=start)
        result = ReadResult([], rev)
        for kv in kvs:
            item = self._decode(kv)
            if isinstance(item, Logged):
                result.events.append(item)
            else:
                result.skipped.append((kv.key, item))
        return result

    def state(self, revision: int | None = None) -> tuple[FLState, int]:
        """Replay the whole log (as of `revision`); returns the state and the revision read."""
        result = self.read(revision)
        return replay(result.events), result.revision

    def current(self, revision: int | None = None) -> tuple[FLState, int]:
        """The state now (or as of `revision`, not older than the previous call's), fetching
        and folding only what was appended since the previous call.

        The state is shared by the callers until new events arrive: read it, never change it.
        """
        with self._lock:
            if revision is not None and revision <= self._seen_rev:
                revision = None  # never older than what we already folded
            now = time.monotonic()
            sweep = now - self._swept >= SWEEP_S
            result = self.read(revision, since=self._seen_rev + 1,
                               from_seq=None if sweep else self._next_seq)
            if sweep:
                self._swept = now
            seqs = [item.seq for item in result.events]
            seqs += [s for key, _ in result.skipped if (s := seq_of(key)) is not None]
            self._next_seq = max([self._next_seq, *(s + 1 for s in seqs)])
            state = self._folded.add(result.events)
            self._seen_rev = revision or result.revision  # a pinned read: the header says "now"
            return state, self._seen_rev

    def tail(self, start_revision: int, stop: threading.Event) -> Iterator[Logged]:
        """New events from `start_revision` on, resuming across member failures, each once.

        If the history a resumed watch needs was compacted, the events created meanwhile are
        taken from the watch's re-read instead: the keys written since (appends are
        create-only, so these are the new events), in log order.
        """
        for change in self.store.watch(self.keys.events, start_revision, stop):
            if isinstance(change, Resync):
                missed = [kv for kv in change.kvs if kv.mod_revision >= change.since]
            elif change.value is None:
                continue
            else:
                missed = [KV(change.key, change.value, change.create_revision, change.revision, 0)]
            for kv in missed:
                item = self._decode(kv)
                if isinstance(item, Logged):
                    yield item

    def _decode(self, kv: KV) -> Logged | str:
        seq = seq_of(kv.key)
        try:
            if seq is None:
                raise MalformedEvent("key is not a sequence number")
            return Logged(seq, kv.create_revision, decode(kv.value))
        except MalformedEvent as exc:
            SKIPS.skip("event", kv.key, str(exc))
            return str(exc)


def _event_id(raw: bytes) -> str | None:
    try:
        obj = loads_bounded(raw)
    except MalformedRecord:
        return None
    return obj.get("id") if isinstance(obj, dict) else None
