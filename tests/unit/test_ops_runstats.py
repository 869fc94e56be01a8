"""The metrics' and the failover timeline's derivation from a run's log (raftfl/ops/runstats.py),
and the collector that reports them (raftfl/ops/metrics.py), without etcd: failover causes,
the outage's start and recovery, refused updates by class, forged events left out, folding
in batches equal to folding at once, and the exposition parsed as Prometheus parses it."""

from __future__ import annotations

import time
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from raftfl.core.errors import RaftflError
from raftfl.core.events import (
    AggregatorElected,
    Event,
    FitResults,
    Handover,
    NodeLeft,
    RoundCommitted,
    RoundStarted,
    RunStarted,
    StepDown,
)
from raftfl.core.replay import Logged
from raftfl.core.status import NodeStatus, Published
from raftfl.ops import metrics
from raftfl.ops.context import OpsContext
from raftfl.ops.runstats import REJECT_REASONS, RunStats, reject_reason, totals

pytestmark = pytest.mark.unit

A, B, C = "10.0.0.1:5000", "10.0.0.2:5000", "10.0.0.3:5000"
TTL = 3.0


class Log:
    """Builds a log in order: each event's key created at a revision past its term."""

    def __init__(self) -> None:
        self.items: list[Logged] = []
        self.rev = 10

    def add(self, ev: Event) -> Log:
        self.rev += 1
        self.items.append(Logged(len(self.items) + 1, max(self.rev, ev.term), ev))
        return self

    def elect(self, node: str, term: int, ts: float, vacant_since: float | None = None,
              previous: str | None = None) -> Log:
        return self.add(AggregatorElected(node=node, term=term, ts=ts, flower_address="h:1",
                                          rank=0, score=1.0, revision=term, ranking=[],
                                          previous=previous, vacant_since=vacant_since))

    def round(self, node: str, term: int, rnd: int, ts: float, commit: bool = True) -> Log:
        self.add(RoundStarted(node=node, term=term, ts=ts, round=rnd, base_model=f"m{rnd - 1}",
                              clients=3))
        if commit:
            self.add(RoundCommitted(node=node, term=term, ts=ts + 1, round=rnd,
                                    model_sha256=f"m{rnd}", base_model=f"m{rnd - 1}",
                                    loss=1.0 / rnd, accuracy=0.2 * rnd, results=3))
        return self


def one_kill() -> Log:
    """A elected, round 1 commits, A is killed in round 2; B sees the vacancy at 107.0
    (lease expiry), is elected at 107.1 and starts round 2 at 107.5."""
    log = Log().add(RunStarted(node=A, rounds=3, initial_model="m0", ts=99.0))
    log.elect(A, 20, 100.0).round(A, 20, 1, 101.0).round(A, 20, 2, 103.0, commit=False)
    return log.elect(B, 40, 107.1, vacant_since=107.0, previous=A).round(B, 40, 2, 107.5)


def test_a_kill_is_one_lost_failover_with_its_recovery() -> None:
    stats = RunStats(TTL).add(one_kill().items)
    [fo] = stats.failovers
    assert (fo.cause, fo.previous, fo.node, fo.term) == ("lost", A, B, 40)
    # The vacancy minus one TTL (104.0) is later than A's last event (round 2 started at
    # 103.0): A's lease was still refreshed then, so the outage began at 104.0.
    assert fo.began == pytest.approx(104.0)
    assert fo.resumed_at == pytest.approx(107.5) and fo.recovery_s == pytest.approx(3.5)
    t = totals([stats])
    assert t.failovers == {"handover": 0, "step_down": 0, "shutdown": 0, "lost": 1}
    assert t.recoveries == (pytest.approx(3.5),) and t.rounds_committed == 2


