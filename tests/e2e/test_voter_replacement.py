"""End to end: an 8-node federation with 5 etcd voters (--max-voters 5) and 3 etcd clients
loses its aggregator (a voter) and then a second voter, and returns to 5 healthy voters on
its own.

The survivors fail over and train on; the new aggregator removes each dead voter once it
has been unhealthy for --voter-grace, and asks the clients, one at a time, to become voters
(learner, member started, promoted). Asserted on the replayed log, on every survivor's final
model, and on etcd's member list.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from raftfl.core.events import AggregatorElected, RoundCommitted
from raftfl.core.invariants import check
from raftfl.etcd.cluster_api import list_members
from raftfl.etcd.store import Store
from raftfl.lab.faults import at, first_term
from raftfl.lab.localcluster import LocalCluster, NodeProc
from raftfl.lab.testhooks import HOLD_ENV

pytestmark = pytest.mark.slow
ROUNDS = 10
WAIT = 150
GRACE = 5


def _log(node: NodeProc) -> str:
    return node.log_path.read_text(errors="replace")


def _final(node: NodeProc) -> str | None:
    try:
        return json.loads((node.data_dir / "runs" / "1" / "result.json").read_text())[
            "final_model_sha256"]
    except (OSError, ValueError):
        return None


def _serves(client_url: str) -> bool:
    try:
        return Store.member_status(client_url.split("//", 1)[-1], 1.0).leader_id != 0
    except Exception:  # noqa: BLE001 - down
        return False


def _voters(c: LocalCluster) -> dict[str, bool]:
    """Voter name -> healthy, and no learner left."""
    members = list_members(c.store())
    if any(m.learner for m in members):
        return {}
    return {m.name: any(_serves(u) for u in m.client_urls) for m in members}


def test_two_lost_voters_are_replaced_by_clients(tmp_path: Path) -> None:
    # Node 7 (a client that is never killed) holds each fit for 1 s, so the run outlives the
    # two faults and their failover (elections only happen while a run is active). The
    # clients are --nofailover here: an 8-node start on 2 cores may move the role before
    # round 1, and the aggregator this test kills is to be a voter (test_failover.py shows a
    # client aggregating).
    hold = {7: {HOLD_ENV: ",".join(f"fit:{r}:1" for r in range(2, ROUNDS + 1))}}
    with LocalCluster(n=8, rounds=ROUNDS, cluster="t-replace", max_voters=5,
                      exit_on_complete=False, train_size=800, test_size=200, node_env=hold,
                      node_args={i: ["--nofailover"] for i in range(5, 8)},
                      extra_args=["--voter-grace", str(GRACE)], workdir=tmp_path) as c:
        started = time.monotonic()
        initial = [n.name for n in c.voters]
        clients = [n.name for n in c.nodes if n.name not in initial]
        assert initial == [n.name for n in c.nodes[:5]] and len(clients) == 3
        first_term(c)
        at(c, RoundCommitted, 1)
        holder = c.holder()
        assert holder is not None and holder[0] in initial
        c.kill(holder[0])
        new = c.wait_event(lambda e: isinstance(e, AggregatorElected) and e.term > holder[1],
                           WAIT, "the failover")
        c.wait_event(lambda e: isinstance(e, RoundCommitted) and e.term == new.term, WAIT,
                     "a commit by the new aggregator")
        second = next(n for n in initial if n not in (holder[0], new.node))
        c.kill(second)
        killed = {holder[0], second}

        c.wait_event(lambda e: e.type == "run_completed", WAIT, "the run to complete")
        c.wait_for(lambda: (v := _voters(c)) != {} and len(v) == 5 and all(v.values())
                   and not killed & set(v), WAIT, "5 healthy voters again", interval=1.0)
        replaced_s = time.monotonic() - started
        voters = _voters(c)
        promoted = sorted(set(voters) - set(initial))
        assert len(promoted) == 2 and set(promoted) <= set(clients), voters

        state = c.state()
        survivors = [n for n in c.nodes if n.name not in killed]
        c.wait_for(lambda: all(_final(n) for n in survivors), 60, "every survivor's model")
        finals = {n.name: _final(n) for n in survivors}
        verdict = check(state, ROUNDS, finals)  # type: ignore[arg-type]
        assert verdict.ok, verdict.violations
        assert state.commit_order == list(range(1, ROUNDS + 1))
        assert state.completed is not None
        assert set(finals.values()) == {state.completed.model_sha256}

        holder = c.by_name(c.holder()[0])  # type: ignore[index]
        said = _log(holder)
        for name in killed:
            assert f"voter {name} unhealthy for" in said, said
        for name in promoted:
            assert f"node {name} asked to become a voter" in said, said
            joined = _log(c.by_name(name))
            assert "asked by" in joined and "promoted to voter" in joined, joined
        print(f"replaced {sorted(killed)} by {promoted} ({replaced_s:.0f}s after the start)")
