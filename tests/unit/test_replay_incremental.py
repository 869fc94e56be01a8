"""The event log's incremental fold (`Folded`, behind `EventLog.current()`) equals the full
`replay` of everything read so far, whatever the batches, and never changes a state it has
handed out. Random logs mix elections, fallbacks (rollbacks), duplicate and stale commits,
broken chains, forged terms and unelected commits, so every violation record is covered.
"""

from __future__ import annotations

import random

import pytest

from raftfl.core.events import (
    AggregatorElected,
    CheckpointFallback,
    CheckpointSaved,
    Event,
    FitResults,
    RoundCommitted,
    RoundStarted,
    RunCompleted,
    RunStarted,
    StepDown,
)
from raftfl.core.replay import FLState, Logged, fold, replay
from raftfl.etcd.eventlog import Folded


def random_log(rng: random.Random, n: int) -> list[Logged]:
    """`n` events in log order, each with a create revision at or after its term."""
    out: list[Logged] = []
    rev, term, rnd = 1, 0, 1
    for seq in range(1, n + 1):
        rev += rng.randint(1, 3)
        node = rng.choice("abc")
        kind = rng.random()
        ev: Event
        if kind < 0.08 or term == 0:
            term = rev
            ev = AggregatorElected(node=node, term=term, flower_address="h:1", rank=0,
                                   score=1.0, revision=term, ranking=[])
        elif kind < 0.12:
            ev = RunStarted(node=node, term=term, rounds=rng.randint(1, 50), initial_model="m0")
        elif kind < 0.45:
            r = rnd if rng.random() < 0.8 else rng.randint(1, rnd + 1)  # duplicates, gaps
            t = term if rng.random() < 0.85 else rng.randint(0, term)  # stale, unelected
            ev = RoundCommitted(node=node, term=t, round=r, model_sha256=f"m{r}",
                                base_model=f"m{r - 1}" if rng.random() < 0.9 else "x",
                                loss=1.0, accuracy=0.5, results=2)
            rnd += 1
        elif kind < 0.5:
            back = rng.randint(0, rnd)
            ev = CheckpointFallback(node=node, term=term, bad_sha256=f"m{rnd}", round=rnd,
                                    fallback_round=back, fallback_sha256=f"m{back}", reason="bad")
            rnd = back + 1
        elif kind < 0.6:
            ev = RoundStarted(node=node, term=term, round=rnd, base_model=f"m{rnd - 1}", clients=2)
        elif kind < 0.7:
            ev = FitResults(node=node, term=term, round=rnd, results=2, failures=0,
                            num_examples=100)
        elif kind < 0.8:
            ev = CheckpointSaved(node=node, term=term, round=rnd, sha256=f"m{rnd}", size=10,
                                 chunks=1)
        elif kind < 0.85:
            ev = StepDown(node=node, term=term + rng.choice([0, 0, 10**6]), reason="x")  # forged
        elif kind < 0.88:
            ev = RunCompleted(node=node, term=term, rounds=rnd, model_sha256=f"m{rnd - 1}")
        else:
            ev = RoundStarted(node=node, term=0, round=rnd, base_model="y", clients=1)
        out.append(Logged(seq, rev, ev))
    return out


def batches(rng: random.Random, log: list[Logged]) -> list[list[Logged]]:
    """The log cut into consecutive batches of random sizes (empty ones included)."""
    out, i = [], 0
    while i < len(log):
        size = rng.choice([0, 1, 1, 2, 5, 20])
        out.append(log[i:i + size])
        i += size
    return out


@pytest.mark.parametrize("seed", range(25))
def test_incremental_fold_equals_full_replay(seed: int) -> None:
    rng = random.Random(seed)
    log = random_log(rng, rng.randint(1, 200))
    folded, seen = Folded(), []
    handed: list[tuple[FLState, FLState]] = []
    for batch in batches(rng, log):
        state = folded.add(batch)
        seen += batch
        assert state == replay(seen)
        assert state.last_committed_round == max(state.committed_rounds, default=0)
        handed.append((state, replay(seen)))
    # A state once handed out is never changed by later folds.
    for state, expected in handed:
        assert state == expected
    assert folded.refolds == 0  # in-order batches were folded incrementally
    whole = replay(log)
    assert whole.events == len(log)
    # The random logs really exercise the violation records.
    if seed == 0:
        kinds = {"dup": 0, "stale": 0, "breaks": 0, "rolled": 0, "rejected": 0}
        for s in range(25):
            st = replay(random_log(random.Random(s), 300))
            kinds["dup"] += bool(st.duplicate_commits)
            kinds["stale"] += bool(st.stale_commits)
            kinds["breaks"] += bool(st.chain_breaks)
            kinds["rolled"] += bool(st.rolled_back)
            kinds["rejected"] += bool(st.rejected)
        assert all(kinds.values()), kinds


@pytest.mark.parametrize("seed", range(20))
def test_out_of_order_and_rewritten_events_refold(seed: int) -> None:
    """Batches that arrive shuffled, repeated or with a key rewritten still equal `replay` of
    what was seen, in log order."""
    rng = random.Random(1000 + seed)
    log = random_log(rng, rng.randint(5, 200))
    arrival = log[:]
    rng.shuffle(arrival)
    folded, seen = Folded(), {}
    for batch in batches(rng, arrival):
        extra = [rng.choice(log)] if rng.random() < 0.3 else []  # re-read unchanged
        if batch and rng.random() < 0.2:  # a hand-written overwrite of a seen key
            old = rng.choice(list(seen.values()) or batch)
            extra.append(Logged(old.seq, old.revision,
                                StepDown(node="mallory", term=0, reason="overwritten")))
        for item in batch + extra:
            seen[item.seq] = item
        state = folded.add(batch + extra)
        assert state == replay(seen[s] for s in sorted(seen))
        assert state.last_committed_round == max(state.committed_rounds, default=0)


def test_repeated_events_are_folded_once() -> None:
    log = random_log(random.Random(7), 50)
    folded = Folded()
    first = folded.add(log)
    assert folded.add(log[10:20]) is first  # nothing new: the same snapshot, no fold
    assert folded.add([]) is first
    assert folded.refolds == 0 and first == replay(log)


def test_fold_continues_replay() -> None:
    log = random_log(random.Random(3), 120)
    for cut in (0, 1, 60, 119, 120):
        assert fold(replay(log[:cut]), log[cut:]) == replay(log)


def test_snapshot_owns_its_containers() -> None:
    log = random_log(random.Random(11), 80)
    state = replay(log[:40])
    snap = state.snapshot()
    fold(state, log[40:])
    assert snap == replay(log[:40]) and state == replay(log)
