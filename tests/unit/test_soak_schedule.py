"""The soak's fault schedule is a pure function of its seed, and it covers the fault matrix.

A seed must replay the same faults (so a soak that found something can be rerun), and a long
enough schedule must reach every target, signal and phase. Also the small parsers the
command uses, what counts as a survivor crash, and the summary's counts.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from raftfl.lab.localcluster import NodeProc
from raftfl.lab.soak import (
    PHASES,
    REJOIN_HOLD_S,
    SIGNALS,
    TARGETS,
    Fault,
    FaultRecord,
    Plan,
    RunRecord,
    SoakOptions,
    SurvivorCrash,
    _crash,
    format_summary,
    parse_duration,
    percentile,
    schedule,
    summarise,
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
        for first in (True, False):
            for spec in filter(None, plan.holds(first).split(",")):
                phase, rnd, seconds = spec.split(":")
                assert phase in HOLD_PHASES and 1 <= int(rnd) <= plan.rounds
                assert float(seconds) > 0


REJOIN = f"round_start:4:{REJOIN_HOLD_S:g}"


@pytest.mark.parametrize(("fault", "aggregator_holds", "other_holds"), [
    # The aggregator's phases hold on the first aggregator only (a successor re-running the
    # round must not hold again); fit holds on the workers.
    (Fault("aggregator", "stop", "before_fit", 2, 0.0, 0.5, 1.0), "fit_start:2:4", ""),
    (Fault("worker", "stop", "during_fit", 1, 0.3, 0.5, 1.0), "", "fit:1:4"),
    (Fault("aggregator", "stop", "during_checkpoint", 3, 0.0, 0.5, 1.0), "checkpoint:3:4", ""),
    (Fault("worker", "stop", "between_rounds", 2, 0.3, 0.5, 1.0), "round_start:3:4", ""),
    (Fault("worker", "stop", "random", 2, 1.2, 0.5, 1.0), "", ""),
    # A SIGKILL also holds the last round on every node, so the restarted one can rejoin.
    (Fault("worker", "kill", "random", 2, 1.2, 0.5, 1.0), REJOIN, REJOIN),
    (Fault("aggregator", "kill", "before_fit", 1, 0.0, 0.5, 1.0), f"fit_start:1:4,{REJOIN}",
     REJOIN),
])
def test_holds_pin_the_phase(fault: Fault, aggregator_holds: str, other_holds: str) -> None:
    plan = Plan(1, "single", 4, (fault,))
    assert plan.holds(first_aggregator=True) == aggregator_holds
    assert plan.holds(first_aggregator=False) == other_holds


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


# -- survivor crashes and the summary, on records made by hand ---------------------------------
@pytest.mark.parametrize(("log", "crashed"), [
    ("12:00:01 [n] round 2 committed\n12:00:02 [n] final model saved\n", False),
    ("raftfl: internal error: AttributeError: 'NoneType' object has no attribute 'x'\n", True),
    ("ERROR raftfl.node.ha: HA cycle failed\nTraceback (most recent call last):\n  File x\n", True),
    ("", False),
])
def test_crash_is_an_internal_error_or_a_traceback(tmp_path: Path, log: str,
                                                   crashed: bool) -> None:
    node = NodeProc("n", "127.0.0.1", 1, tmp_path, tmp_path / "n.log", [], {})
    node.log_path.write_text(log)
    found = _crash(3, node)
    assert (found is not None) == crashed
    if found is not None:
        assert found.run == 3 and found.log == str(node.log_path)
        assert found.excerpt.splitlines()[0] in log


def _fired(run: int, kind: str, recovery: float | None, resume: float) -> FaultRecord:
    return FaultRecord(run, kind, kind, "random", victim="n", victim_role="aggregator",
                       at=100.0, failover=recovery is not None, recovery_s=recovery,
                       resume_s=resume)


def test_summary_counts_and_percentiles() -> None:
    ok = RunRecord(1, "p1", "single", 3, 4, commits=4, failovers=1,
                   faults=[_fired(1, "kill aggregator", 2.0, 5.0)])
    bad = RunRecord(2, "p2", "single", 3, 4, commits=3, failovers=1,
                    violations=["run not completed"],
                    crashes=[SurvivorCrash(2, "m", "exited with 1", "/x.log", "boom")],
                    faults=[_fired(2, "stop aggregator", 4.0, 9.0),
                            FaultRecord(2, "kill worker", "kill worker", "random",
                                        missed="the run completed first")])
    opts = SoakOptions(duration_s=60, seed=5)
    s = summarise([ok, bad], opts, 61.0, {"partition": {"count": 1, "reason": "no netns"}})
    assert (s["runs"], s["faults"], s["faults_missed"], s["failovers"]) == (2, 2, 1, 2)
    assert (s["survivor_crashes"], s["invariant_violations"]) == (1, 1)
    assert (s["recovery_p50_s"], s["recovery_p95_s"]) == (2.0, 4.0)
    assert s["per_fault"]["stop aggregator"]["faults"] == 1
    assert s["survivor_crash_logs"][0]["log"] == "/x.log" and s["seed"] == 5
    assert s["schedule"] == ["p1", "p2"]
    text = format_summary([ok, bad], s)
    assert "survivor crashes 1, invariant violations 1" in text
    assert "skipped 1 partition run(s): no netns" in text
    assert not bad.ok and ok.ok
