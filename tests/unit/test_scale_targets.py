"""`raftfl bench scale` judges issue 21's targets from its rows: pure, table-tested."""

from __future__ import annotations

from typing import Any

from raftfl.lab.bench_scale import targets


def row(workers: int, **kw: Any) -> dict[str, Any]:
    base = {"workers": workers, "overhead_ms_per_worker": 1.0, "aggregator_rss_mb": 150.0,
            "mem_limit_mb": 200.0 + workers * 0.012, "failover_p90_s": 2.0,
            "failover_p100_s": 4.0, "etcd_writes_per_round": 10.0,
            "etcd_requests_per_round": 100.0, "etcd_woken_cycles_per_round": 40.0}
    return {**base, **kw}


def verdicts(rows: list[dict[str, Any]]) -> dict[str, bool]:
    return {t["what"]: t["met"] for t in targets(rows)}


def test_all_met() -> None:
    got = verdicts([row(10), row(100), row(1000)])
    assert got and all(got.values())
    assert "round overhead per worker at 1000" in got


def test_each_miss_is_named() -> None:
    got = verdicts([row(10), row(1000, overhead_ms_per_worker=2.5, aggregator_rss_mb=400.0,
                                failover_p90_s=3.5, failover_p100_s=None,
                                etcd_writes_per_round=11.5, etcd_woken_cycles_per_round=45.0)])
    missed = {k for k, v in got.items() if not v}
    assert missed == {"round overhead per worker at 1000",
                      "aggregator memory at 1000 workers (MB)",
                      "failover p90 at 1000 workers (s)", "failover p100 at 1000 workers (s)",
                      "etcd writes per round flat from 10 to 1000",
                      "etcd woken cycles per round flat from 10 to 1000"}


def test_overhead_is_judged_only_at_a_thousand() -> None:
    got = verdicts([row(10, overhead_ms_per_worker=9.0), row(100)])
    assert not any("overhead" in k for k in got)
