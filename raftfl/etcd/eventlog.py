"""The append-only FL event log in etcd, and its readers.

Append is a create-only transaction on `events/<seq>`, optionally fenced by the aggregator
term, so history is never rewritten and a deposed aggregator cannot add to it. A fenced append
(the aggregator's) is sent to the Raft leader's member (raftfl/etcd/leader_route.py): the
aggregator's own member never leads Raft, and forwarding would cost each event a Raft copy. Readers
decode in key order, skip (and count) anything malformed, and fold with `replay`. Each event
is paired with its key's create revision, which replay checks the event's term against.

A reader starts from the run's snapshot (raftfl/core/snapshot.py: the state folded up to an
event, written by the aggregator every 1,000 events) and reads only the keys after its seq,
so a (re)start costs the snapshot and the events since, not the history; without a usable
snapshot (none yet, or one that fails its hash) it folds the whole log, read in pages.

The HA loop asks for the state every cycle, and a federation's log only grows, so
`current()` keeps the folded state (`Folded`) and folds only what was appended since, and
reads only the keys after the newest one it has read (etcd scans the whole range it is asked
for, even to return nothing): a cycle costs the new events, not the history. Appends land
after the newest key their writer has read; a key written below it (by hand, or by a writer
that had not read the newest) is picked up by a sweep of the whole log every `SWEEP_S`, which
reads every key changed since the previous sweep (or since the snapshot was taken). One below
the snapshot's seq makes it fold the whole log again. Readers get a copy of the state that
later folds leave alone.

In a secured cluster (a process with a TLS identity) every append is signed by its writer for
its key (raftfl/etcd/signers.py), and a reader skips, with one warning each, an event that is
not signed by the node it names; replay then refuses a signed event from a node that does not
hold its term (raftfl/core/replay.py), and the fold says each such refusal once too.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace

import grpc

from raftfl.core import seal
from raftfl.core.errors import FencedOut, RaftflError
from raftfl.core.events import Event, MalformedEvent, decode
from raftfl.core.keys import RunKeys, seq_of
from raftfl.core.records import SKIPS, MalformedRecord, loads_bounded
from raftfl.core.replay import FLState, Logged, fold
from raftfl.etcd import leader_route, signers, snapshots
from raftfl.etcd.store import KV, CreateResult, Fence, Resync, Store

log = logging.getLogger(__name__)

MAX_APPEND_ATTEMPTS = 50
SWEEP_S = 60.0  # how often current() also reads below the newest key (hand-written keys)
PAGE_KEYS = 5000  # keys per range read: gRPC refuses answers over 64 MiB (170,000 events)


@dataclass
class ReadResult:
    events: list[Logged]
    revision: int
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (key, reason)


class BelowSnapshot(RaftflError):
    """An event at or below the seq of the snapshot a fold started from, which the snapshot
    does not hold (a key written there by hand after it was taken)."""


class Folded:
    """The log folded so far, from `base` (a snapshot's state: the events up to its
    `last_seq`) or from nothing. `add(new)` folds only the new events onto it (events once
    written never change: appends are create-only), and returns a copy that equals `replay`
    of everything added (and of the events `base` was folded from), in log order. An event
    that does not come after the ones already folded (a hand-written key below the last
    sequence number, or an overwritten one) makes it fold everything again from `base`, so
    the answer never depends on arrival order; one at or below `base`'s cannot be folded
    without the events before it: BelowSnapshot."""

    def __init__(self, base: FLState | None = None) -> None:
        self._base = base if base is not None else FLState()  # never folded into
        self._floor = base.last_seq if base is not None else -1  # keys up to it are in base
        self._seen: dict[int, Logged] = {}
        self._last = self._base.last_seq  # the highest sequence number folded
        self._state = self._base.snapshot()  # folded into; never handed out
        self._snapshot = self._state.snapshot()  # handed out; never folded into
        self.refolds = 0

    def add(self, items: Iterable[Logged]) -> FLState:
        latest = {i.seq: i for i in items}  # one per key: the last read wins
        new = sorted((i for i in latest.values() if self._seen.get(i.seq) != i),
                     key=lambda i: i.seq)
        if not new:
            return self._snapshot
        if new[0].seq <= self._floor:
            raise BelowSnapshot(f"event {new[0].seq} is at or below the snapshot's seq {self._floor}")
        in_order = new[0].seq > self._last
        for item in new:
            self._seen[item.seq] = item
        self._last = max(self._last, new[-1].seq)
        if in_order:
            fold(self._state, new)
        else:
            self.refolds += 1
            self._state = fold(self._base.snapshot(), (self._seen[seq] for seq in sorted(self._seen)))
        self._snapshot = self._state.snapshot()
        return self._snapshot


class EventLog:
    def __init__(self, store: Store, keys: RunKeys):
        self.store = store
        self.keys = keys
        self._next_hint = 0
        self._folded: Folded | None = None  # behind current(), from its first call on
        self._seen_rev = 0
        self._swept_rev = 0  # every key of the log at this revision is folded, below the newest too
        self._next_seq = 0  # after the newest key current() has read (0: nothing read yet)
        self._swept = 0.0  # when current() last read the whole log
        self._said = 0  # replay's refusals said so far (in the order it made them)
        self._lock = threading.Lock()

    def append(self, event: Event, fence: Fence | None = None) -> int:
        """Append at the next free sequence number; returns it. Raises FencedOut if fenced."""
        return self.append_all([event], fence)[0]

    def append_all(self, events: Sequence[Event], fence: Fence | None = None) -> list[int]:
        """Append `events` at consecutive free sequence numbers, all or none, in one
        transaction: one Raft entry, however many events. Returns their sequence numbers;
        raises FencedOut if fenced. A fenced append (the aggregator's) goes to the Raft
        leader's member (raftfl/etcd/leader_route.py)."""
        if not 0 < len(events) <= leader_route.MAX_TXN_OPS:
            raise ValueError(f"{len(events)} events in one append: 1 to {leader_route.MAX_TXN_OPS}")
        what = ", ".join(e.type for e in events)
        with self._lock:
            seq = max(self._next_hint, self._next_seq) or self._last_seq() + 1
            for _ in range(MAX_APPEND_ATTEMPTS):
                seqs = list(range(seq, seq + len(events)))
                # A signature names its key: the values are made afresh at each attempt.
                items = [(self.keys.event(s), self._value(s, e)) for s, e in enumerate(events, seq)]
                result = leader_route.create_all(self.store, items, fence)
                if result is CreateResult.CREATED:
                    self._next_hint = seqs[-1] + 1
                    return seqs
                if result is CreateResult.FENCED:
                    raise FencedOut(f"{what} rejected: term {fence.create_revision if fence else 0} "
                                    "no longer holds the aggregator role")
                existing = self.store.get(self.keys.event(seq))
                if existing is not None and _event_id(existing.value) == events[0].id:
                    self._next_hint = seqs[-1] + 1  # a retried append that had landed already
                    return seqs
                seq = max(seq + 1, self._last_seq() + 1)
            raise RaftflError(f"could not append {what} after {MAX_APPEND_ATTEMPTS} attempts")

    def _value(self, seq: int, event: Event) -> str:
        """The stored event: signed by this process's party, which it then names (a CLI's
        `run stop` or `pause` records the certificate's CN, not user@host)."""
        me = signers.signer()
        if me is None:
            return event.to_json()
        signers.publish(self.store, self.keys)
        event = replace(event, node=me.name)
        return replace(event, sig=me.seal(self.keys.event(seq), event.to_dict())[seal.SIG]).to_json()

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
        result = ReadResult([], 0)
        for kvs, rev in self._pages(revision, since, self.keys.event(from_seq) if from_seq else None):
            result.revision = result.revision or rev
            for kv in kvs:
                item = self._decode(kv)
                if isinstance(item, Logged):
                    result.events.append(item)
                else:
                    result.skipped.append((kv.key, item))
        return result

    def _pages(self, revision: int | None, since: int | None,
               start: str | None) -> Iterator[tuple[list[KV], int]]:
        """The range in pages of at most PAGE_KEYS keys, each page read at the first one's
        revision: (keys, revision read)."""
        limit = PAGE_KEYS
        while True:
            try:
                kvs, rev = self.store.range(self.keys.events, revision=revision, limit=limit,
                                            min_mod_revision=since, start=start)
            except grpc.RpcError as exc:  # a page of values written by hand (up to 1.5 MiB each)
                if exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED or limit == 1:  # type: ignore[attr-defined]
                    raise
                limit = max(1, limit // 8)
                continue
            yield kvs, rev
            if len(kvs) < limit:
                return
            revision, start = revision or rev, kvs[-1].key + "\0"

    def state(self, revision: int | None = None) -> tuple[FLState, int]:
        """The state (as of `revision`) folded afresh: from the run's snapshot and the events
        after it, or the whole log; returns the state and the revision read."""
        return EventLog(self.store, self.keys).current(revision)

    def current(self, revision: int | None = None, sweep: bool = False) -> tuple[FLState, int]:
        """The state now (or as of `revision`, not older than the previous call's), fetching
        and folding only what was appended since the previous call; the first call starts
        from the run's snapshot. `sweep` also reads below the newest key now (else every
        SWEEP_S): the state then holds every key the log had at the revision returned.

        The state is shared by the callers until new events arrive: read it, never change it.
        """
        with self._lock:
            if revision is not None and revision <= self._seen_rev:
                due = sweep or time.monotonic() - self._swept >= SWEEP_S
                if self._folded is not None and not due:
                    return self._folded.add(()), self._seen_rev  # folded that far already
                revision = None  # never older than what we already folded
            if self._folded is None:
                return self._rebuild(revision, from_snapshot=True)
            try:
                return self._advance(revision, sweep)
            except BelowSnapshot as exc:
                log.info("%s: %s; folding the whole log", self.keys.events, exc)
                return self._rebuild(revision, from_snapshot=False)

    def _rebuild(self, revision: int | None, from_snapshot: bool) -> tuple[FLState, int]:
        """Fold afresh: from the snapshot and the keys after its seq, else the whole log."""
        loaded = snapshots.load(self.store, self.keys, revision) if from_snapshot else None
        snap, base = loaded if loaded is not None else (None, None)
        self._folded = Folded(base)
        self._next_seq = snap.seq + 1 if snap is not None else 0
        self._swept = time.monotonic()
        state = self._absorb(self.read(revision, from_seq=self._next_seq or None), revision)
        self._swept_rev = snap.revision if snap is not None else self._seen_rev
        return state, self._seen_rev

    def _advance(self, revision: int | None, sweep: bool) -> tuple[FLState, int]:
        now = time.monotonic()
        sweep = sweep or now - self._swept >= SWEEP_S
        result = self.read(revision, since=(self._swept_rev if sweep else self._seen_rev) + 1,
                           from_seq=None if sweep else self._next_seq)
        state = self._absorb(result, revision)
        if sweep:
            self._swept, self._swept_rev = now, self._seen_rev
        return state, self._seen_rev

    def _absorb(self, result: ReadResult, revision: int | None) -> FLState:
        assert self._folded is not None
        seqs = [item.seq for item in result.events]
        seqs += [s for key, _ in result.skipped if (s := seq_of(key)) is not None]
        state = self._folded.add(result.events)
        for seq, why in state.rejected[self._said:]:  # each refusal once per reader
            log.warning("ignoring event %s: %s", self.keys.event(seq), why)
        self._said = len(state.rejected)
        self._next_seq = max([self._next_seq, *(s + 1 for s in seqs)])
        self._seen_rev = revision or result.revision  # a pinned read: the header says "now"
        return state

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
            forged = signers.check_raw(self.store, self.keys, kv.key, kv.value, kv.create_revision)
            if forged is not None:  # first: an unsigned value is a forgery, whatever else it is
                raise MalformedEvent(f"forged: {forged}")
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
