"""The HA core on a real 3-member etcd cluster: election, lease hand-over, and the defects
issue 7 lists (vacancy race, ranking at the delete revision, a term without its record, a
keepalive that dies, a server restarted within its term).

Nodes here are real `Node` objects against the real cluster (external-etcd mode, so no
member of their own); their cycles are driven by the test so each step can be asserted.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import EtcdCluster

from raftfl.core.address import NodeAddress
from raftfl.core.decide import Action, decide
from raftfl.core.events import AggregatorElected, RunStarted
from raftfl.core.keys import Keys, RunKeys
from raftfl.core.specs import ClusterConfig, RunSpec
from raftfl.etcd import run_store as stored_runs
from raftfl.etcd.clusterconfig import ensure
from raftfl.etcd.eventlog import EventLog
from raftfl.etcd.store import Change, Fence, LeaseGone, wait_until
from raftfl.node import runapp
from raftfl.node.election import Election
from raftfl.node.ha import Node
from raftfl.node.models import ModelFiles, Models
from raftfl.node.options import NodeOptions
from raftfl.node.package import pack
from raftfl.node.runs import RunApp, Runs
from raftfl.node.session import MemberInfo, Session


def make_node(cluster: EtcdCluster, keys: RunKeys, port: int, priority: float = 0.0,
              **opts: Any) -> Node:
    """A node wired to the cluster the way start-up wires it, minus process start-up; run 1
    (the bundled app, whose import is skipped) is submitted if it is not yet."""
    address = NodeAddress("127.0.0.1", port)
    o = NodeOptions(address=address, cluster=keys.cluster, etcd_endpoints=cluster.endpoints,
                    priority=priority, data_dir=Path(tempfile.mkdtemp(prefix="raftfl-ha-")),
                    **opts)
    node = Node(o, out=io.StringIO())
    store = cluster.store()
    node.keys = keys
    blob = pack(runapp.bundled_app())
    stored_runs.submit(store, keys, RunSpec(app="quickstart", run_config={},
                                            app_sha256=hashlib.sha256(blob).hexdigest()),
                       blob, run_id=1)
    models = Models(ModelFiles(o.dir / "models"), o.models_address, lambda: [], replicas=1)
    runs = Runs(store, keys, o.dir, models)
    spec = stored_runs.spec(store, keys, 1)
    runs.app = lambda run_id: RunApp(run_id, spec, runapp.load(None),  # type: ignore[method-assign]
                                     _done((None, None)))
    config = ensure(store, keys, ClusterConfig(rounds=3, nodes=[o.name]))
    info = MemberInfo(node=o.name, ip="127.0.0.1", client_port=port + 100,
                      flower_address=o.flower_address, priority=priority)
    node.wire(store, models, runs, config, Session(store, keys, info, o.lease_ttl,
                                                   node.lease_lost, 3600))
    return node


@pytest.fixture
def keys(etcd_cluster_module: EtcdCluster) -> RunKeys:
    return Keys(f"ha-{os.urandom(4).hex()}").run(1)


@pytest.fixture
def nodes() -> Iterator[list[Node]]:
    made: list[Node] = []
    yield made
    for node in made:
        node.stop.set()
        node.worker.stop()
        node.session.close(revoke=True)
        node.observer.stop()
        shutil.rmtree(node.opts.dir, ignore_errors=True)


def test_election_term_is_the_create_revision_and_fences(etcd_cluster_module: EtcdCluster,
                                                         keys: RunKeys) -> None:
    store = etcd_cluster_module.store()
    a, b = Election(store, keys, "a", "h:1"), Election(store, keys, "b", "h:2")
    la, lb = store.grant(30), store.grant(30)
    term = a.campaign(la)
    kv = store.get(keys.aggregator)
    assert term is not None and kv is not None and kv.create_revision == term and kv.lease == la
    assert json.loads(kv.value) == {"node": "a", "flower_address": "h:1", "term": term}
    assert b.campaign(lb) is None and b.fence is None  # occupied: no term, no fence
    assert a.campaign(la) == term  # a retried campaign that had landed is recognised
    assert a.resign() and store.get(keys.aggregator) is None
    assert not a.proclaim()  # resigned: nothing more lands
    term_b = b.campaign(lb)
    assert term_b is not None and term_b > term
    stale = Election(store, keys, "a", "h:1")
    stale.adopt(term, la)
    assert not stale.proclaim() and not stale.resign()  # the old term is fenced out
    assert store.get(keys.aggregator).create_revision == term_b  # type: ignore[union-attr]


def test_a_term_without_its_election_record_is_repaired(etcd_cluster_module: EtcdCluster,
                                                        keys: RunKeys, nodes: list[Node]) -> None:
    """Defect 4: the create landed but the append did not (crash or outage in between)."""
    node = make_node(etcd_cluster_module, keys, 23100)
    nodes.append(node)
    node.session.open()  # type: ignore[union-attr]
    term = node.election.campaign(node.session.lease)  # type: ignore[union-attr,arg-type]
    assert term is not None
    node.election.step_down()  # as after a restart of the loop: nothing in memory
    view = node.observer.observe()
    decision = decide(view, node.local())
    assert decision.action is Action.RECORD_ELECTION and decision.term == term
    node.act(decision, view)
    state, _ = node.runs.log(1).current()
    assert [e.term for e in state.elections] == [term]
    assert decide(node.observer.observe(), node.local()).action is Action.SERVE


def test_polled_vacancy_is_reranked_at_the_delete_revision(etcd_cluster_module: EtcdCluster,
                                                           keys: RunKeys, nodes: list[Node]) -> None:
    """Defect 2: everyone ranks at R, including a node that first saw the vacancy by polling."""
    store = etcd_cluster_module.store()
    me = make_node(etcd_cluster_module, keys, 23110, rank_step=60.0)
    nodes.append(me)
    me.session.open()  # type: ignore[union-attr]
    EventLog(store, keys).append(AggregatorElected(
        node="old", term=1, flower_address="h:1", rank=0, score=0.0, revision=1, ranking=[]))
    holder = store.grant(30)
    store.create(keys.aggregator, '{"node": "old", "flower_address": "h:1"}', lease=holder)
    store.revoke(holder)  # the vacancy: the key is deleted at revision R
    _, after = store.range(keys.aggregator)
    deleted_at = after  # nothing else was written in between
    # A better candidate joins after R: it must not count in the election at R.
    late = MemberInfo(node="127.0.0.1:23119", ip="127.0.0.1", client_port=1,
                      flower_address="h:9", priority=50.0)
    store.put(keys.member(late.node), late.to_json(), lease=store.grant(30))

    polled = me.observer.observe()
    assert polled.vacancy_revision is None
    assert [r.node for r in polled.ranking][0] == late.node  # by polling: ranked now
    assert decide(polled, me.local()).action is Action.WAIT_RANK

    me.observer.role_changes.put(Change(keys.aggregator, None, deleted_at, 0))  # the watch reports R
    at_r = me.observer.observe()
    assert at_r.vacancy_revision == deleted_at and at_r.ranked_at == deleted_at
    assert [r.node for r in at_r.ranking] == [me.opts.name]
    decision = decide(at_r, me.local())
    assert decision.action is Action.CAMPAIGN and f"vacancy at rev {deleted_at}" in decision.sentence


def test_a_vacancy_nobody_was_live_at_is_ranked_now(etcd_cluster_module: EtcdCluster,
                                                   keys: RunKeys, nodes: list[Node]) -> None:
    """After a quorum loss the Raft leader revokes every expired lease, the role's and every
    member record's: ranking at the vacancy's revision finds nobody, and nobody would ever
    campaign. The members that republished since are ranked instead."""
    store = etcd_cluster_module.store()
    me = make_node(etcd_cluster_module, keys, 23120, rank_step=60.0)
    nodes.append(me)
    EventLog(store, keys).append(AggregatorElected(
        node="old", term=1, flower_address="h:1", rank=0, score=0.0, revision=1, ranking=[]))
    holder = store.grant(30)
    store.create(keys.aggregator, '{"node": "old", "flower_address": "h:1"}', lease=holder)
    store.revoke(holder)  # deleted at R, when no member record exists
    _, deleted_at = store.range(keys.aggregator)
    me.session.open()  # type: ignore[union-attr] # our record comes back after R
    me.observer.role_changes.put(Change(keys.aggregator, None, deleted_at, 0))
    view = me.observer.observe()
    assert view.vacancy_revision == deleted_at and view.ranked_at > deleted_at
    assert [r.node for r in view.ranking] == [me.opts.name]
    assert decide(view, me.local()).action is Action.CAMPAIGN


def test_role_churn_never_breaks_a_cycle(etcd_cluster_module: EtcdCluster, keys: RunKeys,
                                         nodes: list[Node]) -> None:
    """Defect 1: the role watch flips the vacancy while the loop is mid-cycle."""
    store = etcd_cluster_module.store()
    node = make_node(etcd_cluster_module, keys, 23120, rank_step=600.0)
    nodes.append(node)
    node.session.open()  # type: ignore[union-attr]
    node.session.start()  # type: ignore[union-attr]  # keepalive: the test outlasts the TTL
    EventLog(store, keys).append(AggregatorElected(
        node="x", term=1, flower_address="h:1", rank=0, score=0.0, revision=1, ranking=[]))
    rival = MemberInfo(node="127.0.0.1:23129", ip="127.0.0.1", client_port=1,
                       flower_address="h:9", priority=50.0)  # ranks first: we only wait
    lease = store.grant(60)
    store.put(keys.member(rival.node), rival.to_json(), lease=lease)
    node.observer.watch()
    done = threading.Event()

    def churn() -> None:
        while not done.is_set():
            store.create(keys.aggregator, '{"node": "x", "flower_address": "h:1"}', lease=lease)
            store.delete(keys.aggregator)

    threading.Thread(target=churn, daemon=True).start()
    actions = []
    try:
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            view = node.observer.observe()
            decision = decide(view, node.local())
            node.act(decision, view)
            actions.append(decision.action)
    finally:
        done.set()
    assert len(actions) > 20
    assert set(actions) <= {Action.FOLLOW, Action.WAIT_RANK}, set(actions)
    assert Action.WAIT_RANK in actions and Action.FOLLOW in actions


def test_keepalive_survives_any_exception(etcd_cluster_module: EtcdCluster, keys: RunKeys) -> None:
    """Defect 6: an unexpected error in a refresh is a lost lease, never a dead thread."""
    store = etcd_cluster_module.store()
    lost = threading.Event()
    info = MemberInfo(node="k", ip="127.0.0.1", client_port=1, flower_address="h:1")
    session = Session(store, keys, info, 2, lost.set, 3600)
    session.open()
    first = session.lease
    real = store.keepalive

    def broken(*args: Any, **kwargs: Any) -> int:
        raise ValueError("boom")

    store.keepalive = broken  # type: ignore[method-assign]
    session.start()
    try:
        assert lost.wait(5) and session.lease is None and not session.valid
        store.keepalive = real  # type: ignore[method-assign]
        session.open()  # what the loop does on OPEN_LEASE
        assert session.lease not in (None, first)
        time.sleep(3)  # longer than the TTL: only a live keepalive thread keeps it
        assert session.valid and store.get(keys.member("k")) is not None
    finally:
        session.close()


def test_a_campaign_on_a_lease_etcd_expired_is_a_lost_lease(
        etcd_cluster_module: EtcdCluster, keys: RunKeys) -> None:
    """Soak, 3 nodes, seed 7, run 17: the etcd leader's node frozen, every lease expired in
    etcd before the keepalives saw it; the campaign's create then failed with grpc NOT_FOUND
    and the cycle logged a traceback. Now it is LeaseGone: the lease is lost, nothing else."""
    store = etcd_cluster_module.store()
    lost = threading.Event()
    info = MemberInfo(node="g", ip="127.0.0.1", client_port=1, flower_address="h:1")
    session = Session(store, keys, info, 5, lost.set, 3600)
    session.open()
    gone = session.lease
    assert gone is not None
    store.client.revoke_lease(gone)  # behind the session's back, as an expiry in etcd is
    election = Election(store, keys, "g", "h:1")
    with pytest.raises(LeaseGone):
        election.campaign(gone)
    assert election.term is None and store.get(keys.aggregator) is None
    session.gone()
    assert lost.is_set() and session.lease is None and not session.valid
    try:
        session.open()  # revokes the gone lease quietly, grants a new one
        assert session.lease not in (None, gone)
        assert election.campaign(session.lease) is not None
    finally:
        election.resign()
        session.close()


def test_server_restarted_in_its_term_resumes_after_the_old_one(
        etcd_cluster_module: EtcdCluster, keys: RunKeys, nodes: list[Node],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Defect 5: the log is re-read after the old ServerApp thread has been joined."""
    import numpy as np
    from flwr.app import Array, ArrayRecord

    from raftfl.flower import host as flower_host
    from raftfl.flower.hooks import RoundReport, TrainReport

    node = make_node(etcd_cluster_module, keys, 23130, client_wait=0.1)
    nodes.append(node)
    node.session.open()  # type: ignore[union-attr]
    started: list[int] = []

    def arrays(value: float) -> ArrayRecord:
        return ArrayRecord({"w": Array(np.full(4, value, dtype=np.float32))})

    def report(value: float) -> RoundReport:
        train = TrainReport(1, 1, 1, 0, [], None)
        return RoundReport("", train, num_rounds=3)

    class SlowHost:
        """Stands in for the ServerApp: commits a round while it is being stopped."""

        def __init__(self, server_app: Any, grid: Any, run_config: Any) -> None:
            self.grid, self.hooks, self.resume = grid, grid.hooks, grid.resume
            started.append(self.resume.next_round if self.resume else 0)
            self.state, self.error = "running", None
            self._stop = threading.Event()
            self.thread = threading.Thread(target=self._run)

        def start(self) -> SlowHost:
            self.thread.start()
            return self

        def _run(self) -> None:
            nxt = self.resume.next_round if self.resume else 0
            if nxt == 0:
                self.hooks.commit(0, arrays(0.0), report(0.0))
                nxt = 1
            self._stop.wait(30)
            time.sleep(0.5)  # a commit that lands after stop() was called
            self.hooks.commit(nxt, arrays(float(nxt)), report(float(nxt)))
            self.state = "stopped"

        def stop(self) -> None:
            self._stop.set()

        def join(self, timeout: float | None = None) -> bool:
            self.thread.join(timeout)
            return not self.thread.is_alive()

    monkeypatch.setattr(flower_host, "ServerAppHost", SlowHost)
    term = node.election.campaign(node.session.lease)  # type: ignore[union-attr,arg-type]
    assert term is not None
    for _ in range(3):  # record the election, then serve
        view = node.observer.observe()
        node.act(decide(view, node.local()), view)
    assert started == [0]
    node.aggregator.server.stop()  # type: ignore[union-attr]  # the ServerApp "ends" within its term
    node.aggregator.server.state = "failed"  # type: ignore[union-attr]
    view = node.observer.observe()
    node.act(decide(view, node.local()), view)  # restart: join the old thread, then re-read
    state, _ = node.runs.log(1).current()
    assert started == [0, 2] and state.commit_order == [1] and not state.duplicate_commits
    node.aggregator.server.stop()  # type: ignore[union-attr]
    assert node.aggregator.server.join(5)  # type: ignore[union-attr]
    state, _ = node.runs.log(1).current()
    assert state.commit_order == [1, 2] and not state.duplicate_commits
    node.aggregator.fleet.stop()  # type: ignore[union-attr]


