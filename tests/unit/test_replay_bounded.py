"""Issue 21, bounded restarts: the replayed state keeps per-event records for the newest
`WINDOW` only and summarises the rest (committed rounds as ranges, counts), so a training
run's snapshot stays small however long the run; the invariants still hold for rounds far
older than the window (a second commit of round 1 after 5,000 rounds is a duplicate), a
snapshot plus the events after it still equals the full replay with the windows sliding
(random logs with rollbacks, duplicates, gaps), and a snapshot of another version or with
overfull windows is ignored with one warning."""

from __future__ import annotations

import json
import logging
import random

import pytest
from test_replay_incremental import batches, random_log

from raftfl.core import replay as replay_module
from raftfl.core import snapshot
from raftfl.core.events import (
    AggregatorElected,
    CheckpointFallback,
    RoundCommitted,
    RunCompleted,
    decode,
)
from raftfl.core.invariants import check
from raftfl.core.replay import WINDOW, Logged, RoundSet, fold, replay
from raftfl.etcd.eventlog import Folded
from raftfl.lab.bench_replay import synthetic_log


@pytest.mark.parametrize("adds,spans", [
    ([], []),
    ([1, 2, 3], [(1, 3)]),
    ([3, 1, 2], [(1, 3)]),
    ([1, 3], [(1, 1), (3, 3)]),
    ([5, 1, 3, 2, 4], [(1, 5)]),
    ([10, 2, 2, 3, 7, 8, 9], [(2, 3), (7, 10)]),
])
def test_a_round_set_merges_adjacent_rounds(adds: list[int], spans: list[tuple[int, int]]) -> None:
    rs = RoundSet()
    for r in adds:
        rs.add(r)
    assert rs.spans == spans and rs.valid()
    assert list(rs) == sorted(set(adds)) and len(rs) == len(set(adds))
    assert all(r in rs for r in adds) and 0 not in rs and 11 not in rs and "1" not in rs
    assert rs.top == max(adds, default=0)


@pytest.mark.parametrize("spans,above,left,gone", [
    ([(1, 10)], 4, [(1, 4)], [5, 6, 7, 8, 9, 10]),
    ([(1, 3), (5, 6)], 3, [(1, 3)], [5, 6]),
    ([(1, 3), (5, 6)], 5, [(1, 3), (5, 5)], [6]),
    ([(1, 3)], 0, [], [1, 2, 3]),
    ([(1, 3)], 9, [(1, 3)], []),
])
def test_a_round_set_drops_the_rounds_a_fallback_undoes(
        spans: list[tuple[int, int]], above: int, left: list[tuple[int, int]],
        gone: list[int]) -> None:
    rs = RoundSet(list(spans))
    assert rs.drop_above(above) == gone and rs.spans == left


@pytest.mark.parametrize("spans,ok", [
    ([], True), ([(1, 1)], True), ([(1, 3), (5, 9)], True),
    ([(0, 2)], False), ([(3, 2)], False), ([(1, 3), (4, 5)], False), ([(4, 5), (1, 2)], False),
])
def test_a_round_set_from_a_snapshot_is_checked(spans: list[tuple[int, int]], ok: bool) -> None:
    assert RoundSet(spans).valid() is ok


