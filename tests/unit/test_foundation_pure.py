"""Pure foundation logic: replay, latency summaries and ranking. No etcd, no processes."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from raftfl.core.events import AggregatorElected, RoundCommitted, RoundStarted, RunStarted
from raftfl.core.latency import Sample, refresh_for, summarize, worth_writing
from raftfl.core.ranking import Candidate, Weights, rank
from raftfl.core.replay import Logged, replay


def elected(term: int) -> AggregatorElected:
    return AggregatorElected(node="a", term=term, flower_address="a:1", rank=0, score=0.0,
                             revision=term, ranking=[])


def history(n_rounds: int) -> list:
    """A clean run: started, two elections (terms 3 and 7; replay accepts commits only from
    elected terms), then each round started and committed on the previous model in term 7."""
    events: list = [RunStarted(node="a", rounds=n_rounds + 1, initial_model="m0"),
                    elected(3), elected(7)]
    for r in range(1, n_rounds + 1):
        events.append(RoundStarted(node="a", term=7, round=r, base_model=f"m{r - 1}", clients=3))
        events.append(RoundCommitted(node="a", term=7, round=r, model_sha256=f"m{r}",
                                     base_model=f"m{r - 1}", loss=1.0 / r, accuracy=0.5,
                                     results=3))
    return events



def test_replay_is_pure() -> None:
    logged = [Logged(i + 1, 100 + i, ev) for i, ev in enumerate(history(3))]
    snapshot = list(logged)
    first, second = replay(logged), replay(logged)
    assert first == second
    assert first is not second and first.committed is not second.committed
    assert logged == snapshot  # the input is not mutated
    assert first.commit_order == [1, 2, 3] and first.last_model == "m3"

    # And it records invariant violations instead of hiding them.
    dup = RoundCommitted(node="b", term=7, round=3, model_sha256="x", base_model="m2",
                         loss=0.0, accuracy=0.0, results=1)
    stale = RoundCommitted(node="c", term=3, round=4, model_sha256="y", base_model="m3",
                           loss=0.0, accuracy=0.0, results=1)
    state = replay([*logged, Logged(20, 200, dup), Logged(21, 201, stale)])
    assert state.duplicate_commits == [20]
    assert state.stale_commits == [21]
    assert state.committed[3].model_sha256 == "m3" and 4 not in state.committed


def test_summarize_counts_unreachable_and_drops_departed() -> None:
    samples = [
        Sample("a", 1, 10.0, {"b": 2.0, "c": None, "gone": 0.1}, "tcp"),
        Sample("a", 2, 11.0, {"b": 4.0, "c": None, "gone": 0.1}, "tcp"),
        Sample("b", 1, 10.5, {"a": 3.0, "c": 5.0, "b": 0.0}, "tcp"),
        Sample("c", 1, 9.0, {"a": None, "b": None}, "tcp"),
        Sample("gone", 1, 8.0, {"a": 0.5, "b": 0.5}, "tcp"),
    ]
    live = {"a", "b", "c"}
    out = summarize(samples, live, window=10)
    # None is unreachable, never 0 ms; a departed peer ("gone") does not count at all.
    assert out["a"].mean_ms == pytest.approx(3.0)
    assert out["a"].unreachable == 2 and out["a"].samples == 2 and out["a"].last_ts == 11.0
    assert out["b"].mean_ms == pytest.approx(4.0) and out["b"].unreachable == 0  # self ignored
    assert out["c"].mean_ms is None and out["c"].unreachable == 2
    # Pure and order-independent.
    assert summarize(list(reversed(samples)), live, 10) == out
    # Sliding window: only the newest sample of "a" counts.
    assert summarize(samples, live, window=1)["a"].mean_ms == pytest.approx(4.0)
    # Once "b" departs, its RTTs no longer enter anyone's mean.
    without_b = summarize(samples, {"a", "c"}, 10)
    assert without_b["a"].mean_ms is None and without_b["a"].unreachable == 2


def test_ranking_is_deterministic_and_penalises_correctly() -> None:
    now = 1000.0
    base = Candidate(node="x", priority=1.0, cpu_free=0.5, mem_free_mb=4096, mean_rtt_ms=2.0,
                     last_sample_ts=now)
    cands = [
        replace(base, node="c0"),
        replace(base, node="b1"),  # ties with c0 and d2: the name decides
        replace(base, node="d2"),
        replace(base, node="a", mean_rtt_ms=1.0),  # best: lowest RTT
        replace(base, node="prev"),  # held the role last time
        replace(base, node="old", last_sample_ts=now - 120),  # stale samples
        replace(base, node="nortt", mean_rtt_ms=None),  # counted as missing_rtt_ms
        replace(base, node="top", priority=5.0, nofailover=True),  # never a candidate
    ]
    expected = rank(cands, previous="prev")
    names = [r.node for r in expected]
    assert names == ["a", "b1", "c0", "d2", "old", "nortt", "prev"]
    assert "top" not in names
    by = {r.node: r for r in expected}
    assert by["prev"].previous and by["b1"].score - by["prev"].score == pytest.approx(100.0)
    assert by["old"].stale and not by["b1"].stale
    assert by["b1"].score - by["old"].score == pytest.approx(20.0)
    assert by["nortt"].rtt_ms is None and by["b1"].score - by["nortt"].score == pytest.approx(48.0)

    rng = random.Random(1234)
    for _ in range(50):
        shuffled = cands[:]
        rng.shuffle(shuffled)
        assert rank(shuffled, previous="prev") == expected

    # Without a previous holder nobody is penalised for it; nofailover only ever drops out.
    assert [r.node for r in rank(cands)][:4] == ["a", "b1", "c0", "d2"]
    assert rank([replace(base, nofailover=True)]) == []


REFRESH_S = refresh_for(Weights().fresh_s)


@pytest.mark.parametrize("last, age, rtts, write", [
    (None, 0.0, {"b": 0.2}, True),  # nothing written yet
    ({"b": 0.2}, 1.0, {"b": 3.0}, False),  # jitter on a busy host: under CHANGE_MIN_MS
    ({"b": 0.2}, REFRESH_S, {"b": 0.2}, True),  # nothing new, but due for freshness
    ({"b": 50.0}, 1.0, {"b": 60.0}, False),  # 20 %: not news
    ({"b": 50.0}, 1.0, {"b": 70.0}, True),  # 40 %
    ({"b": 0.2}, 1.0, {"b": None}, True),  # a peer became unreachable ...
    ({"b": None}, 1.0, {"b": 0.2}, True),  # ... or reachable again
    ({"b": None}, 1.0, {"b": None}, False),
    ({"b": 0.2}, 1.0, {"b": 0.2, "c": 0.2}, True),  # a new peer
    ({"b": 0.2, "c": 0.2}, 1.0, {"b": 0.2}, False),  # a departed one: ranked on live peers
])
def test_a_sample_is_written_only_when_it_says_something_new(
        last: dict[str, float | None] | None, age: float, rtts: dict[str, float | None],
        write: bool) -> None:
    assert worth_writing(last, 100.0, rtts, 100.0 + age, REFRESH_S) is write
