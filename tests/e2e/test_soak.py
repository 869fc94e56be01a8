"""A short soak through the command: real node processes, faults from seed 1's schedule.

Seed 1 opens with a SIGSTOP of the aggregator (a failover) and then a SIGKILL of a worker
that is restarted on its data dir; two runs keep the test near two minutes on 2 cores.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from raftfl.lab.commands import soak
from raftfl.lab.soak import schedule

pytestmark = [pytest.mark.slow, pytest.mark.ondemand]  # soaks run on demand, not in CI


def test_short_soak_has_a_failover_and_no_crash_or_violation(tmp_path: Path) -> None:
    summary_path = tmp_path / "soak" / "summary.json"
    result = CliRunner().invoke(soak, ["--duration", "90s", "--nodes", "3", "--seed", "1",
                                       "--max-runs", "2", "--summary-json", str(summary_path)])
    assert result.exit_code == 0, result.output
    summary = json.loads(summary_path.read_text())
    assert summary["runs"] >= 1 and summary["faults"] >= 1, summary
    assert summary["failovers"] >= 1, summary
    assert summary["survivor_crashes"] == 0, summary["survivor_crash_logs"]
    assert summary["invariant_violations"] == 0, summary["violations"]
    assert summary["recovery_p50_s"] is not None and summary["recovery_p50_s"] > 0
    # The command followed the seed's schedule, run for run.
    assert summary["schedule"] == [p.describe() for p in schedule(1, summary["runs"])]
    with open(summary_path.parent / "soak.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["run"]) for r in rows] == list(range(1, summary["runs"] + 1))
    assert (summary_path.parent / "soak.png").stat().st_size > 0
    assert f"runs {summary['runs']}, faults {summary['faults']}" in result.output
