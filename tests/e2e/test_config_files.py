"""A cluster started only from three `node.toml` files behaves as the same cluster started
from flags.

The lab's cluster (raftfl/lab/localcluster.py) computes each node's flags, as every other
end-to-end test runs them; here each node gets a hand-written config file saying the same and
is started with `node start --config FILE` alone. Before anything starts, `--print-config` of
the file must equal `--print-config` of the flags; then the run must commit every round once
and leave the same final model on every node.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from raftfl.core.invariants import check
from raftfl.lab.localcluster import LocalCluster

pytestmark = pytest.mark.slow
ROUNDS = 3
RUN_TIMEOUT_S = 150.0
PRINT_TIMEOUT_S = 60.0


def node_file(cluster: LocalCluster, i: int) -> str:
    """Node i's config file: what LocalCluster gives it as flags (see its __post_init__)."""
    node = cluster.nodes[i]
    peers = ", ".join(f'"{n.name}"' for n in cluster.nodes if n is not node)
    text = f"""\
# node {i} of a {cluster.n}-node cluster on loopback
self = "{node.name}"
nodes = [{peers}]
aggregator = "{'self' if i == 0 else cluster.nodes[0].name}"
cluster = "{cluster.cluster}"
data-dir = "{node.data_dir}"
lease-ttl = {cluster.lease_ttl}
start-timeout = 120
max-voters = {cluster.max_voters}
exit-on-complete = true
insecure = true
"""
    if i == 0:
        text += f"""rounds = {cluster.rounds}
dataset = "{cluster.dataset}"
train-size = {cluster.train_size}
test-size = {cluster.test_size}
"""
    return text


def print_config(args: list[str]) -> str:
    proc = subprocess.run([sys.executable, "-m", "raftfl", *args, "--print-config"],
                          capture_output=True, text=True, timeout=PRINT_TIMEOUT_S)
    assert proc.returncode == 0 and not proc.stderr, proc.stderr
    return proc.stdout


def test_a_cluster_from_three_config_files_runs_as_from_flags(tmp_path: Path) -> None:
    cluster = LocalCluster(n=3, rounds=ROUNDS, cluster="t-config", train_size=1500,
                           test_size=300, workdir=tmp_path)
    try:
        for i, node in enumerate(cluster.nodes):
            path = tmp_path / f"node{i}.toml"
            path.write_text(node_file(cluster, i))
            from_flags = print_config(node.args)
            node.args = ["node", "start", "--config", str(path)]
            assert print_config(node.args) == from_flags, path.read_text()
        cluster.start()
        cluster.wait_event(lambda e: e.type == "run_completed", RUN_TIMEOUT_S,
                           "the run to complete")
        cluster.wait_exit(60)
        assert [n.proc.returncode for n in cluster.nodes] == [0, 0, 0], cluster.tail_logs()
        state = cluster.state()
        finals = cluster.final_models()
        verdict = check(state, ROUNDS, finals)
        assert verdict.ok, verdict.violations
        assert state.commit_order == list(range(1, ROUNDS + 1))
        assert set(finals) == {n.name for n in cluster.nodes}
        assert len(set(finals.values())) == 1
    finally:
        cluster.close()
