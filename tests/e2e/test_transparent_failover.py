"""`raftfl bench transparency` on real node processes: the FedAdam conformance app run twice,
node-1 SIGKILLed mid-round 3 as the aggregator and then as a worker. Asserts that both runs
completed as their scenario says, that the bench reports its figures, and that the final
models agree (FedAdam's moments survive the failover). 49 s on the 2-core machine, so it is
on demand; CI checks the same property in-process (test_flower_edge.py,
test_a_successor_continues_fedadam_with_its_moments) and on real nodes without the
comparison run (test_conformance.py)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
APP = ROOT / "examples" / "conformance" / "fedadam"


@pytest.mark.ondemand
def test_bench_transparency_reports_both_figures_for_fedadam(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "raftfl", "bench", "transparency", "--app", str(APP),
         "--rounds", "4", "--out", str(out), "--json"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    summary = json.loads(proc.stdout)
    assert (summary["app"], summary["rounds"], summary["nodes"]) == (str(APP), 4, 3)
    for key in ("max_rel_diff", "seconds"):
        assert isinstance(summary[key], float) and math.isfinite(summary[key]), key
    assert summary["max_rel_diff"] >= 0 and summary["seconds"] > 0
    assert summary["fedadam_ok"] is (summary["max_rel_diff"] <= 1e-5)
    assert summary["fedadam_ok"], summary["max_rel_diff"]  # the failover is invisible
    # FedAdam reports no epsilon: the DP figures are there, and empty.
    assert summary["epsilon_killed_aggregator"] is None
    assert summary["epsilon_killed_worker"] is None and summary["epsilon_equal"] is None
    a, b = summary["runs"]["killed_aggregator"], summary["runs"]["killed_worker"]
    assert a["completed"] and b["completed"] and not a["deviation"] and not b["deviation"]
    # Run A: node-1 committed rounds 1-2, another node 3-4; run B: one other node, one term.
    assert [r["round"] for r in a["rounds"]] == [1, 2, 3, 4] == [r["round"] for r in b["rounds"]]
    assert a["aggregators"][0] == a["victim"] and len(a["aggregators"]) == 2
    assert b["aggregators"] != [b["victim"]] and len(b["aggregators"]) == 1
    assert len({r["term"] for r in b["rounds"]}) == 1
    for name in summary["files"]:
        assert Path(name).stat().st_size > 0, name
