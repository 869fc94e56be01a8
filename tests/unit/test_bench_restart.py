"""`bench replay --restart`'s pure parts: the events it adds change nothing replay decides,
and when the restarted node's API counts as caught up."""

from __future__ import annotations

from dataclasses import replace

import pytest

from raftfl.core.events import (
    AggregatorElected,
    NodeJoined,
    NodeLeft,
    RoundCommitted,
    RoundStarted,
    RunStarted,
    decode,
)
from raftfl.core.replay import Logged, replay
from raftfl.lab.bench_restart import Filler, caught_up

NODE, TERM = "127.0.0.1:5002", 4


def _run(rounds: int) -> list[Logged]:
    events = [AggregatorElected(node="a", term=TERM, flower_address="a:1", rank=0, score=0.0,
                                revision=TERM, ranking=[]),
              RunStarted(node="a", term=TERM, rounds=100, initial_model="0" * 64)]
    base = "0" * 64
    for rnd in range(1, rounds + 1):
        sha = f"{rnd:064x}"
        events += [RoundStarted(node="a", term=TERM, round=rnd, base_model=base, clients=3),
                   RoundCommitted(node="a", term=TERM, round=rnd, model_sha256=sha,
                                  base_model=base, loss=1.0, accuracy=0.5, results=3)]
        base = sha
    return [Logged(i + 1, TERM + i, ev) for i, ev in enumerate(events)]


def test_the_added_events_decode_as_churn_of_the_stopped_node_under_the_term() -> None:
    filler = Filler(NODE, TERM)
    events = [decode(filler.value(seq)) for seq in range(1, 7)]
    assert [type(e) for e in events] == [NodeJoined, NodeLeft] * 3
    assert {(e.node, e.term) for e in events} == {(NODE, TERM)}
    assert len({e.id for e in events}) == 6


def test_replay_of_a_grown_log_decides_what_the_real_one_did() -> None:
    """The first rounds, 5,000 added events, then the next rounds: the same state as
    without them, but for the counts and the last sequence number."""
    real = _run(4)
    filler = Filler(NODE, TERM)
    added = [Logged(seq, 100, decode(filler.value(seq))) for seq in range(7, 5007)]
    after = [replace(item, seq=item.seq + 5000, revision=item.revision + 100)
             for item in real[6:]]
    grown, plain = replay(real[:6] + added + after), replay(real)
    assert grown.committed_rounds == plain.committed_rounds
    assert list(grown.committed_rounds) == [1, 2, 3, 4]
    assert grown.last_model == plain.last_model
    assert not (grown.rejected or grown.duplicate_commits or grown.chain_breaks
                or grown.stale_commits)
    assert grown.events == plain.events + 5000 and grown.last_seq == plain.last_seq + 5000


BODY = {"state": "running", "role": "worker", "holder": "a", "term": TERM, "run": 1,
        "last_round": 5}


@pytest.mark.parametrize(("change", "ok"), [
    ({}, True),
    ({"last_round": 6}, True),
    ({"last_round": 4}, False),  # behind the round committed before the restart
    ({"state": "starting"}, False),
    ({"role": "vacant"}, False),
    ({"holder": "b"}, False),
    ({"term": TERM - 1}, False),
    ({"run": None}, False),
])
def test_caught_up_means_the_federations_view(change: dict[str, object], ok: bool) -> None:
    assert caught_up({**BODY, **change}, "a", TERM, 1, 5) is ok
