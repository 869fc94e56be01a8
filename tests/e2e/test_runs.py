"""A federation outlives its runs: real node processes, started without --exit-on-complete.

Run 1 comes from node 0's `-r`; run 2 is submitted with `raftfl run submit` while run 1
trains, so it queues behind it; both must complete with the invariants held on each run's
own log, and every node must write each run's final model. Run 3 is stopped while it runs:
its ServerApp must end at once and the nodes must stay up.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from raftfl.core.invariants import check
from raftfl.core.replay import replay
from raftfl.etcd.eventlog import EventLog
from raftfl.lab.localcluster import LocalCluster
from raftfl.node import runapp

pytestmark = pytest.mark.slow
WAIT = 240
SMALL = "train-size=600 test-size=200 num-server-rounds=2"


def cli(c: LocalCluster, command: str, *args: str) -> str:
    """`raftfl COMMAND --cluster C -n NODES... ARGS...` (a positional RUN comes last)."""
    proc = subprocess.run([sys.executable, "-m", "raftfl", *command.split(), "--cluster",
                           c.cluster, "-n", *[n.name for n in c.nodes], *args],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"raftfl {command} {' '.join(args)}: {proc.stderr}"
    return proc.stdout


def runs(c: LocalCluster) -> dict[int, dict[str, Any]]:
    return {r["run"]: r for r in json.loads(cli(c, "run list", "--json"))}


def wait_runs(c: LocalCluster, what: str, ok: Any) -> dict[int, dict[str, Any]]:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        for node in c.nodes:
            assert node.alive, f"{node.name} exited\n{c.tail_logs()}"
        listed = runs(c)
        if ok(listed):
            return listed
        time.sleep(1.0)
    raise AssertionError(f"timed out waiting for {what}: {runs(c)}\n{c.tail_logs()}")


def final_model(node_dir: Path, run: int) -> str:
    """The node's final model of `run`, checked against its .sha256 file."""
    out = node_dir / "runs" / str(run)
    result = json.loads((out / "result.json").read_text())
    npz = (out / "final_model.npz").read_bytes()
    assert (out / "final_model.npz.sha256").read_text().split()[0] == \
        hashlib.sha256(npz).hexdigest() == result["final_model_file_sha256"]
    assert result["run"] == run
    return str(result["final_model_sha256"])


def test_runs_complete_one_after_the_other_and_a_running_run_stops() -> None:
    app = str(runapp.bundled_app())
    with LocalCluster(n=3, rounds=2, cluster="t-runs", exit_on_complete=False, train_size=600,
                      test_size=200) as c:
        wait_runs(c, "node 0 to submit run 1", lambda r: 1 in r)
        second = json.loads(cli(c, "run submit", "--app", app, "--run-config", SMALL,
                                "--json"))
        assert second["run"] == 2 and second["rounds"] == 2
        listed = wait_runs(c, "runs 1 and 2 to complete",
                           lambda r: [r.get(i, {}).get("state") for i in (1, 2)]
                           == ["completed", "completed"])

        # A node writes a completed run's final model from its own loop, after etcd says so.
        c.wait_for(lambda: all((n.data_dir / "runs" / str(run) / "result.json").is_file()
                               for n in c.nodes for run in (1, 2)), 60,
                   "every node's final models of runs 1 and 2")
        store = c.store()
        for run in (1, 2):
            state = replay(EventLog(store, c.keys.run(run)).read().events)
            finals = {n.name: final_model(n.data_dir, run) for n in c.nodes}
            verdict = check(state, 2, finals)
            assert verdict.ok, (run, verdict.violations)
            assert listed[run]["final_model_sha256"] == state.completed.model_sha256  # type: ignore[union-attr]
            assert listed[run]["rounds_committed"] == listed[run]["rounds"] == 2
        # The same app twice in one process: run 2 loaded its own copy of the modules.
        assert all((n.data_dir / "apps" / "2" / "pyproject.toml").is_file() for n in c.nodes)

        summary = json.loads(cli(c, "history", "--run", "1", "--summary"))
        assert summary["run"] == 1 and summary["committed_rounds"] == [1, 2]
        assert json.loads(cli(c, "status", "--json"))["run"] == 2  # the newest by default

        # Run 3 asks for many rounds; stop it once it has committed one.
        third = cli(c, "run submit", "--app", app, "--run-config",
                    "train-size=600 test-size=200 num-server-rounds=50").strip()
        assert third == "3"
        wait_runs(c, "run 3 to commit a round", lambda r: r[3]["rounds_committed"] >= 1)
        assert cli(c, "run stop", "3").strip() == "run 3 stopped"
        listed = wait_runs(c, "run 3 to be stopped", lambda r: r[3]["state"] == "stopped")
        c.wait_for(lambda: "run 3 stopped: ServerApp ended" in "".join(
            n.log_path.read_text() for n in c.nodes), 30, "the aggregator to end run 3")
        log = EventLog(store, c.keys.run(3))
        settled = len(log.read().events)
        time.sleep(3)  # the ServerApp has ended: nothing more is recorded in run 3's log
        stopped = replay(log.read().events)
        assert stopped.events == settled and stopped.stopped is not None and not stopped.done
        assert 1 <= len(stopped.committed) < 50
        assert [listed[i]["state"] for i in (1, 2, 3)] == ["completed", "completed", "stopped"]
        assert all(n.alive for n in c.nodes), c.tail_logs()
