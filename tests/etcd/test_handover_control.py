"""`raftfl aggregator handover`, `raftfl pause` and `raftfl resume` against a real etcd cluster:
the request keys they write, the events they record, their refusals (one line, exit 1) and
what `raftfl status` shows. The nodes' side is tested end to end (tests/e2e/test_handover.py).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time

import pytest
from test_ha_core import make_node, nodes  # noqa: F401 - the fixture that stops the nodes

from raftfl import control
from raftfl.core.errors import RaftflError
from raftfl.core.events import FailoverPaused, FailoverResumed
from raftfl.core.keys import Keys
from raftfl.core.maintenance import HandoverRequest
from raftfl.core.member_record import MemberInfo
from raftfl.core.specs import ClusterConfig, RunSpec
from raftfl.etcd import handover, run_store
from raftfl.etcd.eventlog import EventLog
from raftfl.etcd.store import Store, wait_until
from raftfl.inspection import cluster_status, format_status
from raftfl.node.election import Election

A, B, C, GONE = "127.0.0.1:21000", "127.0.0.1:21001", "127.0.0.1:21002", "127.0.0.1:21003"
TIMEOUT_S = 60


def cli(endpoints: list[str], cluster: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "raftfl", *args, "--endpoints",
                           ",".join(endpoints), "--cluster", cluster],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=TIMEOUT_S)


@pytest.fixture
def keys_run(etcd_cluster_module):
    return Keys(f"ha-{os.urandom(4).hex()}").run(1)


def one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    where = f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, where
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("raftfl: error: "), where
    assert all(n in lines[0] for n in needles), where


def federation(store: Store, keys: Keys) -> Election:
    """Three live member records, run 1, and A holding the role on a lease of its own."""
    for name, prio in ((A, 0.0), (B, 0.0), (C, 5.0)):  # C ranks first (priority)
        store.put(keys.member(name), MemberInfo(node=name, ip="127.0.0.1", client_port=21100,
                                                flower_address="127.0.0.1:21200",
                                                priority=prio).to_json())
    blob = b"app"
    run_store.submit(store, keys, RunSpec(app="a", app_sha256=hashlib.sha256(blob).hexdigest(),
                                     run_config={}), blob)
    election = Election(store, keys, A, "127.0.0.1:21200")
    assert election.campaign(store.grant(60)) is not None
    return election


def test_handover_request_refusals_and_the_new_term(etcd_cluster) -> None:
    keys = Keys("c-hand")
    store = etcd_cluster.store()
    eps = etcd_cluster.endpoints
    one_line_error(cli(eps, keys.cluster, "aggregator", "handover", "--wait", "0"),
                   "no aggregator holds the role")
    election = federation(store, keys)
    term = election.term
    assert term is not None
    # known (in the etcd member list? no: by its member record), unknown, not alive, self
    one_line_error(cli(eps, keys.cluster, "aggregator", "handover", "--to", "10.1.1.1:1"),
                   "unknown node 10.1.1.1:1")
    store.put(keys.config, ClusterConfig(rounds=3, nodes=[A, B, C, GONE]).to_json())
    one_line_error(cli(eps, keys.cluster, "aggregator", "handover", "--to", GONE),
                   f"{GONE} is not alive")
    one_line_error(cli(eps, keys.cluster, "aggregator", "handover", "--to", A),
                   f"{A} already holds the aggregator role")
    assert store.get(keys.handover) is None  # a refusal writes nothing

    # Without --to: the best-ranked other node (C, by priority); the request names the term.
    proc = cli(eps, keys.cluster, "aggregator", "handover", "--wait", "0")
    assert proc.returncode == 0, proc.stderr
    assert f"handover of term {term} from {A} to {C} (best-ranked) requested" in proc.stdout
    req = HandoverRequest.from_json(store.get(keys.handover).value)
    assert (req.holder, req.term, req.to, req.ranked) == (A, term, C, True)
    one_line_error(cli(eps, keys.cluster, "aggregator", "handover", "--to", B),
                   f"a handover of term {term} to {C} is already under way")
    status = cluster_status(eps, keys.cluster)
    assert status["handover"]["to"] == C and status["paused"] is None
    assert f"handover: term {term} of {A} to {C} requested" in format_status(status)

    # The holder resigns and C wins: the waiter reports the new term.
    requested = handover.Requested(req, 0, time.monotonic())
    assert handover.wait_handover(store, keys, requested, 0.2) is None
    assert election.resign()
    new = Election(store, keys, C, "127.0.0.1:21200")
    new_term = new.campaign(store.grant(60))
    done = handover.wait_handover(store, keys, requested, 5.0)
    assert done is not None and (done.node, done.term) == (C, new_term)

    # A request for a term that has ended is refused (the guard), not written.
    with pytest.raises(RaftflError, match="already holds"):
        handover.request_handover(store, keys, C, "t")
    stale = handover.request_handover(store, keys, B, "t")  # replaces the stale request of A
    assert stale.request.term == new_term and stale.request.holder == C


def test_pause_and_resume_are_recorded_and_idempotent(etcd_cluster) -> None:
    keys = Keys("c-pause")
    store = etcd_cluster.store()
    eps = etcd_cluster.endpoints
    federation(store, keys)
    assert cli(eps, keys.cluster, "resume").stdout.strip() == "failover is not paused"
    proc = cli(eps, keys.cluster, "pause", "--reason", "etcd upgrade")
    assert proc.returncode == 0, proc.stderr
    since = store.get(keys.paused).create_revision
    assert proc.stdout.strip() == (
        f"failover paused at revision {since}: a vacant aggregator role stays vacant until "
        f"`raftfl resume`; aggregator {A} (term {store.get(keys.aggregator).create_revision}) "
        "keeps serving")
    again = cli(eps, keys.cluster, "pause")
    assert again.stdout.strip() == f"failover is already paused (since revision {since})"
    status = cluster_status(eps, keys.cluster)
    assert status["paused"]["since_revision"] == since and status["paused"]["reason"] == \
        "etcd upgrade"
    assert f"failover: PAUSED since revision {since} by " in format_status(status)

    proc = cli(eps, keys.cluster, "resume")
    assert proc.returncode == 0 and proc.stdout.startswith(
        f"failover resumed (paused since revision {since}, "), proc.stdout + proc.stderr
    assert store.get(keys.paused) is None
    assert cluster_status(eps, keys.cluster)["paused"] is None
    events = [i.event for i in EventLog(store, keys.run(1)).read().events]
    paused = [e for e in events if isinstance(e, FailoverPaused)]
    resumed = [e for e in events if isinstance(e, FailoverResumed)]
    assert len(paused) == 1 and paused[0].revision == since and paused[0].reason == "etcd upgrade"
    assert len(resumed) == 1 and resumed[0].revision == since and resumed[0].paused_s is not None

    # A malformed pause record is ignored by the nodes; `raftfl pause` replaces it.
    store.put(keys.paused, "{not json")
    assert "malformed pause record" in format_status(cluster_status(eps, keys.cluster))
    assert cli(eps, keys.cluster, "pause").stdout.startswith("failover paused at revision")


def test_nodes_hand_over_at_once_and_fill_no_vacancy_while_paused(
        etcd_cluster_module, keys_run, nodes) -> None:  # noqa: F811
    """Real `Node` objects (external etcd; cycles driven here, no ServerApp): the holder
    resigns on a request, the named node campaigns at once while a third one waits for it;
    while paused, a vacancy stays vacant until resume."""
    from raftfl.core.decide import Action, decide
    from raftfl.core.events import AggregatorElected, Handover

    keys = keys_run
    store = etcd_cluster_module.store()
    a, b, c = (make_node(etcd_cluster_module, keys, port, lease_ttl=10,
                         bootstrap="self" if port == 23150 else "auto")
               for port in (23150, 23151, 23152))
    nodes.extend([a, b, c])
    for n in (a, b, c):
        n.session.open()

    def cycle(n):  # one observe/decide/act, as the loop runs it
        view = n.observer.observe()
        decision = decide(view, n.local())
        n.act(decision, view)
        return decision

    assert cycle(a).action is Action.CAMPAIGN
    term = a.election.term
    assert cycle(a).action is Action.SERVE and a.aggregator.server is not None
    server = a.aggregator.server
    assert wait_until(lambda: server.state == "failed", 10.0)  # the stand-in app is None
    req = handover.request_handover(store, keys, b.opts.name, "t")
    assert req.request.term == term

    d = cycle(a)  # nothing in flight: record `handover`, resign
    assert d.action is Action.HAND_OVER and f"handover of term {term} to {b.opts.name}" in \
        d.sentence
    assert store.get(keys.aggregator) is None
    assert not a.runs.log(1).current()[0].step_downs  # a handover is no step-down
    logged = [i.event for i in EventLog(store, keys).read().events]
    assert any(isinstance(e, Handover) and e.term == term and e.to == b.opts.name
               for e in logged)
    assert cycle(a).action is Action.WAIT_HANDOVER  # the old holder waits for the target
    assert cycle(c).action is Action.WAIT_HANDOVER  # so does everyone else
    d = cycle(b)
    assert d.action is Action.CAMPAIGN and "handover from" in d.sentence
    new_term = b.election.term
    assert new_term is not None and new_term > term
    assert store.get(keys.handover) is None  # served its purpose: the new holder cleared it
    elected = [i.event for i in EventLog(store, keys).read().events
               if isinstance(i.event, AggregatorElected)]
    assert [e.node for e in elected] == [a.opts.name, b.opts.name]
    assert cycle(a).action is Action.FOLLOW and cycle(c).action is Action.FOLLOW

    # Maintenance mode: b's node dies; nobody fills the vacancy until resume.
    control.pause(store, keys, "t")
    b.session.close(revoke=True)  # the role key and b's member record go with its lease
    for n in (a, c):
        d = cycle(n)
        assert d.action is Action.PAUSED and "not campaigning" in d.sentence, d.sentence
    assert store.get(keys.aggregator) is None
    control.resume(store, keys, "t")
    actions = [cycle(n).action for n in (a, c)]  # the rank clock starts at the resume
    assert Action.CAMPAIGN in actions, actions
    kv = store.get(keys.aggregator)
    assert kv is not None and kv.create_revision > new_term
