"""Hostile updates refused, on real node processes: of four workers, three are hostile (TEST
ONLY `RAFTFL_TEST_HOSTILE`). In round 1 one answers the train instruction with a NaN in the
model, one with arrays of the wrong shape, one claims 100,000 examples where it declared 150;
in round 2 the first sends a float64 array holding 1e300 (to a float32 model: inf once
averaged), the second claims 10**18 examples (it declared nothing: the cluster's cap, fixed by
its creator's --examples-cap, refuses it); and the third answers every evaluate instruction
with num-examples 0 (a ZeroDivisionError in Flower's weighted average, were it let through).
The run must complete with the honest worker, each round committed once, `fit_results` must
name each refused update and why (`raftfl history --json`), the aggregator's log each refused
evaluate reply, and every node's final model must be finite and the same.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from raftfl.core.invariants import check
from raftfl.lab.localcluster import LocalCluster
from raftfl.lab.testhooks import HOSTILE_ENV

pytestmark = pytest.mark.slow
WAIT = 240
PARTITION = 150  # train-size 600 split iid over 4 nodes
CAP = 100_000_000  # the creator's --examples-cap


def history(c: LocalCluster) -> list[dict]:
    proc = subprocess.run([sys.executable, "-m", "raftfl", "history", "--json", "--run", "1",
                           "--cluster", c.cluster, "-n", *[n.name for n in c.nodes]],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]


def final_arrays(node_dir: Path) -> tuple[str, dict[str, np.ndarray]]:
    result = json.loads((node_dir / "runs" / "1" / "result.json").read_text())
    with np.load(node_dir / "runs" / "1" / "final_model.npz") as npz:
        return str(result["final_model_sha256"]), {k: npz[k] for k in npz.files}


def test_hostile_updates_and_evaluations_are_refused_and_the_run_completes() -> None:
    declared = ["--max-examples", str(PARTITION)]
    with LocalCluster(n=4, rounds=2, cluster="t-hostile", train_size=600, test_size=200,
                      exit_on_complete=False,
                      # every node evaluates every round, node 3 (eval-examples=0) too
                      node_args={0: [*declared, "--examples-cap", str(CAP),
                                     "--run-config", "fraction-evaluate=1.0"], 3: declared},
                      node_env={1: {HOSTILE_ENV: "nan@1,f64=1e300@2"},
                                2: {HOSTILE_ENV: f"shape@1,examples={10**18}@2"},
                                3: {HOSTILE_ENV: "examples=100000@1,eval-examples=0"}}) as c:
        c.wait_event(lambda e: e.type == "run_completed", WAIT, "the run to complete")
        names = [n.name for n in c.nodes]
        c.wait_for(lambda: all((n.data_dir / "runs" / "1" / "result.json").is_file()
                               for n in c.nodes), 60, "every node's final model")
        events = history(c)
        state = c.state()
        finals = {n.name: final_arrays(n.data_dir) for n in c.nodes}
        logs = "\n".join(n.log_path.read_text(errors="replace") for n in c.nodes)

    verdict = check(state, 2, {name: sha for name, (sha, _) in finals.items()})
    assert verdict.ok, verdict.violations
    assert sorted(state.committed) == [1, 2]
    fits = [e for e in events if e["type"] == "fit_results"]
    assert {f["round"] for f in fits} == {1, 2}
    expected = {
        (1, names[1]): "array arrays.conv1.weight has non-finite values (nan)",
        (1, names[2]): "array arrays.conv1.weight has shape [5, 3, 5, 5], not [6, 3, 5, 5]",
        (1, names[3]): "num-examples 100000 above the 150 the node declared",
        (2, names[1]): "array arrays.conv1.weight has dtype float64, not float32",
        (2, names[2]): f"num-examples {10**18} above the cluster's cap {CAP}"}
    seen = set()
    for fit in fits:
        rejected = {(fit["round"], who): why for who, why in fit["rejected"].items()}
        assert set(rejected) <= set(expected), rejected  # honest updates are never refused
        assert fit["results"] >= 1 and fit["failures"] >= len(rejected)
        assert fit["num_examples"] == fit["results"] * PARTITION  # no inflated count counted
        for key, why in rejected.items():
            assert expected[key] in why, (key, why)
        seen |= set(rejected)
    assert seen == set(expected)  # each hostile update was refused (a slow one may miss a round)
    refused_evaluations = re.findall(r"evaluate reply from node \d+ rejected: (.*)", logs)
    assert refused_evaluations and set(refused_evaluations) == {"num-examples 0 is not a count"}
    assert "ZeroDivisionError" not in logs

    assert len({sha for sha, _ in finals.values()}) == 1  # every node, the same model
    assert state.completed is not None
    sha, arrays = finals[names[0]]  # the honest node's copy
    assert sha == state.completed.model_sha256
    assert all(np.isfinite(a).all() for a in arrays.values() if a.dtype.kind == "f")
