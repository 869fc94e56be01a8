"""End to end: 3 real nodes (etcd members + Flower) and 20 edge workers in one vworkers
process (raftfl/lab/vworkers.py), the examples/scale app, SIGKILL of the aggregator's whole
process group mid-run: the figures of `raftfl bench scale`, asserted as outcomes."""

from __future__ import annotations

from pathlib import Path

import pytest

from raftfl.lab.bench_scale import one_size

pytestmark = pytest.mark.slow
WORKERS = 20


def test_twenty_edge_workers_train_every_round_and_come_back_after_a_kill(
        tmp_path: Path) -> None:
    lines: list[str] = []
    row = one_size(WORKERS, 5, tmp_path, lines.append)
    said = "\n".join([*lines, repr(row)])  # a failure names the figures, not just the line
    assert row.get("violations") == "", said  # every round committed once
    assert row["every_worker_every_round"], said  # every worker, every round before the kill
    assert row["term_held"], said  # no unintended failover while 20 workers polled
    assert row["workers_back"] == WORKERS, said  # every worker replied in the resumed round
    assert row["failover_p100_s"] is not None and row["failover_p100_s"] < 20, said
    assert row["etcd_writes_per_round"] > 0 and row["aggregator_rss_mb"] > 0, said
    # the requests of every origin but the rounds (nodes' own counters), per second, apart
    assert row["etcd_background_per_s"] > 0, said
    assert row["etcd_all_requests_per_round"] > row["etcd_requests_per_round"], said
    assert row["ok"], said