def test_evidence_takeover_starts_the_outage_at_the_holders_last_event() -> None:
    log = Log().elect(A, 20, 100.0).round(A, 20, 1, 101.0).round(A, 20, 2, 103.0, commit=False)
    log.elect(B, 40, 103.4, vacant_since=103.3).round(B, 40, 2, 103.9)
    [fo] = RunStats(TTL).add(log.items).failovers
    assert fo.began == pytest.approx(103.0) and fo.recovery_s == pytest.approx(0.9)


@pytest.mark.parametrize("ending, cause", [
    (Handover(node=A, term=20, ts=104.0, to=B, round=1), "handover"),
    (StepDown(node=A, term=20, ts=104.0, reason="lease lost"), "step_down"),
    (NodeLeft(node=A, ts=104.0), "shutdown"),
])
def test_a_recorded_end_of_term_names_the_cause_and_the_start(ending: Event, cause: str) -> None:
    log = Log().elect(A, 20, 100.0).round(A, 20, 1, 101.0).add(ending)
    log.elect(B, 40, 104.2, vacant_since=104.1).round(B, 40, 2, 104.6)
    [fo] = RunStats(TTL).add(log.items).failovers
    assert fo.cause == cause and fo.began == pytest.approx(104.0)
    assert fo.recovery_s == pytest.approx(0.6)


def test_a_late_step_down_does_not_relabel_a_lost_term() -> None:
    """A frozen aggregator records its step-down after its successor's election: the log
    says it was lost, and a counter never moves between labels."""
    log = one_kill().add(StepDown(node=A, term=20, ts=110.0, reason="fenced"))
    assert [fo.cause for fo in RunStats(TTL).add(log.items).failovers] == ["lost"]


def test_no_recovery_sample_until_work_resumes() -> None:
    log = Log().elect(A, 20, 100.0).round(A, 20, 1, 101.0).elect(B, 40, 105.0)
    stats = RunStats(TTL).add(log.items)
    assert stats.failovers[0].resumed_at is None and totals([stats]).recoveries == ()


def test_forged_and_unelected_events_count_for_nothing() -> None:
    log = Log().elect(A, 20, 100.0).round(A, 20, 1, 101.0)
    log.add(RoundCommitted(node=C, term=999, round=2, model_sha256="x", base_model="m1",
                           loss=None, accuracy=None, results=1))  # term after its revision
    log.add(FitResults(node=C, term=30, round=2, results=0, failures=5, num_examples=0))
    stats = RunStats(TTL).add(log.items)
    assert len(stats.state.rejected) == 1
    t = totals([stats])
    assert t.rounds_committed == 1 and t.fit_failures == 5  # fit_results need no election
    assert not stats.failovers


def test_refused_updates_are_counted_by_class() -> None:
    reasons = {
        "w1": "array ['0'] has dtype <U3, not float32",
        "w2": "array conv.w has non-finite values (nan)",
        "w3": "update norm 1e+09 above the bound 100",
        "w4": "num-examples 1e9 above the 100 the node declared",
        "w5": "something new",
    }
    log = Log().elect(A, 20, 100.0).add(FitResults(node=A, term=20, round=1, results=1,
                                                   failures=5, num_examples=10, rejected=reasons))
    t = totals([RunStats(TTL).add(log.items)])
    assert t.fit_failures == 5
    assert {k: v for k, v in t.rejected.items() if v} == {
        "dtype": 1, "non_finite": 1, "norm": 1, "num_examples": 1, "other": 1}
    assert set(t.rejected) == set(REJECT_REASONS)
    assert reject_reason("array records ['a'], the instruction sent ['b']") == "structure"
    assert reject_reason("unreadable update: ValueError: x has shape") == "unreadable"


def test_folding_in_batches_equals_folding_at_once() -> None:
    items = one_kill().items
    whole = RunStats(TTL).add(items)
    for cut in range(len(items) + 1):
        parts = RunStats(TTL).add(items[:cut]).add(items[cut:])
        assert parts.failovers == whole.failovers
        assert totals([parts]) == totals([whole])


