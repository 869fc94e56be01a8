"""A secured federation fails over like a plain one (issue 9): mutual TLS on etcd (client and
peer) and on the fleet, etcd RBAC limiting each node to /raftfl/<cluster>/, and a SIGKILL of
the aggregator mid-round. Every round is committed once and the survivors agree."""

from __future__ import annotations

import pytest

from raftfl.core.events import RoundStarted
from raftfl.core.invariants import check, failovers
from raftfl.lab.faults import at, first_term
from raftfl.lab.localcluster import LocalCluster
from raftfl.lab.testhooks import HOLD_ENV

pytestmark = pytest.mark.slow
WAIT = 150


def test_secured_cluster_survives_an_aggregator_sigkill() -> None:
    hold = {i: {HOLD_ENV: "fit:2:3"} for i in (1, 2)}  # workers are mid-fit in round 2
    with LocalCluster(n=3, rounds=3, cluster="t-sec", node_env=hold, train_size=2000,
                      test_size=400, secure=True) as c:
        try:
            _run_and_check(c)
        except Exception as exc:
            raise AssertionError(f"{exc}\n{c.tail_logs(25)}") from exc


def _run_and_check(c: LocalCluster) -> None:
    el = first_term(c)
    config = (c.nodes[0].data_dir / "etcd.yml").read_text()
    assert "https://" in config and "client-cert-auth: true" in config
    at(c, RoundStarted, 2, el.term)
    c.kill(el.node)
    c.wait_event(lambda e: e.type == "run_completed", WAIT, "the run to complete")
    c.wait_exit(60)
    state = c.state()
    survivors = {n.name for n in c.nodes} - {el.node}
    finals = c.final_models()
    assert set(finals) == survivors
    verdict = check(state, 3, finals)
    assert verdict.ok, verdict.violations
    assert state.commit_order == [1, 2, 3]
    assert state.committed[2].term > el.term
    assert len(set(finals.values())) == 1
    fos = [f for f in failovers(list(c.log), c.kills) if f.term > el.term]  # the one injected
    assert len(fos) == 1 and fos[0].failed == el.node and fos[0].recovery_s is not None
    assert fos[0].recovery_s < 20
    # The fleet was TLS too: no worker fell back to plain text (it would be refused).
    logs = "".join(n.log_path.read_text(errors="replace") for n in c.nodes)
    assert "connection from" not in logs, c.tail_logs()
