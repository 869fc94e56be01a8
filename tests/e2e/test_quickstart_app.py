"""A Flower app shaped like Flower's quickstart-pytorch, on real node processes, with the
aggregator SIGKILLed in round 2: `raftfl demo --app examples/quickstart`, for FedAvg,
FedProx and FedAdam. Asserts the outcome from the demo's summary and from `raftfl history`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
APP = ROOT / "examples" / "quickstart"
SIZES = "train-size=900 test-size=200 local-epochs=1"


# CI runs FedProx only: FedAvg through Flower's own `strategy.start` is the conformance suite's
# quickstart-pytorch case, FedAdam the unmodified ServerApp below, each with the same kill.
ONDEMAND = pytest.mark.ondemand


@pytest.mark.parametrize("strategy", [pytest.param("fedavg", marks=ONDEMAND), "fedprox",
                                      pytest.param("fedadam", marks=ONDEMAND)])
def test_quickstart_app_survives_an_aggregator_kill(strategy: str, tmp_path: Path) -> None:
    _survives_a_kill(APP, strategy, tmp_path)


def test_an_unmodified_serverapp_survives_an_aggregator_kill(tmp_path: Path) -> None:
    """The same app with Flower's own `strategy.start(grid=...)`: no raftfl line at all."""
    app = tmp_path / "app"
    shutil.copytree(APP, app)
    server = app / "quickstart" / "server_app.py"
    code = server.read_text()
    unmodified = code.replace("import raftfl\n", "").replace(
        "result = raftfl.start(\n        make_strategy(run_config), grid=grid,",
        "result = make_strategy(run_config).start(\n        grid=grid,")
    assert "raftfl" not in unmodified.split('"""', 2)[2], "the app still names raftfl"
    server.write_text(unmodified)
    _survives_a_kill(app, "fedadam", tmp_path)


def _survives_a_kill(app: Path, strategy: str, tmp_path: Path) -> None:
    summary_path = tmp_path / "summary.json"
    proc = subprocess.run(
        [sys.executable, "-m", "raftfl", "demo", "--app", str(app), "--nodes", "3",
         "--rounds", "4", "--kill-aggregator-at", "2", "--dataset", "synthetic",
         "--run-config", f'strategy="{strategy}" {SIZES}', "--summary-json", str(summary_path),
         "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    summary = json.loads(summary_path.read_text())
    assert summary["ok"] and summary["committed_rounds"] == [1, 2, 3, 4]
    assert len(summary["failovers"]) == 1
    # Round 1 by the first term, round 2 (interrupted by the kill) redone by the second.
    assert summary["terms"][0] < summary["terms"][1] == summary["terms"][3]
    finals = summary["final_model_sha256"]
    assert len(finals) == 2 and len(set(finals.values())) == 1  # both survivors, same arrays
    for metrics in summary["metrics"]:  # the app's evaluate_fn and federated evaluation
        assert set(metrics["evaluate_serverapp"]) == {"accuracy", "loss"}
        assert {"eval_loss", "eval_acc"} <= set(metrics["evaluate_clientapp"])  # fraction 0.5
        assert metrics["train"]["train_loss"] > 0
    assert all(0.0 <= a <= 1.0 for a in summary["accuracy"])


def test_a_serverapp_that_always_fails_stops_its_run(tmp_path: Path) -> None:
    """A ServerApp that raises before it records anything, every time: restarted from the log
    twice, then its run is stopped with the reason (Flower marks such a run failed), and the
    nodes leave instead of retrying for ever."""
    app = tmp_path / "app"
    shutil.copytree(APP, app)
    server = app / "quickstart" / "server_app.py"
    server.write_text(server.read_text().replace(
        "    run_config = context.run_config\n",
        "    raise ValueError('broken on purpose')\n", 1))
    out = tmp_path / "out"
    (out / "tmp").mkdir(parents=True)
    proc = subprocess.run(
        [sys.executable, "-m", "raftfl", "demo", "--app", str(app), "--nodes", "2",
         "--rounds", "2", "--dataset", "synthetic", "--summary-json", str(out / "s.json"),
         "--out", str(out), "--keep"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
        env={**os.environ, "TMPDIR": str(out / "tmp")})
    assert proc.returncode != 0, proc.stdout[-3000:]
    summary = json.loads((out / "s.json").read_text())
    assert "run not completed" in summary["violations"] and summary["committed_rounds"] == []
    logs = "".join(p.read_text(errors="replace") for p in (out / "tmp").rglob("node*.log"))
    assert logs.count("restarting it from the log") == 2, logs[-3000:]
    assert "run 1 stopped: its ServerApp failed 3 times without progress (ValueError: broken " \
           "on purpose)" in logs
