"""End to end: real node processes (etcd members + Flower) on loopback, real SIGKILL/SIGSTOP.

Each test asserts the outcome on the replayed log and on every node's final model.
"""

from __future__ import annotations

import pytest

from raftfl.core.events import AggregatorElected, RoundCommitted, RoundStarted, StepDown
from raftfl.core.invariants import check, failovers
from raftfl.lab.faults import at, first_term, new_term_commit
from raftfl.lab.localcluster import LocalCluster
from raftfl.lab.testhooks import EXTRA_RTT_ENV, HOLD_ENV

pytestmark = pytest.mark.slow
WAIT = 150


def finish(c: LocalCluster) -> None:
    c.wait_event(lambda e: e.type == "run_completed", WAIT, "the run to complete")
    c.wait_exit(60)


def test_sigkill_aggregator_mid_round_commits_every_round_once() -> None:
    hold = {i: {HOLD_ENV: "fit:2:3"} for i in (1, 2)}  # workers are mid-fit in round 2
    with LocalCluster(n=3, rounds=4, cluster="t-kill", node_env=hold, train_size=2000,
                      test_size=400) as c:
        el = first_term(c)
        started = at(c, RoundStarted, 2, el.term)
        c.kill(el.node)
        finish(c)
        state = c.state()
        survivors = {n.name for n in c.nodes} - {el.node}
        finals = c.final_models()
        assert set(finals) == survivors
        verdict = check(state, 4, finals)
        assert verdict.ok, verdict.violations
        assert state.commit_order == [1, 2, 3, 4]
        # Round 2 was started by the old term, then committed once, by the new term.
        new = state.committed[2]
        assert started.term == el.term and new.term > el.term and new.node in survivors
        assert state.committed[1].term == el.term
        assert len(set(finals.values())) == 1 and state.completed is not None
        assert set(finals.values()) == {state.completed.model_sha256}
        fos = failovers(list(c.log), c.kills)
        assert len(fos) == 1 and fos[0].failed == el.node and fos[0].recovery_s is not None
        assert fos[0].recovery_s < 20


def test_winner_is_the_top_ranked_node_when_latencies_differ() -> None:
    """With --max-voters 3 the fourth node is an etcd client of the three voters, and still
    the best candidate: a node without an etcd member can aggregate."""
    # TEST ONLY latency override: node 1 looks 80 ms away, node 2 40 ms, node 3 is near.
    env = {1: {EXTRA_RTT_ENV: "80", HOLD_ENV: "fit:2:2"},
           2: {EXTRA_RTT_ENV: "40", HOLD_ENV: "fit:2:2"},
           3: {HOLD_ENV: "fit:2:2"}}
    with LocalCluster(n=4, rounds=3, cluster="t-rank", node_env=env, train_size=2000,
                      test_size=400, max_voters=3) as c:
        assert [n.name for n in c.voters] == [n.name for n in c.nodes[:3]]
        el = first_term(c)
        assert c.nodes[3].etcd_pid() is None and all(n.etcd_pid() for n in c.voters)
        assert "etcd client of the 3 voters" in c.nodes[3].log_path.read_text()
        at(c, RoundStarted, 2, el.term)
        c.kill(el.node)
        elected = c.wait_event(lambda e: isinstance(e, AggregatorElected) and e.term > el.term,
                               WAIT, "the second election")
        near = c.nodes[3].name
        assert elected.node == near, elected.ranking
        assert elected.rank == 0 and elected.ranking[0]["node"] == near
        assert [r["node"] for r in elected.ranking] == [c.nodes[3].name, c.nodes[2].name,
                                                        c.nodes[1].name]
        assert el.node not in {r["node"] for r in elected.ranking}  # dead: not a candidate
        finish(c)
        assert check(c.state(), 3, c.final_models()).ok


def test_frozen_aggregator_steps_down_and_commits_nothing() -> None:
    hold = {i: {HOLD_ENV: "fit:2:2"} for i in (1, 2)}
    with LocalCluster(n=3, rounds=4, cluster="t-freeze", node_env=hold, train_size=2000,
                      test_size=400) as c:
        el = first_term(c)
        at(c, RoundStarted, 2, el.term)
        c.freeze(el.node)  # SIGSTOP: its lease expires while it sleeps
        new_commit = new_term_commit(c, el.term)
        c.thaw(el.node)  # SIGCONT after the role has moved on
        finish(c)
        state = c.state()
        events = [i.event for i in c.log]
        old_commits = [e.round for e in events if isinstance(e, RoundCommitted) and e.term == el.term]
        assert old_commits == [1]  # nothing after the freeze
        assert all(e.term >= new_commit.term for e in events
                   if isinstance(e, RoundCommitted) and e.round >= 2)
        assert any(isinstance(e, StepDown) and e.node == el.node and e.term == el.term
                   for e in events)
        finals = c.final_models()
        assert set(finals) == {n.name for n in c.nodes}  # the thawed node rejoined and finished
        verdict = check(state, 4, finals)
        assert verdict.ok, verdict.violations
