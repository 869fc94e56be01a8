"""End to end: `raftfl worker`, the edge worker's command, against 3 real nodes (etcd members,
Flower) running the examples/scale app. Two workers run that app and train in every round,
before and after a SIGKILL of the aggregator; a third runs a changed copy of it and is refused
in every round (its error replies are counted as failures, never as results)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from raftfl.core.events import FitResults, RoundCommitted
from raftfl.lab.bench_scale import app_dir
from raftfl.lab.faults import first_term, new_term_commit
from raftfl.lab.localcluster import LocalCluster
from raftfl.lab.procs import stop_groups

pytestmark = pytest.mark.slow
ROUNDS = 12


def _worker(c: LocalCluster, app: Path, name: str, log: Path) -> subprocess.Popen[bytes]:
    args = [sys.executable, "-m", "raftfl", "worker", "--app", str(app), "--name", name]
    for node in c.nodes:
        args += ["--node", node.api_url()]
    with open(log, "wb") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)


def test_worker_command_trains_every_round_across_a_failover_and_refuses_another_app(
        tmp_path: Path) -> None:
    changed = tmp_path / "changed"
    shutil.copytree(app_dir(), changed, ignore=shutil.ignore_patterns("__pycache__"))
    client = changed / "scale" / "client_app.py"
    client.write_text(client.read_text() + "\n# changed: another package, another sha256\n")
    # min-nodes 5: after the kill, every round waits for the two full nodes left and all
    # three workers (before it, for 5 of the 6 trainers)
    run_config = f"num-server-rounds={ROUNDS} params=1000 min-nodes=5 wait-s=60"
    with LocalCluster(n=3, rounds=ROUNDS, cluster="t-worker-cli", lease_ttl=3,
                      extra_args=["--app", str(app_dir()), "--run-config", run_config]) as c:
        procs = [_worker(c, app_dir(), "edge-a", tmp_path / "a.log"),
                 _worker(c, app_dir(), "edge-b", tmp_path / "b.log"),
                 _worker(c, changed, "edge-x", tmp_path / "x.log")]
        try:
            old = first_term(c)
            # once both good workers and edge-x are in a round: 3 full nodes' and 2 workers'
            # results, edge-x's failure
            full = c.wait_event(lambda e: isinstance(e, FitResults) and e.term == old.term
                                and (e.results, e.failures) == (5, 1), 120, "a full round")
            c.wait_event(lambda e: isinstance(e, RoundCommitted) and e.round == full.round,
                         60, "its commit")
            c.kill(old.node)
            new = new_term_commit(c, old.term)
            c.wait_event(lambda e: isinstance(e, RoundCommitted) and e.round == ROUNDS, 120,
                         "the last round")
            state = c.state()
            events = [i.event for i in list(c.log)]
        finally:
            stop_groups(procs, grace=10)
    logs = {n: (tmp_path / f"{n}.log").read_text() for n in ("a", "b", "x")}
    assert list(state.committed_rounds) == list(range(1, ROUNDS + 1)), logs
    assert not (state.duplicate_commits or state.stale_commits or state.chain_breaks)
    committed = {(e.term, e.round) for e in events if isinstance(e, RoundCommitted)}
    by_round = {e.round: e for e in events
                if isinstance(e, FitResults) and (e.term, e.round) in committed}
    # after the kill, every round waits for all 5 trainers left: 2 full nodes' and both good
    # workers' results, edge-x's failure
    assert {fit.term for fit in by_round.values()} == {old.term, new.term}
    resumed = {rnd: (fit.results, fit.failures) for rnd, fit in by_round.items()
               if fit.term == new.term}
    assert resumed and set(resumed.values()) == {(4, 1)}, (resumed, logs)
    for n in ("a", "b"):
        assert "serving run 1 (app scale)" in logs[n], logs[n]
    assert "refusing run 1's app 'scale' is" in logs["x"], logs["x"]
    assert "serving run 1 (app" not in logs["x"]
