"""Issue 21, bounded restarts: the run's snapshot (raftfl/core/snapshot.py) round-trips, a
state rebuilt from a snapshot and the events after it equals the replay of the whole log
(random logs with every violation record, cut anywhere, the tail in random batches), and a
snapshot that fails its hash, does not parse or contradicts itself is ignored with one
warning."""

from __future__ import annotations

import json
import logging
import random
from dataclasses import fields

import pytest
from test_replay_incremental import batches, random_log

from raftfl.core import snapshot
from raftfl.core.events import NodeJoined, RoundCommitted
from raftfl.core.records import MalformedRecord
from raftfl.core.replay import FLState, Logged, fold, replay
from raftfl.core.snapshot import MAX_SNAPSHOT_BYTES, Snapshot, TooBig
from raftfl.etcd.eventlog import BelowSnapshot, Folded


def taken(log: list[Logged], run: int = 1) -> bytes:
    """The snapshot an aggregator of term 1 would store after reading `log`."""
    return snapshot.encode(replay(log), run=run, revision=log[-1].revision, term=1,
                           node="10.0.0.1:5000").encode()


def test_a_snapshot_round_trips() -> None:
    log = random_log(random.Random(5), 150)
    raw = taken(log)
    snap = Snapshot.from_json(raw)
    assert (snap.run, snap.seq, snap.revision, snap.term, snap.node, snap.v) == \
        (1, 150, log[-1].revision, 1, "10.0.0.1:5000", snapshot.SNAPSHOT_VERSION)
    assert Snapshot.from_json(snap.to_json()) == snap
    state = snapshot.restore(snap)
    assert state == replay(log)
    assert state.last_committed_round == replay(log).last_committed_round
    assert list(state.committed) == list(replay(log).committed)  # in the fold's order too
    assert snapshot.read(raw, "k/roundtrip", 1, log[-1].revision + 1) == (snap, state)


def test_every_state_field_is_in_the_snapshot() -> None:
    """A field added to FLState without a codec here would be lost by every snapshot."""
    doc = Snapshot.from_json(taken(random_log(random.Random(1), 20))).state
    assert set(doc) == {f.name for f in fields(FLState)}


@pytest.mark.parametrize("seed", range(40))
def test_snapshot_plus_tail_equals_the_full_replay(seed: int) -> None:
    rng = random.Random(seed)
    log = random_log(rng, rng.randint(1, 250))
    whole = replay(log)
    cut = rng.randint(1, len(log))
    found = snapshot.read(taken(log[:cut]), f"k/prop{seed}", 1, log[cut - 1].revision + 1)
    assert found is not None
    snap, state = found
    assert snap.seq == log[cut - 1].seq
    assert fold(state, log[cut:]) == whole
    assert state.last_committed_round == whole.last_committed_round
    # The event log's incremental fold from the snapshot, the tail in random batches.
    folded = Folded(snapshot.restore(snap))
    got = folded.add([])
    for batch in batches(rng, log[cut:]):
        got = folded.add(batch)
    assert got == whole and folded.refolds == 0


def test_a_fold_from_a_snapshot_refolds_from_it_and_refuses_what_it_lacks() -> None:
    log = random_log(random.Random(9), 120)
    base = replay(log[:60])
    folded = Folded(base)
    shuffled = log[60:]
    random.Random(2).shuffle(shuffled)
    for item in shuffled:
        folded.add([item])
    assert folded.add([]) == replay(log) and folded.refolds > 0
    assert base == replay(log[:60])  # the snapshot's state itself is never folded into
    with pytest.raises(BelowSnapshot):
        folded.add([Logged(60, log[59].revision, NodeJoined(node="mallory"))])


def _doctored(raw: bytes, rehash: bool = True, **change: object) -> bytes:
    """The snapshot with fields of its state (or, for `_top`, of itself) changed; its hash
    recomputed unless `rehash` is False."""
    obj = json.loads(raw)
    for name, value in change.items():
        if name.startswith("_"):
            obj[name[1:]] = value
        else:
            obj["state"][name] = value
    if rehash:
        obj["sha256"] = snapshot.digest(obj["state"])
    return json.dumps(obj).encode()


LOG = random_log(random.Random(4), 80)
GOOD = taken(LOG)
EVENT = json.loads(GOOD)["state"]["elections"][0]


@pytest.mark.parametrize("raw,mod_revision,reason", [
    (_doctored(GOOD, rehash=False, commit_order=[7, 7, 7]), None, "sha256 mismatch"),
    (b"{nope", None, "not JSON"),
    (b"[" * 40 + b"]" * 40, None, "nested more than"),
    (b'{"v": 1}' + b" " * MAX_SNAPSHOT_BYTES, None, "bytes, more than"),
    (_doctored(GOOD, _v=1), None, "version 1, expected 2"),
    (GOOD, LOG[-1].revision, "not before its own write"),
    (taken(LOG, run=2), None, "run 2's"),
    (_doctored(GOOD, _term=LOG[-1].revision + 1), None, "term"),
    (_doctored(GOOD, commit_order=["1"]), None, "state field commit_order"),
    (_doctored(GOOD, started=[[1]]), None, "pairs"),
    (_doctored(GOOD, last_seq=3), None, "ends at seq 3"),
    (_doctored(GOOD, max_term=10**9), None, "later than its revision"),
    (_doctored(GOOD, elections=[EVENT[:-1]]), None, "state field elections"),
    (_doctored(GOOD, elections=[json.loads(EVENT)]), None, "not stored as a string"),
    (_doctored(GOOD, completed=EVENT), None, "aggregator_elected, expected run_completed"),
    (_doctored(GOOD, rejected=[[1, "x" * 5000]]), None, "state field rejected"),
    (_doctored(json.dumps({**json.loads(GOOD), "state": {}}).encode()), None, "rounds missing"),
])
def test_a_bad_snapshot_is_ignored_with_one_warning(raw: bytes, mod_revision: int | None,
                                                    reason: str,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    key = f"/raftfl/record/runs/1/snapshot-{reason}"  # warned once per process, key and reason
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            assert snapshot.read(raw, key, 1, mod_revision or LOG[-1].revision + 1) is None
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1, warned
    assert key in warned[0] and reason in warned[0] and "full log" in warned[0]


def test_a_state_too_big_for_one_snapshot_is_refused_before_it_is_stored() -> None:
    def committed(n: int, metrics_bytes: int) -> FLState:
        state = FLState(last_seq=n, events=n)
        for r in range(1, n + 1):
            state.committed[r] = RoundCommitted(node="a", term=1, round=r, model_sha256="m",
                                                base_model="m", loss=None, accuracy=None,
                                                results=1, metrics={"x": "y" * metrics_bytes})
        return state

    def encode(state: FLState) -> str:
        return snapshot.encode(state, run=1, revision=10, term=1, node="a")

    with pytest.raises(TooBig, match="holds 20000 events"):  # counted, not even encoded
        encode(committed(20_000, 0))
    with pytest.raises(TooBig, match="bytes, more than"):
        encode(committed(400, 3000))
    assert len(encode(committed(200, 3000))) <= MAX_SNAPSHOT_BYTES


def test_restore_checks_fields_it_is_handed_directly() -> None:
    snap = Snapshot.from_json(_doctored(GOOD, events=-1))
    with pytest.raises(MalformedRecord, match="state field events"):
        snapshot.restore(snap)