def _done(value: Any) -> Any:
    from concurrent.futures import Future

    f: Future[Any] = Future()
    f.set_result(value)
    return f


def test_malformed_role_key_is_cleared_after_one_ttl(etcd_cluster_module: EtcdCluster,
                                                     keys: RunKeys, nodes: list[Node]) -> None:
    store = etcd_cluster_module.store()
    node = make_node(etcd_cluster_module, keys, 23140, lease_ttl=2, bootstrap="self")
    nodes.append(node)
    node.session.open()  # type: ignore[union-attr]
    store.put(keys.aggregator, "[" * 1500 + "]" * 1500)  # no lease: it would never expire
    seen = []

    def step() -> bool:
        view = node.observer.observe()
        d = decide(view, node.local())
        seen.append(d.action)
        node.act(d, view)
        return d.action is Action.CLEAR_MALFORMED

    assert wait_until(step, timeout=6, interval=0.3)
    assert seen[0] is Action.WAIT_MALFORMED and store.get(keys.aggregator) is None
    view = node.observer.observe()
    assert view.role is None and decide(view, node.local()).action is Action.CAMPAIGN


def test_fence_rejects_a_deposed_term(etcd_cluster_module: EtcdCluster, keys: RunKeys) -> None:
    store = etcd_cluster_module.store()
    old = Election(store, keys, "a", "h:1")
    term = old.campaign(store.grant(30))
    assert term is not None
    store.delete(keys.aggregator)
    new = Election(store, keys, "b", "h:2")
    assert new.campaign(store.grant(30))
    log = EventLog(store, keys)
    from raftfl.core.errors import FencedOut

    with pytest.raises(FencedOut):
        log.append(RunStarted(node="a", term=term, rounds=1, initial_model="m"),
                   fence=Fence(keys.aggregator, term))
    role = store.get(keys.aggregator)
    assert role is not None and json.loads(role.value)["node"] == "b"
