"""The soak's fault schedule is a pure function of its seed, and it covers the fault matrix.

A seed must replay the same faults (so a soak that found something can be rerun), and a long
enough schedule must reach every target, signal and phase. Also the small parsers the
command uses.
"""

from __future__ import annotations

import re

import pytest

from raftfl.lab.soak import (
    PHASES,
    REJOIN_HOLD_S,
    SIGNALS,
    TARGETS,
    Fault,
    Plan,
    parse_duration,
    percentile,
    schedule,
)

HOLD_PHASES = {"round_start", "fit_start", "fit", "checkpoint"}  # what testhooks knows


def test_same_seed_same_schedule() -> None:
    assert schedule(1, 50) == schedule(1, 50)
    assert schedule(7, 20) == schedule(7, 40)[:20]  # a longer soak replays the same prefix


def test_different_seeds_differ() -> None:
    assert schedule(1, 20) != schedule(2, 20)


def test_schedule_covers_the_matrix() -> None:
    plans = schedule(3, 300)
    faults = [f for p in plans for f in p.faults]
    assert {p.kind for p in plans} == {"single", "double", "partition"}
    assert {(f.target, f.signal) for f in faults if f.signal != "cut"} == \
        {(t, s) for t in TARGETS for s in SIGNALS}
    assert set(PHASES) <= {f.phase for f in faults}


@pytest.mark.parametrize("seed", [0, 1, 2, 99])
def test_every_plan_is_runnable(seed: int) -> None:
    for plan in schedule(seed, 100):
        for f in plan.faults:
            if f.phase != "next":
                assert 1 <= f.round <= plan.rounds - 1, plan
            assert 0 <= f.pick < 1 and f.stop_extra_s > 0 and f.delay_s >= 0
        if plan.kind == "double":
            first, second = plan.faults
            assert first.target == second.target == "aggregator"
            assert first.round <= 2 and second.phase == "next"
        if plan.kind == "partition":
            assert [f.signal for f in plan.faults] == ["cut"]
        for spec in filter(None, plan.holds().split(",")):
            phase, rnd, seconds = spec.split(":")
            assert phase in HOLD_PHASES and 1 <= int(rnd) <= plan.rounds and float(seconds) > 0


@pytest.mark.parametrize(("fault", "rounds", "holds"), [
    (Fault("aggregator", "stop", "before_fit", 2, 0.0, 0.5, 1.0), 4, "fit_start:2:4"),
    (Fault("worker", "stop", "during_fit", 1, 0.3, 0.5, 1.0), 4, "fit:1:4"),
    (Fault("aggregator", "stop", "during_checkpoint", 3, 0.0, 0.5, 1.0), 4, "checkpoint:3:4"),
    (Fault("worker", "stop", "between_rounds", 2, 0.3, 0.5, 1.0), 4, "round_start:3:4"),
    (Fault("worker", "stop", "random", 2, 1.2, 0.5, 1.0), 4, ""),
    # A SIGKILL also holds the last round, so the restarted node can rejoin in time.
    (Fault("worker", "kill", "random", 2, 1.2, 0.5, 1.0), 4, f"round_start:4:{REJOIN_HOLD_S:g}"),
])
def test_holds_pin_the_phase(fault: Fault, rounds: int, holds: str) -> None:
    assert Plan(1, "single", rounds, (fault,)).holds() == holds


def test_descriptions_name_the_fault() -> None:
    f = Fault("etcd_leader", "kill", "during_checkpoint", 3, 0.0, 0.5, 1.0)
    assert f.kind == "kill etcd_leader" and f.describe() == "kill etcd_leader during checkpoint r3"
    assert re.fullmatch(r"stop worker 1\.2 s into r2",
                        Fault("worker", "stop", "random", 2, 1.2, 0.5, 1.0).describe())


@pytest.mark.parametrize(("text", "seconds"), [
    ("90s", 90), ("30m", 1800), ("1h", 3600), ("45", 45), ("1.5m", 90), (" 2m ", 120),
])
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0s", "-5s", "3x", "m", "1m30s", "nan"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)


@pytest.mark.parametrize(("values", "q", "expected"), [
    ([], 50, None),
    ([3.0], 95, 3.0),
    ([4.0, 1.0, 3.0, 2.0], 50, 2.0),
    ([4.0, 1.0, 3.0, 2.0], 95, 4.0),
    ([float(i) for i in range(1, 21)], 95, 19.0),
    ([float(i) for i in range(1, 21)], 50, 10.0),
])
def test_percentile_is_nearest_rank(values: list[float], q: float, expected: float | None) -> None:
    assert percentile(values, q) == expected
