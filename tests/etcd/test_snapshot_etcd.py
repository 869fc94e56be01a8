"""Issue 21, bounded restarts, on a real 3-member etcd cluster: the aggregator's recorder
writes the run's snapshot every N events and at the run's end, fenced by its term (a
deposed term's write is refused); a reader starts from it and reads only the events after
it; a tampered or unparsable snapshot, or one of an older version, is ignored with one
warning in favour of the full log, with the same state; a long training run's snapshot stays
small (the state keeps the newest rounds' records only); a key written by hand below the
snapshot is folded by the next sweep; the log is read in pages."""

from __future__ import annotations

import json
import logging
import os

import pytest
from conftest import EtcdCluster

from raftfl.core.errors import FencedOut
from raftfl.core.events import AggregatorElected, NodeJoined, RoundCommitted, RunStarted, StepDown
from raftfl.core.keys import Keys, RunKeys
from raftfl.core.replay import WINDOW, FLState, replay
from raftfl.core.snapshot import Snapshot
from raftfl.etcd import eventlog, snapshots
from raftfl.etcd.eventlog import EventLog
from raftfl.etcd.store import Fence, Store
from raftfl.node.recorder import AppRecorder

NODE = "10.0.0.1:5000"


def fresh_keys(cluster: EtcdCluster) -> RunKeys:
    return Keys(f"{cluster.name}-{os.urandom(4).hex()}").run(1)


def aggregator(store: Store, keys: RunKeys, every: int) -> AppRecorder:
    """The recorder of a freshly elected aggregator (its election logged), snapshotting
    every `every` events."""
    term = store.create_revision(keys.aggregator, NODE)
    assert term is not None
    fence = Fence(keys.aggregator, term)
    log = EventLog(store, keys)
    log.append(AggregatorElected(node=NODE, term=term, flower_address="h:1", rank=0, score=1.0,
                                 revision=term, ranking=[]), fence=fence)
    recorder = AppRecorder(store=store, keys=keys, events=log, fence=fence, node=NODE,
                           models=None, workers=lambda: 2,  # type: ignore[arg-type]
                           on_event=lambda ev: None)
    recorder.snapshot_every = every
    return recorder


def full_replay(store: Store, keys: RunKeys) -> FLState:
    return replay(EventLog(store, keys).read().events)


def stored(store: Store, keys: RunKeys) -> Snapshot:
    kv = store.get(keys.snapshot)
    assert kv is not None
    return Snapshot.from_json(kv.value)


