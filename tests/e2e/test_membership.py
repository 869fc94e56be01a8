"""End to end: a training federation grows from 4 to 6 nodes and shrinks to 3, by
`raftfl node join` and `raftfl node leave`, and every round is committed once.

The joiners come in as etcd learners: the first is promoted (5 voters, the default
--max-voters), the second stays a learner until the aggregator leaves; the aggregator hands
its role over first (no round lost, no lease wait) and the learner takes its voter seat.
Then two workers leave.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from raftfl.core.events import Handover, RoundCommitted
from raftfl.core.invariants import check
from raftfl.etcd.cluster_api import list_members
from raftfl.lab.faults import at, first_term
from raftfl.lab.localcluster import LocalCluster, NodeProc, free_base_port
from raftfl.lab.testhooks import HOLD_ENV

pytestmark = pytest.mark.slow
ROUNDS = 20
WAIT = 180
SLOW_FIT = {HOLD_ENV: ",".join(f"fit:{r}:1" for r in range(1, ROUNDS + 1))}


def _voters(c: LocalCluster) -> list[str]:
    return sorted(m.name for m in list_members(c.store()) if not m.learner)


def _log(node: NodeProc) -> str:
    return node.log_path.read_text(errors="replace")


def _join(c: LocalCluster, port: int, outcome: str) -> NodeProc:
    name = f"127.0.0.1:{port}"
    data = c.workdir / f"joiner-{port}"  # type: ignore[operator]
    args = ["node", "join", "-s", name, "-n", *[n.name for n in c.nodes[:2]],
            "--cluster", c.cluster, "--data-dir", str(data), "--lease-ttl", str(c.lease_ttl),
            "--start-timeout", "120", "--exit-on-complete", "--insecure"]
    node = NodeProc(name, "127.0.0.1", port, data, c.workdir / f"joiner-{port}.log",  # type: ignore[operator]
                    args, dict(SLOW_FIT))
    c.nodes.append(node)
    c.start_node(node)
    deadline = time.monotonic() + 90
    while outcome not in _log(node):
        assert time.monotonic() < deadline and node.alive, _log(node)
        time.sleep(0.2)
    return node


def _leave(c: LocalCluster, node: NodeProc) -> str:
    others = [n.name for n in c.nodes if n is not node and n.alive]
    done = subprocess.run([sys.executable, "-m", "raftfl", "node", "leave", "-s", node.name,
                           "-n", *others, "--cluster", c.cluster], capture_output=True,
                          text=True, timeout=WAIT)
    assert done.returncode == 0, done.stderr
    removed = time.monotonic()
    assert node.proc is not None and node.proc.wait(90) == 0, _log(node)
    print(f"{done.stdout.strip()}\n  (its process ended {time.monotonic() - removed:.1f}s "
          "after the leave)")
    assert "removed from the etcd cluster" in _log(node)
    return done.stdout


def test_grow_to_six_and_shrink_to_three_while_training() -> None:
    env = {i: dict(SLOW_FIT) for i in range(4)}
    with LocalCluster(n=4, rounds=ROUNDS, cluster="t-members", node_env=env, train_size=2000,
                      test_size=400) as c:
        first_term(c)
        at(c, RoundCommitted, 1)
        base = free_base_port(2)
        started = time.monotonic()
        joined = [_join(c, base, "promoted to voter"),  # the fifth voter
                  _join(c, base + 1, "stays a learner: the cluster has 5 voters")]
        grew_s = time.monotonic() - started
        assert len(_voters(c)) == 5 and len(list_members(c.store())) == 6

        holder = c.holder()
        assert holder is not None
        aggregator = c.by_name(holder[0])
        said = _leave(c, aggregator)
        assert f"{aggregator.name} is the aggregator (term {holder[1]}): handing over" in said
        assert f"removed {aggregator.name} (voter" in said
        assert f"promoted learner {joined[1].name} to voter (5 voters)" in said  # replaced
        workers = [n for n in c.nodes if n.alive and n is not aggregator and n not in joined]
        outputs = {aggregator.name: said}
        for node in (workers[0], joined[0]):  # either may hold the role by now: it hands over
            outputs[node.name] = _leave(c, node)
        handing = [name for name, out in outputs.items() if "handing over" in out]
        assert len(_voters(c)) == 3
        assert c.state().completed is None, "the run ended before the cluster shrank"

        c.wait_event(lambda e: e.type == "run_completed", WAIT * 2, "the run to complete")
        c.wait_exit(60)
        state = c.state()
        finals = c.final_models()
        assert len(finals) == 3 and joined[1].name in finals
        verdict = check(state, ROUNDS, finals)
        assert verdict.ok, verdict.violations
        assert state.commit_order == list(range(1, ROUNDS + 1))
        handovers = [e for e in (x.event for x in c.log) if isinstance(e, Handover)]
        assert [h.node for h in handovers] == handing and handing[0] == aggregator.name
        print(f"grew 4 -> 6 in {grew_s:.1f}s; shrank to 3; {ROUNDS} rounds committed once")
