"""When a latency sample is news (raftfl/core/latency.py `worth_writing`): the mean the
ranking reads, not one peer's jitter; reachability and membership always."""

from __future__ import annotations

import pytest

from raftfl.core.latency import REFRESH_S, worth_writing
from raftfl.core.ranking import Weights

LAN = {f"p{i}": 0.1 for i in range(15)}  # 16 nodes on a LAN: 15 peers at 0.1 ms


@pytest.mark.parametrize("rtts, write", [
    ({**LAN, "p3": 9.0}, False),  # one peer spikes to 9 ms on a busy host: mean +0.6 ms
    ({**LAN, "p3": 80.0}, True),  # one peer 80 ms away now: mean +5.3 ms, 5 points of score
    ({k: 6.0 for k in LAN}, True),  # every peer slower: the mean moved 5.9 ms
    ({**LAN, "p3": None}, True),  # unreachable is news however small its share
    ({k: v for k, v in LAN.items() if k != "p3"}, True),  # a peer left
    (dict(LAN), False),
])
def test_news_is_what_moves_the_score(rtts: dict[str, float | None], write: bool) -> None:
    assert worth_writing(dict(LAN), 100.0, rtts, 101.0) is write


def test_a_spike_and_its_return_write_nothing_but_a_lasting_shift_writes_once() -> None:
    written, ts, writes = dict(LAN), 0.0, 0
    cycles = [{**LAN, "p1": 9.0}, dict(LAN), {**LAN, "p7": 12.0}, dict(LAN)]
    cycles += [{k: 20.0 for k in LAN}] * 3  # the whole link got slower, and stays so
    for t, rtts in enumerate(cycles, 1):
        if worth_writing(written, ts, rtts, float(t)):
            written, ts, writes = rtts, float(t), writes + 1
    assert writes == 1 and written == {k: 20.0 for k in LAN}


def test_a_quiet_node_still_refreshes_inside_the_rankings_freshness() -> None:
    assert not worth_writing(dict(LAN), 0.0, dict(LAN), REFRESH_S - 0.01)
    assert worth_writing(dict(LAN), 0.0, dict(LAN), REFRESH_S)
    # a probe cycle of up to 2 s (two peers timing out at 1 s) still lands inside fresh_s
    assert REFRESH_S + 2.0 < Weights().fresh_s
