"""One raftfl node and its HA loop: observe, decide, act.

Like Patroni's `ha.py`, the loop is level-triggered. Each cycle is exactly three steps: the
`Observer` reads etcd at one revision into a frozen `View`, the pure `decide()`
(raftfl/core/decide.py) returns one action, its sentence and the cycle's housekeeping
(`Chore`s), and `act()` carries out the chores and then the action. The sentence is logged
when it changes.

    role vacant     -> rank candidates at the vacancy's revision; the node at rank k
                       campaigns after k * rank_step seconds (create-if-absent)
    role is mine    -> record the election in the run's log if missing, then serve the
                       rounds that remain (raftfl/node/aggregator.py)
    role is theirs  -> train for them (raftfl/node/worker.py), and stop serving if we were
    handover asked  -> (the holder) finish the round in flight, record `handover`, resign;
                       the named node campaigns at once, the others wait for it
    failover paused -> fill no vacancy, take nothing over on evidence; the holder serves on
    no run left     -> wait for the next `raftfl run submit` (with --exit-on-complete:
                       fetch and verify the final model, then leave)

The rooms: start-up and shutdown (raftfl/node/lifecycle.py), the observer, the aggregator
role, the worker role, the chores (raftfl/node/housekeeping.py), voter upkeep
(raftfl/node/voters.py). Each gets a `Shell`, never the node.

One thread owns the node's state: this loop. Watch threads only queue changes and wake it;
the probe thread publishes immutable evidence; the keepalive thread swaps in an immutable
lease state (and stops a server whose lease ran out, before etcd says so); the worker thread
writes only the worker role's own state; the HTTP API (raftfl/ops) only reads the immutable
snapshot each cycle ends by publishing (`published`). Missing a wake-up costs at most one
`LOOP_WAIT_S`.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from typing import TextIO

from raftfl import signing
from raftfl.core.decide import Action, Chore, Decision, Local, View, decide
from raftfl.core.errors import FencedOut, NodeFatal, RaftflError
from raftfl.core.events import NodeJoined, NodeLeft
from raftfl.core.keys import Keys
from raftfl.core.member_record import MemberInfo
from raftfl.core.role import RoleHolder
from raftfl.core.specs import ClusterConfig
from raftfl.core.status import NodeStatus, Published
from raftfl.etcd import signers
from raftfl.etcd.member import EtcdMember, wait_healthy
from raftfl.etcd.store import CreateResult, EtcdNoSpace, EtcdUnavailable, LeaseGone, Store
from raftfl.net.origin import origin
from raftfl.node import lifecycle, runapp
from raftfl.node.aggregator import AggregatorRole
from raftfl.node.election import Election
from raftfl.node.faults import NO_FAULTS, FaultHooks
from raftfl.node.housekeeping import Housekeeping
from raftfl.node.models import Models, ModelServer, committed_models
from raftfl.node.observer import Observer
from raftfl.node.options import NodeOptions
from raftfl.node.runs import Runs
from raftfl.node.session import Session
from raftfl.node.shell import Shell, Voice
from raftfl.node.voters import Voters
from raftfl.node.worker import WorkerRole, WorkerRunner

log = logging.getLogger(__name__)

LOOP_WAIT_S = 1.0
MAX_BACKOFF_S = 10.0  # a failing cycle is retried after 1, 2, 4, 8, then every 10 s
WORKER_STOP_S = 30.0  # how long a fit in flight gets to end when the node stops


class Node:
    def __init__(self, opts: NodeOptions, out: TextIO | None = None,
                 hooks: FaultHooks = NO_FAULTS):
        self.opts = opts
        self.keys = Keys(opts.cluster)
        self.say = Voice(opts.name, out)
        self.hooks = hooks
        self.shell: Shell | None = None  # once etcd answers
        self.member: EtcdMember | None = None
        self.model_server: ModelServer | None = None
        self.next_wait = LOOP_WAIT_S
        self.signalled = False
        self._last_topic: object = None
        self._cycles = 0
        # The HTTP API's view of this node (raftfl/ops): a fresh immutable snapshot at the end
        # of each cycle, published by this loop only; None until the first cycle.
        self.published = Published()
        self.wake, self.stop = threading.Event(), threading.Event()
        # the parts and rooms, from wire() once etcd answers
        self.store: Store
        self.models: Models
        self.runs: Runs
        self.config: ClusterConfig
        self.session: Session
        self.election: Election
        self.worker_role: WorkerRole
        self.worker: WorkerRunner
        self.observer: Observer
        self.aggregator: AggregatorRole
        self.voters: Voters
        self.housekeeping: Housekeeping

    # -- wiring -----------------------------------------------------------------------------
    def wire(self, store: Store, models: Models, runs: Runs, config: ClusterConfig,
             session: Session) -> None:
        """Build the rooms around the parts start-up made (a test builds its own parts)."""
        self.shell = shell = Shell(self.opts, self.keys, store, self.say, self.wake, self.stop,
                                   self.hooks)
        self.store, self.models, self.runs, self.config, self.session = \
            store, models, runs, config, session
        self.election = Election(store, self.keys, self.opts.name,
                                 self.opts.flower_address)
        self.worker_role = WorkerRole(shell, runs, config, lambda: self.run_id)
        self.worker = WorkerRunner(runapp.node_id(self.opts.name), self.opts.name,
                                   self.worker_role.handle)
        self.observer = Observer(shell, runs, config)
        self.aggregator = AggregatorRole(shell, self.election, session, runs, models, self.worker,
                                         config)
        self.voters = Voters(shell, self.election, session, lambda: self.run_id)
        self.housekeeping = Housekeeping(shell, runs, self.observer, self.aggregator, self.voters)

    @property
    def run_id(self) -> int | None:
        """The active run this node has taken up."""
        return self.housekeeping.active_run if self.shell is not None else None

    def request_stop(self) -> None:
        """From any thread: end the loop; shutdown runs in the loop's thread."""
        self.stop.set()
        self.wake.set()

    def lease_lost(self) -> None:
        """From the keepalive thread (see AggregatorRole.lease_lost)."""
        aggregator = getattr(self, "aggregator", None)
        if aggregator is not None:
            aggregator.lease_lost()
        self.wake.set()

    def run(self) -> int:
        lifecycle.install_signals(self._signalled)
        try:
            self._start()
            return self._loop()
        finally:
            self._shutdown()

    def _signalled(self, signum: int) -> None:
        self.say(f"signal {signum}: shutting down")
        self.signalled = True
        self.request_stop()

    # -- start-up and shutdown (the steps: raftfl/node/lifecycle.py) ------------------------
    def _start(self) -> None:
        opts, keys, say = self.opts, self.keys, self.say
        self.model_server, models = lifecycle.serve_models(opts, say, self._model_peers,
                                                           self._committed_models, self._may_put)
        self.member, endpoints = lifecycle.start_member(opts, say)
        store = Store(endpoints)
        if self.member is not None:
            wait_healthy(self.member, lambda: lifecycle.healthy(store, keys), opts.start_timeout,
                         say, self.stop)
        say(f"etcd healthy; client endpoints {','.join(endpoints)}")
        lifecycle.publish_certificate(store, keys)
        runs = Runs(store, keys, opts.dir, models)
        if not runs.trust:
            say(signing.UNSIGNED_WARNING)
        config = lifecycle.await_config(store, keys, opts, say, self.stop)
        lifecycle.submit_first_run(store, keys, opts, say)
        runs.refresh()
        lifecycle.warm_up(opts)
        info = MemberInfo(node=opts.name, ip=opts.ip, client_port=opts.etcd_client_port,
                          flower_address=opts.flower_address, priority=opts.priority,
                          nofailover=opts.nofailover, pid=os.getpid(),
                          max_examples=opts.max_examples, models_address=opts.models_address)
        session = Session(store, keys, info, opts.lease_ttl, self.lease_lost,
                          opts.probe_interval, extra_rtt_ms=self.hooks.extra_rtt_ms,
                          fresh_s=config.ranking_weights.fresh_s)
        self.wire(store, models, runs, config, session)
        session.open()
        session.start()
        runs.join_log().append(NodeJoined(node=opts.name))
        self.observer.watch()

    def _committed_models(self) -> set[str]:
        """The models that model-file retention keeps (raftfl/node/models.py); before etcd
        answers nobody knows them, and retention then deletes nothing."""
        if self.shell is None:
            raise RaftflError("etcd not reached yet")
        seen = self.published()  # the last cycle's revision: no linearizable read needed
        return committed_models(self.store, self.keys, seen.revision if seen else None)

    def _may_put(self, common_name: str) -> str | None:
        """Only the current aggregator stores models on its peers (what it commits next): a
        certificate that does not hold the role is refused (None: allowed)."""
        if self.shell is None:
            return "etcd not reached yet"
        try:
            kv = self.store.get(self.keys.aggregator)
        except RaftflError as exc:
            return f"the aggregator is unknown: {exc}"
        role = signers.read_role(self.store, self.keys, kv) if kv else None
        if isinstance(role, RoleHolder) and role.node == common_name:
            return None
        return (f"{common_name or 'a peer without a certificate'} is not the aggregator "
                f"({role.node if isinstance(role, RoleHolder) else 'none'})")

    def _model_peers(self) -> list[str]:
        ranked = self.observer.ranked
        return lifecycle.model_peers(self.store, self.keys, self.opts.name,
                                     ranked[0] if ranked else ())

    def _shutdown(self) -> None:
        self.stop.set()
        if self.shell is not None:
            self.observer.stop()
            self.worker.stop()
            self.aggregator.stop()
            # Give the role (and the member record) up before waiting for a fit in flight:
            # the successor's election must not wait for our local training to end.
            if self.signalled:
                self.store.retry_for = 2.0  # best effort on the way out: never hang here
                try:
                    self.runs.join_log().append(NodeLeft(node=self.opts.name))
                except RaftflError:
                    pass
            # A finished node's record outlives it by one TTL: peers still lingering then
            # know it left finished, not cut off (lifecycle.finish).
            self.session.close(revoke=not self.session.info.finished)
            if not self.worker.join(WORKER_STOP_S):
                log.warning("the worker's fit did not end within %.0fs", WORKER_STOP_S)
        if self.model_server is not None:
            self.model_server.stop()
        if self.member is not None:
            self.member.stop()

    # -- HA loop ----------------------------------------------------------------------------
    def _loop(self) -> int:
        """Observe, decide, act, until the node is stopped (or, with --exit-on-complete, no
        run is left).

        A cycle that fails is logged and retried with bounded backoff: a loop error never
        stops the embedded etcd member (only shutdown and `node leave` do).
        """
        origin("cycle")
        failures = 0
        while not self.stop.is_set():
            self.next_wait = LOOP_WAIT_S
            try:
                if self.cycle():
                    return lifecycle.finish(self.shell, self.runs, self.session, self.worker,
                                            self.member)
                failures = 0
            except NodeFatal:
                raise
            except EtcdNoSpace as exc:
                failures += 1
                if failures == 1:
                    self.say(str(exc))
                self.aggregator.step_down("etcd is out of space", self.run_id)
            except (EtcdUnavailable, FencedOut) as exc:
                failures += 1
                if failures == 1:
                    self.say(f"{exc}")
            except LeaseGone as exc:  # not a loop failure: the next cycle opens a new lease
                self.say(f"{exc}: opening a new lease")
                self.session.gone()
            except Exception:  # noqa: BLE001 - logged with its traceback, then retried
                failures += 1
                log.exception("HA cycle failed (%d in a row); retrying", failures)
                self.say(f"HA cycle failed ({failures} in a row); retrying")
            if failures:
                self.next_wait = min(MAX_BACKOFF_S, LOOP_WAIT_S * 2 ** min(failures - 1, 4))
            if self.member is not None and not self.member.alive():
                if lifecycle.removed(self.store, self.opts.name):
                    self.say("removed from the etcd cluster (node leave); stopping")
                    return 0
                raise RaftflError(f"etcd member exited unexpectedly: see {self.member.log_path}")
            # The next cycle's etcd requests count as a watch's (`wake`: something changed)
            # or the timer's (`cycle`), so a round's share can be told from the background.
            origin("wake" if self.wake.wait(self.next_wait) else "cycle")
            self.wake.clear()
        return 130

    def cycle(self) -> bool:
        """One reconciliation: observe, decide, act. True when the node is to leave."""
        view = self.observer.observe(self.session.state.leader_heard_at)
        decision = decide(view, self.local())
        if decision.topic != self._last_topic:
            self._last_topic = decision.topic
            self.say(decision.sentence)
        leaving = self.act(decision, view)
        self._cycles += 1
        self.published.publish(self._snapshot(view, decision))  # the API's one view
        return leaving

    def _snapshot(self, view: View, decision: Decision) -> NodeStatus:
        role = view.role if isinstance(view.role, RoleHolder) else None
        lease = self.session.state  # a lease and its deadline that belong together
        return NodeStatus(
            name=self.opts.name, cluster=self.opts.cluster,
            endpoints=tuple(self.store.endpoints), lease_ttl=float(self.opts.lease_ttl),
            cycled_at=time.monotonic(), cycles=self._cycles, revision=view.revision,
            lease=lease.lease, lease_deadline=lease.valid_until if lease.lease is not None else 0.0,
            holder=role.node if role else None, term=role.term if role else None,
            holder_flower_address=role.flower_address if role else None,
            vacant_since=self.observer.vacancy_seen,
            serving_term=self.aggregator.serving_term, run=view.run,
            last_round=view.state.last_committed_round, rounds=view.state.rounds,
            paused=view.paused_since is not None, action=decision.action.value,
            sentence=decision.sentence,
            member=None if self.member is None else self.member.alive())

    def local(self) -> Local:
        opts, now = self.opts, time.monotonic()
        return Local(name=opts.name, now=now, lease=self.session.lease,
                     lease_valid=self.session.valid, serving_term=self.aggregator.serving_term,
                     bootstrap=opts.bootstrap, nofailover=opts.nofailover,
                     rank_step=opts.rank_step, malformed_grace_s=opts.timings.malformed_grace_s,
                     handover_wait_s=opts.timings.handover_wait_s,
                     vacancy_seen=self.observer.vacancy_seen,
                     malformed_seen=self.observer.malformed_seen,
                     exit_on_complete=opts.exit_on_complete, active_run=self.run_id,
                     serving_run=self.aggregator.serving_run,
                     leader_check_due=self.housekeeping.leader_check_due(self.member, now))

    # -- act: the chores, then the action ---------------------------------------------------
    def act(self, d: Decision, view: View) -> bool:
        """Carry a decision out: the chores before the action, the action, the chores after
        it. Returns True when the node is to leave."""
        for chore in d.chores:
            if not chore.after_action:
                self._chore(chore, view)
        leave = self._action(d, view)
        for chore in d.chores:
            if chore.after_action:
                self._chore(chore, view)
        return leave

    def _chore(self, chore: Chore, view: View) -> None:
        member = self.housekeeping.do(chore, view, self.member)
        if member is not None:  # an upgrade's member serves: ours from now on
            self.member = member

    def _action(self, d: Decision, view: View) -> bool:
        agg, worker = self.aggregator, self.worker
        match d.action:
            case Action.FINISH:
                return True
            case Action.OPEN_LEASE:
                self.session.open()
            case Action.STEP_DOWN:
                agg.step_down(d.sentence, self.run_id)
            case Action.RECORD_ELECTION:
                assert d.term is not None and self.session.lease is not None
                self.election.adopt(d.term, self.session.lease)
                if agg.record_election(d.term, view, self.observer.vacancy_seen):
                    self.housekeeping.move_leader_away(self.member)
            case Action.SERVE:
                assert d.term is not None and self.session.lease is not None
                assert self.run_id is not None
                if self.election.term != d.term:  # e.g. stepped down on a late refresh that
                    self.election.adopt(d.term, self.session.lease)  # then succeeded: ours
                agg.serve(d.term, self.run_id)
            case Action.FOLLOW:
                assert d.holder is not None
                worker.follow(d.holder.flower_address, d.term)
            case Action.SUSPECT | Action.TAKEOVER:
                assert d.holder is not None and d.term is not None and self.session.lease
                worker.follow(d.holder.flower_address, d.term)
                self._suspect(d)
                if d.action is Action.TAKEOVER and self.election.free(d.term):
                    self.say(f"freed the role of {d.holder.node} (term {d.term}) on evidence")
                self.next_wait = min(self.next_wait, 0.1)
            case Action.CLEAR_MALFORMED:
                assert view.role is not None
                self.election.clear_malformed(view.role.mod_revision)
            case Action.CAMPAIGN:
                worker.follow(None, None)
                if agg.campaign(d, view, self.observer.vacancy_seen):
                    self.housekeeping.move_leader_away(self.member)
            case Action.WAIT_RANK | Action.WAIT_HANDOVER:
                worker.follow(None, None)
                self.next_wait = min(self.next_wait, d.wait_s or LOOP_WAIT_S)
            case Action.HAND_OVER:
                assert d.term is not None and self.session.lease is not None
                if self.election.term != d.term:
                    self.election.adopt(d.term, self.session.lease)
                if agg.hand_over(d, view):
                    self.next_wait = min(self.next_wait, 0.1)
            case Action.PAUSED:  # follow a holder that may be gone; never take its place
                worker.follow(d.holder.flower_address if d.holder else None, d.term)
            case _:  # waiting: nothing to serve, nobody to train for
                worker.follow(None, None)
        return False

    def _suspect(self, d: Decision) -> None:
        """Publish our evidence that the holder of `d.term` is gone (on our lease)."""
        assert d.holder is not None and d.term is not None
        ev = self.observer.holder_probe.latest
        created = self.store.create(self.keys.suspect(d.term, self.opts.name), json.dumps(
            {"node": self.opts.name, "holder": d.holder.node, "ts": time.time(),
             "refused": ev.refused if ev else 0, "failed": ev.failed if ev else 0}),
            lease=self.session.lease)
        if created is CreateResult.CREATED:  # our suspicions of earlier terms: served
            mine = self.keys.suspicions_of(self.opts.name)
            for kv in self.store.range(mine, keys_only=True)[0]:
                if kv.key != self.keys.suspect(d.term, self.opts.name):
                    self.store.delete(kv.key)