# -- the collector --------------------------------------------------------------------------
def status(now: float, **kw: Any) -> NodeStatus:
    base: dict[str, Any] = dict(
        name=B, cluster="prod", endpoints=("127.0.0.1:1",), lease_ttl=TTL, cycled_at=now - 0.2,
        cycles=9, revision=50, lease=7, lease_deadline=now + 2.5, holder=B, term=40,
        vacant_since=None, serving_term=40, run=1, last_round=2, rounds=3, paused=False,
        action="serve", sentence="serving", member=True)
    return NodeStatus(**{**base, **kw})


class FakeLedger:
    def totals(self) -> Any:
        return totals([RunStats(TTL).add(one_kill().items)])


def scrape(monkeypatch: pytest.MonkeyPatch, etcd_ok: bool = True) -> dict[str, Any]:
    now = time.monotonic()
    ctx = OpsContext(Published(status(now)), B, "prod", secured=False, clock=lambda: now)

    def quorum_status(store: Any) -> dict[str, Any]:
        if not etcd_ok:
            raise RaftflError("etcd unreachable at 127.0.0.1:1 for 5s: timeout")
        return {"etcd_leader": A, "voters": 3, "healthy_voters": 2, "tolerates": 0}

    monkeypatch.setattr(metrics, "quorum_status", quorum_status)
    monkeypatch.setattr(ctx, "ledger", lambda: FakeLedger())
    monkeypatch.setattr(metrics.NodeCollector, "_own_rtts", lambda self: {A: 0.0012, C: 0.0009})
    text, kind = metrics.render(ctx)
    assert kind.startswith("text/plain")
    return {f.name: f for f in text_string_to_metric_families(text.decode())}


def value(family: Any, suffix: str = "", **labels: str) -> float:
    for s in family.samples:
        if s.name == family.name + suffix and all(s.labels.get(k) == v for k, v in labels.items()):
            return float(s.value)
    raise AssertionError(f"no sample {family.name}{suffix} {labels}")


def test_the_exposition_parses_and_says_what_the_log_says(monkeypatch: pytest.MonkeyPatch) -> None:
    fams = scrape(monkeypatch)
    assert value(fams["raftfl_is_aggregator"], cluster="prod", node=B) == 1
    assert value(fams["raftfl_term"]) == 40 and value(fams["raftfl_run_round"]) == 2
    assert 2.0 < value(fams["raftfl_lease_remaining_seconds"]) <= 2.5
    assert value(fams["raftfl_etcd_has_leader"]) == 1
    assert value(fams["raftfl_voters_healthy"]) == 2 and value(fams["raftfl_quorum_tolerates"]) == 0
    assert value(fams["raftfl_peer_rtt_seconds"], peer=A) == pytest.approx(0.0012)
    assert value(fams["raftfl_failovers"], "_total", cause="lost") == 1
    assert value(fams["raftfl_failovers"], "_total", cause="handover") == 0
    assert value(fams["raftfl_recovery_seconds"], "_count") == 1
    assert value(fams["raftfl_recovery_seconds"], "_sum") == pytest.approx(3.5)
    assert value(fams["raftfl_recovery_seconds"], "_bucket", le="3.0") == 0
    assert value(fams["raftfl_recovery_seconds"], "_bucket", le="5.0") == 1
    assert value(fams["raftfl_rounds_committed"], "_total") == 2
    assert value(fams["raftfl_updates_rejected"], "_total", reason="norm") == 0
    assert value(fams["raftfl_paused"]) == 0 and value(fams["raftfl_etcd_reachable"]) == 1


def test_without_etcd_only_the_node_gauges_are_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    fams = scrape(monkeypatch, etcd_ok=False)
    assert value(fams["raftfl_etcd_reachable"]) == 0
    assert value(fams["raftfl_is_aggregator"]) == 1
    assert "raftfl_failovers" not in fams and "raftfl_voters" not in fams
