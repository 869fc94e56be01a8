"""When a latency sample is news (raftfl/core/latency.py `worth_writing`): the mean the
ranking reads, not one peer's jitter; reachability and a peer gained always, a peer gone
never."""

from __future__ import annotations

import pytest

from raftfl.core.latency import refresh_for, worth_writing
from raftfl.core.ranking import Candidate, Weights, rank

LAN = {f"p{i}": 0.1 for i in range(15)}  # 16 nodes on a LAN: 15 peers at 0.1 ms
REFRESH_S = refresh_for(Weights().fresh_s)


@pytest.mark.parametrize("rtts, write", [
    ({**LAN, "p3": 9.0}, False),  # one peer spikes to 9 ms on a busy host: mean +0.6 ms
    ({**LAN, "p3": 80.0}, True),  # one peer 80 ms away now: mean +5.3 ms, 5 points of score
    ({k: 6.0 for k in LAN}, True),  # every peer slower: the mean moved 5.9 ms
    ({**LAN, "p3": None}, True),  # unreachable is news however small its share
    ({k: v for k, v in LAN.items() if k != "p3"}, False),  # a peer left: ranked on live peers
    ({**LAN, "p15": 0.1}, True),  # a peer joined
    ({**LAN, "p15": None}, True),  # a peer joined that we cannot reach
    ({**{k: v for k, v in LAN.items() if k != "p3"}, "p1": 80.0}, True),  # left, and moved
    (dict(LAN), False),
])
def test_news_is_what_moves_the_score(rtts: dict[str, float | None], write: bool) -> None:
    assert worth_writing(dict(LAN), 100.0, rtts, 101.0, REFRESH_S) is write


def test_a_spike_and_its_return_write_nothing_but_a_lasting_shift_writes_once() -> None:
    written, ts, writes, previous = dict(LAN), 0.0, [], None
    cycles = [{**LAN, "p1": 9.0}, dict(LAN), {**LAN, "p7": 12.0}, dict(LAN)]
    cycles += [{k: 80.0 for k in LAN}, dict(LAN)]  # a one-cycle stall of the whole host
    cycles += [{k: 20.0 for k in LAN}] * 3  # the whole link got slower, and stays so
    for t, rtts in enumerate(cycles, 1):
        if worth_writing(written, ts, rtts, float(t), REFRESH_S, previous):
            written, ts = rtts, float(t)
            writes.append(t)
        previous = rtts
    assert writes == [8] and written == {k: 20.0 for k in LAN}  # one cycle after the shift


@pytest.mark.parametrize("previous, rtts, write", [
    (dict(LAN), {k: 30.0 for k in LAN}, False),  # this cycle alone moved: a stall, not news
    ({k: 30.0 for k in LAN}, {k: 30.0 for k in LAN}, True),  # two cycles in a row: news
    ({k: 30.0 for k in LAN}, dict(LAN), False),  # back where the written sample is
    (dict(LAN), {**LAN, "p3": None}, True),  # reachability is news at once ...
    (dict(LAN), {**LAN, "p15": 0.1}, True),  # ... and so is a peer joined
    (None, {k: 30.0 for k in LAN}, True),  # the first cycle after a start: no previous
])
def test_rtt_news_must_last_two_cycles(previous: dict[str, float | None] | None,
                                       rtts: dict[str, float | None], write: bool) -> None:
    assert worth_writing(dict(LAN), 100.0, rtts, 101.0, REFRESH_S, previous) is write


def test_a_peer_that_lapses_and_returns_writes_nothing() -> None:
    """A peer's lease lapses on a starved host and it comes back on a new one: its member
    record vanishes and reappears, but the written sample names it all along."""
    without = {k: v for k, v in LAN.items() if k != "p3"}
    written = dict(LAN)
    assert not any(worth_writing(written, 0.0, rtts, float(t), REFRESH_S, previous)
                   for t, (previous, rtts) in enumerate(
                       [(written, without), (without, without), (without, dict(LAN)),
                        (dict(LAN), dict(LAN))], 1))


def test_a_quiet_node_still_refreshes_inside_the_rankings_freshness() -> None:
    assert not worth_writing(dict(LAN), 0.0, dict(LAN), REFRESH_S - 0.01, REFRESH_S)
    assert worth_writing(dict(LAN), 0.0, dict(LAN), REFRESH_S, REFRESH_S)
    # a probe cycle of up to 2 s (two peers timing out at 1 s) plus 28 s of clock skew
    # between hosts still lands inside fresh_s
    assert REFRESH_S + 2.0 + 28.0 <= Weights().fresh_s


@pytest.mark.parametrize("fresh_s", [5.0, 10.0, 30.0, 120.0])
def test_the_refresh_follows_the_clusters_fresh_s(fresh_s: float) -> None:
    """A cluster whose `--weights fresh_s=N` is shorter than the default gets refreshes that
    short too, or its quiet nodes would be ranked stale (one third of fresh_s to spare)."""
    refresh = refresh_for(fresh_s)
    assert refresh == pytest.approx(fresh_s * 2 / 3)
    assert not worth_writing(dict(LAN), 0.0, dict(LAN), refresh - 0.01, refresh)
    assert worth_writing(dict(LAN), 0.0, dict(LAN), refresh, refresh)


def test_a_quiet_16_node_federation_writes_a_sample_a_node_a_minute() -> None:
    """The refresh was the largest Raft cost of a 16-node round: every 7 s from each node.
    Over 180 s of unchanged RTTs (a cycle a second), each node writes its first sample and
    two refreshes, not twenty-six."""
    written, ts, writes = None, 0.0, 0
    for t in range(180):
        if worth_writing(written, ts, dict(LAN), float(t), REFRESH_S):
            written, ts, writes = dict(LAN), float(t), writes + 1
    assert writes == 3


@pytest.mark.parametrize("behind, stale", [
    (0.0, False),
    (REFRESH_S + 2.0, False),  # a quiet node, due for its refresh, in a slow probe cycle
    (REFRESH_S + 2.0 + 28.0, False),  # ... on a host whose clock is 28 s behind
    (Weights().fresh_s + 0.01, True),  # its prober stalled (or its clock is far off)
    (120.0, True),
])
def test_a_node_is_stale_only_when_it_missed_its_refresh(behind: float, stale: bool) -> None:
    now = 1000.0
    ranked = {r.node: r for r in rank([Candidate("a", mean_rtt_ms=1.0, last_sample_ts=now),
                                       Candidate("b", mean_rtt_ms=1.0,
                                                 last_sample_ts=now - behind)])}
    assert not ranked["a"].stale and ranked["b"].stale is stale