def _training(n: int) -> list[Logged]:
    return [Logged(i + 1, i // 100 + 2, decode(v))
            for i, v in enumerate(synthetic_log(n, "training"))]


TRAINING = _training(20_000)  # 5,000 rounds, an election every 500


def test_a_long_training_runs_state_is_bounded_and_its_snapshot_small() -> None:
    state = replay(TRAINING)
    rounds = state.last_committed_round
    assert rounds > 4 * WINDOW and state.committed_rounds.spans == [(1, rounds)]
    assert state.commits == rounds == len(state.committed_rounds)
    assert state.starts == rounds + 1  # the log ends inside a round
    assert len(state.committed) == len(state.commit_order) == len(state.started) == WINDOW
    assert len(state.checkpoints) == WINDOW and state.election_count == 10
    assert state.commit_order == list(range(rounds - WINDOW + 1, rounds + 1))
    assert state.last_model == f"{rounds:064x}" and state.next_round == rounds + 1
    assert not (state.duplicate_commits or state.chain_breaks or state.rejected)
    small = len(snapshot.encode(replay(TRAINING[:4000]), run=1, revision=10**6, term=1, node="a"))
    big = len(snapshot.encode(state, run=1, revision=10**6, term=1, node="a"))
    assert big < 150_000 and big < 1.1 * small  # 5x the rounds, about the same size


def test_invariants_hold_for_rounds_older_than_the_window() -> None:
    state = replay(TRAINING)
    rounds = state.last_committed_round
    done = RunCompleted(node="x", term=state.max_term, rounds=rounds,
                        model_sha256=state.last_model or "")
    last = TRAINING[-1]
    ok = fold(state.snapshot(), [Logged(last.seq + 1, last.revision + 1, done)])
    assert check(ok, rounds, {"a": done.model_sha256}).ok
    assert f"[1..{rounds}] != [1..{rounds + 1}]" in check(ok, rounds + 1, {}).violations[0]
    # A second commit of round 1, long out of the window: a duplicate, not a new round.
    again = RoundCommitted(node="x", term=state.max_term, round=1, model_sha256="m",
                           base_model="0" * 64, loss=None, accuracy=None, results=1)
    dup = fold(state.snapshot(), [Logged(last.seq + 1, last.revision + 1, again)])
    assert dup.duplicate_commits == [last.seq + 1] and dup.commits == rounds
    assert dup.committed_rounds.spans == [(1, rounds)] and 1 not in dup.committed
    assert any("duplicate commits" in v for v in check(dup, rounds, {}).violations)
    # One from a term before the newest: stale, whatever the round.
    old = RoundCommitted(node="x", term=1, round=rounds + 1, model_sha256="m",
                         base_model=state.last_model or "", loss=None, accuracy=None, results=1)
    stale = fold(state.snapshot(), [Logged(last.seq + 1, last.revision + 1, old)])
    assert stale.stale_commits == [last.seq + 1] and stale.last_committed_round == rounds


def test_a_fallback_rolls_back_inside_the_window() -> None:
    state = replay(TRAINING)
    rounds, term, last = state.last_committed_round, state.max_term, TRAINING[-1]
    back = rounds - 3
    fb = CheckpointFallback(node="x", term=term, bad_sha256=f"{rounds:064x}", round=rounds,
                            fallback_round=back, fallback_sha256=f"{back:064x}", reason="bad")
    redo = RoundCommitted(node="x", term=term, round=back + 1, model_sha256="n",
                          base_model=f"{back:064x}", loss=None, accuracy=None, results=1)
    after = fold(state.snapshot(), [Logged(last.seq + 1, last.revision + 1, fb),
                                    Logged(last.seq + 2, last.revision + 2, redo)])
    assert after.rolled_back == [back + 1, back + 2, back + 3]
    assert after.committed_rounds.spans == [(1, back + 1)] and after.last_model == "n"
    assert not after.chain_breaks and not after.duplicate_commits
    assert after.commits == rounds + 1 and after.commit_order[-1] == back + 1


@pytest.mark.parametrize("seed", range(30))
def test_with_a_small_window_snapshot_plus_tail_equals_the_full_replay(
        seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The windows slide (WINDOW 3) through rollbacks, duplicates, gaps and elections."""
    monkeypatch.setattr(replay_module, "WINDOW", 3)
    monkeypatch.setattr(snapshot, "WINDOW", 3)
    rng = random.Random(seed)
    log = random_log(rng, rng.randint(20, 300))
    whole = replay(log)
    assert len(whole.committed) <= 3 and len(whole.elections) <= 3
    assert whole.committed_rounds.top == whole.last_committed_round
    cut = rng.randint(1, len(log))
    raw = snapshot.encode(replay(log[:cut]), run=1, revision=log[cut - 1].revision, term=1,
                          node="a").encode()
    found = snapshot.read(raw, f"k/small{seed}", 1, log[cut - 1].revision + 1)
    assert found is not None
    folded = Folded(found[1])
    got = folded.add([])
    for batch in batches(rng, log[cut:]):
        got = folded.add(batch)
    assert got == whole and list(got.committed) == list(whole.committed)


def _doctored(**change: object) -> bytes:
    obj = json.loads(snapshot.encode(replay(TRAINING[:2000]), run=1, revision=10**6, term=1,
                                     node="a"))
    for name, value in change.items():
        if name.startswith("_"):
            obj[name[1:]] = value
        else:
            obj["state"][name] = value
    obj["sha256"] = snapshot.digest(obj["state"])
    return json.dumps(obj).encode()


@pytest.mark.parametrize("change,reason", [
    ({"_v": 1}, "version 1, expected 2"),  # an older snapshot: the unbounded state
    ({"commit_order": list(range(1, WINDOW + 2))}, "commit_order holds more than"),
    ({"committed_rounds": [[1, 5], [6, 9]]}, "committed_rounds: not sorted"),
    ({"committed_rounds": [[1, 5]]}, "committed holds a round"),
    ({"commits": 1}, "counts are smaller"),
    ({"committed_rounds": [[1]]}, "pairs"),
])
def test_a_snapshot_of_another_version_or_overfull_is_ignored_with_one_warning(
        change: dict[str, object], reason: str, caplog: pytest.LogCaptureFixture) -> None:
    raw, key = _doctored(**change), f"/raftfl/t/runs/1/snapshot-{reason}"
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            assert snapshot.read(raw, key, 1, 10**6 + 1) is None
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and reason in warned[0] and "full log" in warned[0], warned
    assert snapshot.read(_doctored(), key, 1, 10**6 + 1) is not None  # the undoctored one


def test_an_election_out_of_the_window_still_counts_for_its_terms_events(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """`elected_terms` is kept whole: a commit of a term elected long ago is stale, never
    rejected as unelected."""
    monkeypatch.setattr(replay_module, "WINDOW", 3)
    state = replay(TRAINING)
    first = next(i.event for i in TRAINING if isinstance(i.event, AggregatorElected))
    assert first not in state.elections and len(state.elections) == 3
    assert state.election_count == len(state.elected_terms) == 10 and first.term in state.elected_terms
    last = TRAINING[-1]
    old = RoundCommitted(node="x", term=first.term, round=state.next_round, model_sha256="m",
                         base_model=state.last_model or "", loss=None, accuracy=None, results=1)
    after = fold(state.snapshot(), [Logged(last.seq + 1, last.revision + 1, old)])
    assert after.stale_commits == [last.seq + 1] and not after.rejected
