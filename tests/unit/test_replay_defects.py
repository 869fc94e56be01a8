"""Replay rejects forged terms and commits from unelected terms (issue 7, defect 9).

An event's term is the create revision of the role key when its writer was elected, so it
can never exceed the create revision of the event's own key. Before the fix, one hand-written
event with a huge term raised `max_term`, and every later real commit was "stale".
"""

from __future__ import annotations

import pytest

from raftfl.core.events import (
    AggregatorElected,
    CheckpointFallback,
    Event,
    RoundCommitted,
    RoundStarted,
    RunCompleted,
    RunStarted,
    StepDown,
)
from raftfl.core.invariants import check
from raftfl.core.replay import Logged, replay


def elected(term: int, node: str = "a") -> AggregatorElected:
    return AggregatorElected(node=node, term=term, flower_address="h:1", rank=0, score=1.0,
                             revision=term, ranking=[])


def commit(rnd: int, term: int, node: str = "a") -> RoundCommitted:
    return RoundCommitted(node=node, term=term, round=rnd, model_sha256=f"m{rnd}",
                          base_model=f"m{rnd - 1}", loss=1.0, accuracy=0.5, results=1)


def log_of(*items: tuple[int, Event]) -> list[Logged]:
    """(create revision, event) pairs in log order."""
    return [Logged(seq, rev, ev) for seq, (rev, ev) in enumerate(items, 1)]


START = (11, RunStarted(node="a", term=10, rounds=3, initial_model="m0"))


def test_a_forged_term_does_not_make_later_commits_stale() -> None:
    log = log_of((10, elected(10)), START, (12, commit(1, 10)),
                 # etcdctl put of a step_down claiming a huge term, at revision 13
                 (13, StepDown(node="mallory", term=10**9, reason="forged")),
                 (14, commit(2, 10)), (20, elected(19, "b")), (21, commit(3, 19, "b")),
                 (22, RunCompleted(node="b", term=19, rounds=3, model_sha256="m3")))
    state = replay(log)
    assert state.commit_order == [1, 2, 3]
    assert state.stale_commits == []
    assert state.max_term == 19
    assert [seq for seq, _ in state.rejected] == [4]
    assert "claims term 1000000000" in state.rejected[0][1]
    assert state.done and state.step_downs == []


@pytest.mark.parametrize("forged", [
    RoundCommitted(node="m", term=500, round=1, model_sha256="x", base_model="m0", loss=0.0,
                   accuracy=1.0, results=9),
    RoundStarted(node="m", term=500, round=1, base_model="m0", clients=1),
    elected(500, "m"),
    RunCompleted(node="m", term=500, rounds=3, model_sha256="x"),
])
def test_any_event_claiming_a_term_after_its_own_creation_is_rejected(forged: Event) -> None:
    state = replay(log_of((10, elected(10)), START, (30, forged), (31, commit(1, 10))))
    assert [seq for seq, _ in state.rejected] == [3]
    assert state.commit_order == [1] and state.committed[1].model_sha256 == "m1"
    assert not state.done and state.elected_terms == {10}


@pytest.mark.parametrize("event", [
    commit(1, 15),
    CheckpointFallback(node="x", term=15, bad_sha256="m1", round=1, fallback_round=0,
                       fallback_sha256="m0", reason="forged"),
    RunCompleted(node="x", term=15, rounds=3, model_sha256="m1"),
    commit(1, 0),  # unfenced: no aggregator wrote it
])
def test_aggregator_events_count_only_from_an_elected_term(event: Event) -> None:
    state = replay(log_of((10, elected(10)), START, (20, event)))
    assert [seq for seq, _ in state.rejected] == [3]
    assert "has no aggregator_elected" in state.rejected[0][1]
    assert state.committed == {} and state.fallbacks == [] and not state.done


def test_an_election_after_the_fact_does_not_legitimise_earlier_commits() -> None:
    state = replay(log_of(START, (12, commit(1, 12)), (13, elected(12)), (14, commit(1, 12))))
    assert [seq for seq, _ in state.rejected] == [2]
    assert state.commit_order == [1] and state.duplicate_commits == []


def test_an_election_without_a_term_is_rejected() -> None:
    state = replay(log_of(START, (12, elected(0)), (13, commit(1, 0))))
    assert [seq for seq, _ in state.rejected] == [2, 3]
    assert state.elections == []


def test_the_invariant_checker_reports_rejected_events() -> None:
    clean = log_of((10, elected(10)), START, (12, commit(1, 10)), (13, commit(2, 10)),
                   (14, commit(3, 10)), (15, RunCompleted(node="a", term=10, rounds=3,
                                                          model_sha256="m3")))
    assert check(replay(clean), 3, {"a": "m3"}).ok
    tampered = [*clean, Logged(99, 50, StepDown(node="z", term=51, reason="forged"))]
    verdict = check(replay(tampered), 3, {"a": "m3"})
    assert not verdict.ok
    assert any("rejected by replay" in v and "seq 99" in v for v in verdict.violations)