@pytest.fixture
def decoded(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many stored events the event log decodes (one entry per event)."""
    count: list[int] = []
    real = eventlog.decode

    def counting(raw: bytes):  # noqa: ANN202 - the decoder's own signature
        count.append(1)
        return real(raw)

    monkeypatch.setattr(eventlog, "decode", counting)
    return count


def test_the_recorder_snapshots_every_n_events_and_at_the_end_fenced(
        etcd_cluster_module: EtcdCluster, decoded: list[int]) -> None:
    store, keys = etcd_cluster_module.store(), fresh_keys(etcd_cluster_module)
    rec = aggregator(store, keys, every=10)
    for rnd in range(1, 25):
        assert rec.round_started(rnd)
    snap = stored(store, keys)
    assert (snap.seq, snap.term, snap.node) == (20, rec.term, NODE)  # seq 25 is not due yet
    # A restarting node: the snapshot, then only the 5 events after it.
    decoded.clear()
    state, _ = EventLog(store, keys).current()
    assert len(decoded) == 5
    assert state == full_replay(store, keys) and state.last_seq == 25

    rec.base, rec.last_round = "m0", 0
    assert rec.complete()  # the run's end is snapshotted whatever the count
    assert stored(store, keys).seq == 26
    decoded.clear()
    state, _ = EventLog(store, keys).current()
    assert decoded == []
    assert state.done and state == full_replay(store, keys)

    # Another node takes the role: the deposed term's snapshot write is refused.
    before = store.get(keys.snapshot)
    store.delete(keys.aggregator)
    assert store.create_revision(keys.aggregator, "10.0.0.2:5000") is not None
    with pytest.raises(FencedOut, match="snapshot rejected"):
        snapshots.save(store, keys, state, store.revision(), rec.fence, NODE)
    assert store.get(keys.snapshot) == before
    assert not rec.round_started(26) and rec.deposed


def test_a_tampered_or_unparsable_snapshot_falls_back_to_the_full_log(
        etcd_cluster_module: EtcdCluster, decoded: list[int],
        caplog: pytest.LogCaptureFixture) -> None:
    store, keys = etcd_cluster_module.store(), fresh_keys(etcd_cluster_module)
    rec = aggregator(store, keys, every=8)
    for rnd in range(1, 12):
        rec.round_started(rnd)
    expected = full_replay(store, keys)
    kv = store.get(keys.snapshot)
    assert kv is not None
    doc = json.loads(kv.value)
    doc["state"]["commit_order"] = [1, 2, 3]  # a hand edit that keeps the recorded hash
    for value in (json.dumps(doc), kv.value[:-10], b"[" * 5000):
        store.put(keys.snapshot, value)
        decoded.clear()
        with caplog.at_level(logging.WARNING):
            state, _ = EventLog(store, keys).current()
            again, _ = EventLog(store, keys).state()
        assert len(decoded) == 2 * 12  # every event, by both readers
        assert state == expected and again == expected
    warned = [r.getMessage() for r in caplog.records if "snapshot" in r.getMessage()]
    assert len(warned) == 3, warned  # one per bad value, however many readers
    assert "sha256 mismatch" in warned[0] and all("full log" in w for w in warned)


def test_a_key_written_below_the_snapshot_is_folded_by_the_next_sweep(
        etcd_cluster_module: EtcdCluster) -> None:
    store, keys = etcd_cluster_module.store(), fresh_keys(etcd_cluster_module)
    rec = aggregator(store, keys, every=5)
    for rnd in range(1, 8):
        rec.round_started(rnd)
    assert stored(store, keys).seq == 5
    store.put(keys.event(3), StepDown(node="mallory", reason="hand-written").to_json())
    reader = EventLog(store, keys)
    state, _ = reader.current()  # from the snapshot: the hand-written key is not seen yet
    assert not state.step_downs
    state, _ = reader.current(sweep=True)  # ...the sweep reads it: the whole log is folded
    assert state == full_replay(store, keys) and len(state.step_downs) == 1


def test_pinned_reads_and_pages(etcd_cluster_module: EtcdCluster,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A read as of a revision before the snapshot ignores it; a log longer than a page reads
    the same, every page at the first one's revision."""
    monkeypatch.setattr(eventlog, "PAGE_KEYS", 4)
    store, keys = etcd_cluster_module.store(), fresh_keys(etcd_cluster_module)
    rec = aggregator(store, keys, every=6)
    for rnd in range(1, 4):
        rec.round_started(rnd)
    early = store.revision()
    for rnd in range(4, 14):
        rec.round_started(rnd)
    assert stored(store, keys).seq == 12
    log = EventLog(store, keys)
    assert [e.seq for e in log.read().events] == list(range(1, 15))  # the election, 13 rounds
    assert [e.seq for e in log.read(early).events] == [1, 2, 3, 4]
    assert log.state(early)[0] == replay(log.read(early).events)
    assert log.state()[0] == replay(log.read().events)
    store.put(keys.events + "zz", b"junk")  # a foreign key sorts last: skipped, counted
    assert len(log.read(since=early + 1).skipped) == 1


def test_a_state_too_big_for_a_snapshot_is_said_once_and_none_is_written(
        etcd_cluster_module: EtcdCluster, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(Snapshot, "MAX_BYTES", 300)
    store, keys = etcd_cluster_module.store(), fresh_keys(etcd_cluster_module)
    rec = aggregator(store, keys, every=2)
    with caplog.at_level(logging.INFO):
        for rnd in range(1, 10):
            rec.round_started(rnd)
        rec.events.append(NodeJoined(node="10.0.0.3:5000"))
        rec.base = "m0"
        assert rec.complete()
    said = [r.getMessage() for r in caplog.records if "no more snapshots" in r.getMessage()]
    assert len(said) == 1 and "more than 300" in said[0]
    assert store.get(keys.snapshot) is None
    assert EventLog(store, keys).current()[0] == full_replay(store, keys)


def test_a_long_training_runs_snapshot_stays_small_and_restarts_from_it(
        etcd_cluster_module: EtcdCluster, decoded: list[int]) -> None:
    """Every round committed with 1 KB of metrics: the state holds the newest WINDOW rounds'
    records, so the snapshot of 4 x WINDOW rounds is the size of WINDOW rounds'."""
    store, keys = etcd_cluster_module.store(), fresh_keys(etcd_cluster_module)
    rec = aggregator(store, keys, every=50)
    rec.events.append(RunStarted(node=NODE, term=rec.term, rounds=10**4, initial_model="m0"),
                      fence=rec.fence)
    sizes = []
    for rnd in range(1, 4 * WINDOW + 1):
        assert rec.round_started(rnd)
        rec.events.append(RoundCommitted(node=NODE, term=rec.term, round=rnd, model_sha256=f"m{rnd}",
                                         base_model=f"m{rnd - 1}", loss=1.0, accuracy=0.5,
                                         results=3, metrics={"clients": "x" * 1000}),
                          fence=rec.fence)
        if rnd % WINDOW == 0:
            kv = store.get(keys.snapshot)
            assert kv is not None
            sizes.append(len(kv.value))
    assert sizes[-1] < 1.1 * sizes[1] and sizes[-1] < 200_000, sizes
    decoded.clear()
    state, _ = EventLog(store, keys).current()
    assert 0 < len(decoded) < 50  # the snapshot, then the events after it
    assert state == full_replay(store, keys)
    assert state.committed_rounds.spans == [(1, 4 * WINDOW)] and len(state.committed) == WINDOW
    assert state.last_model == f"m{4 * WINDOW}" and not state.chain_breaks


def test_a_snapshot_of_an_older_version_falls_back_to_the_full_log(
        etcd_cluster_module: EtcdCluster, decoded: list[int],
        caplog: pytest.LogCaptureFixture) -> None:
    store, keys = etcd_cluster_module.store(), fresh_keys(etcd_cluster_module)
    rec = aggregator(store, keys, every=5)
    for rnd in range(1, 8):
        rec.round_started(rnd)
    expected = full_replay(store, keys)
    doc = json.loads(stored(store, keys).to_json())
    store.put(keys.snapshot, json.dumps({**doc, "v": 1}))  # what the unbounded state wrote
    decoded.clear()
    with caplog.at_level(logging.WARNING):
        for _ in range(2):
            assert EventLog(store, keys).current()[0] == expected
    assert len(decoded) == 2 * 8
    warned = [r.getMessage() for r in caplog.records if "snapshot" in r.getMessage()]
    assert len(warned) == 1 and "version 1, expected 2" in warned[0] and "full log" in warned[0]
