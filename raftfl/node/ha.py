"""One raftfl node and its HA loop: observe, decide, act.

Like Patroni's `ha.py`, the loop is level-triggered. Each cycle `observe()`s etcd at one
revision into a frozen `View`, asks the pure `decide()` (raftfl/core/decide.py) what to do,
logs its sentence when it changes, and `act()`s on it:

    role vacant     -> rank candidates at the vacancy's revision; the node at rank k
                       campaigns after k * rank_step seconds (create-if-absent)
    role is mine    -> record the election in the run's log if missing, then serve the
                       rounds that remain
    role is theirs  -> train for them (and stop serving, if this node still was)
    handover asked  -> (the holder) finish the round in flight, record `handover`, resign;
                       the named node campaigns at once, the others wait for it
    failover paused -> fill no vacancy, take nothing over on evidence; the holder serves on
    no run left     -> wait for the next `raftfl run submit` (with --exit-on-complete:
                       fetch and verify the final model, then leave)

The federation outlives its runs (raftfl/node/runs.py): the role is the cluster's, and the
aggregator serves the active run (the lowest one neither completed nor stopped), records its
completion, and moves on to the next; every node writes each completed run's final model.

One thread owns the node's state: this loop. Watch threads only queue changes and wake it;
the keepalive thread swaps in an immutable lease state (and stops a server whose lease ran
out, before etcd says so). Missing a wake-up costs at most one `LOOP_WAIT_S`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import signal
import sys
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from raftfl.core.address import NodeAddress, check_port_free
from raftfl.core.decide import Action, Decision, Local, View, decide
from raftfl.core.errors import FencedOut, NodeFatal, RaftflError
from raftfl.core.events import (
    AggregatorElected,
    Event,
    Handover,
    NodeJoined,
    NodeLeft,
    RunStopped,
    StepDown,
    describe,
)
from raftfl.core.evidence import gone
from raftfl.core.keys import Keys
from raftfl.core.maintenance import HandoverRequest, Pause
from raftfl.core.members import MemberInfo
from raftfl.core.membership import DEFAULT_MAX_VOTERS, initial_voters
from raftfl.core.ranking import Ranked, rank
from raftfl.core.records import SKIPS, MalformedRecord
from raftfl.core.replacement import DEFAULT_GRACE_S
from raftfl.core.replay import FLState
from raftfl.core.role import MalformedRole, RoleHolder, parse_role
from raftfl.core.runconfig import RunConfig, RunSpec, ensure, spec_rounds
from raftfl.etcd import checkpoint
from raftfl.etcd import runs as stored_runs
from raftfl.etcd.context import read_members, read_samples
from raftfl.etcd.eventlog import EventLog
from raftfl.etcd.member import (
    EtcdMember,
    MemberSpec,
    check_version,
    etcd_version,
    find_etcd,
    prepare_data_dir,
    wait_healthy,
)
from raftfl.etcd.store import (
    Compacted,
    EtcdNoSpace,
    EtcdUnavailable,
    Fence,
    LeaseGone,
    Resync,
    Store,
)
from raftfl.lab.testhooks import hold, tamper
from raftfl.node import runapp
from raftfl.node.election import Election
from raftfl.node.holder_probe import HolderProbe
from raftfl.node.models import DEFAULT_REPLICAS, ModelFiles, Models, ModelServer
from raftfl.node.package import pack
from raftfl.node.recorder import AppRecorder, resume_point
from raftfl.node.runs import Runs
from raftfl.node.session import Session, candidates
from raftfl.node.voters import Voters
from raftfl.node.worker import WorkerRunner

log = logging.getLogger(__name__)

LOOP_WAIT_S = 1.0
MAX_BACKOFF_S = 10.0  # a failing cycle is retried after 1, 2, 4, 8, then every 10 s
LEADER_CHECK_S = 5.0  # how often a serving aggregator makes sure it does not lead etcd
SERVE_RETRY_S = 10.0  # then give the role up (exit) instead of holding it without serving
STOP_JOIN_S = 5.0  # how long a stopped run's ServerApp thread gets to end
WORKER_STOP_S = 30.0  # how long a fit in flight gets to end when the node stops


@dataclass
class NodeOptions:
    address: NodeAddress
    peers: list[NodeAddress]
    aggregator: str = "auto"  # "self", "auto", or the name of the bootstrap aggregator
    rounds: int | None = None
    cluster: str = "default"
    data_dir: Path | None = None
    etcd_bin: str | None = None
    allow_unsafe_etcd: bool = False
    etcd_endpoints: list[str] | None = None  # external cluster: no embedded member
    client_port: int | None = None
    flower_port: int | None = None
    join: bool = False
    lease_ttl: int = 3
    priority: float = 0.0
    nofailover: bool = False
    rank_step: float = 1.0
    probe_interval: float = 1.0
    rtt_window: int = 10
    client_wait: float = 10.0
    round_timeout: float = 120.0
    start_timeout: float = 300.0
    move_leader: bool = True
    run: RunConfig | None = None  # proposed cluster config; with it, this node submits run 1
    linger: float = 15.0
    app: Path | None = None  # run 1's Flower app directory; None: the bundled quick-start app
    run_config: str | None = None  # --run-config "k=v ..." (for run 1)
    node_config: str | None = None  # --node-config "k=v ...": this node's context.node_config
    exit_on_complete: bool = False  # leave once no run is left (the last one's model saved)
    max_examples: int = 0  # --max-examples: the training examples this node declares (0: none)
    max_update_norm: float | None = None  # --max-update-norm: refuse larger updates (aggregator)
    max_voters: int = DEFAULT_MAX_VOTERS  # the first N initial nodes (by name) run etcd members
    voter_grace: float = DEFAULT_GRACE_S  # a voter unhealthy this long is replaced
    models_port: int | None = None  # our model service (node/models.py) [raft port + 300]
    model_replicas: int = DEFAULT_REPLICAS  # a round commits once this many nodes hold it
    inline_model_bytes: int = 0  # models up to this size stay in etcd

    @property
    def name(self) -> str:
        return self.address.name

    @property
    def ip(self) -> str:
        return self.address.ip

    @property
    def etcd_client_port(self) -> int:
        return self.client_port or self.address.client_port

    @property
    def flower_address(self) -> str:
        return f"{self.ip}:{self.flower_port or self.address.flower_port}"

    @property
    def models_address(self) -> str:
        return f"{self.ip}:{self.models_port or self.address.models_port}"

    @property
    def dir(self) -> Path:
        default = Path(".raftfl") / self.cluster / self.name.replace(":", "_")
        return (self.data_dir or default).expanduser().resolve()


class Node:
    def __init__(self, opts: NodeOptions, out: Any = None):
        self.opts = opts
        self.keys = Keys(opts.cluster)
        self.out = out or sys.stdout
        self.stop = threading.Event()
        self.wake = threading.Event()
        self.member: EtcdMember | None = None
        self.store: Store | None = None
        self.model_server: ModelServer | None = None
        self.models: Models  # set in run(), before etcd
        self.runs: Runs  # set once etcd answers, in run()
        self.run_id: int | None = None  # the active run, as of the last observe()
        self._events_watch: tuple[int, threading.Event] | None = None  # (run, its stop)
        self.session: Session | None = None
        self.server: Any = None  # the ServerAppHost of our term and the active run
        self.recorder: AppRecorder | None = None
        self.fleet: Any = None  # our FleetServer, while we serve
        self._client_hosts: dict[int, Any] = {}  # run -> ClientAppHost (worker thread only)
        self.worker: WorkerRunner | None = None
        self.election: Election  # set once etcd answers, in run()
        self.role_changes: queue.Queue[Any] = queue.Queue()  # from the role watch
        self._vacancy_rev: int | None = None  # delete revision of the role key (from the watch)
        self._vacancy_seen: float | None = None
        self._malformed_seen: float | None = None
        self._ranked: tuple[tuple[Ranked, ...], int, float | None] | None = None
        self.holder_probe = HolderProbe(float(opts.lease_ttl), self.wake.set)
        self._campaigns: dict[int, tuple[Decision, View]] = {}
        self._last_topic: Any = None
        self._predecessor: str | None = None  # the aggregator before our term
        self._handed_over_by: str | None = None  # ...when it handed the role to us (alive)
        self.next_wait = LOOP_WAIT_S
        self.config: RunConfig | None = None
        self._said: set[str] = set()
        self.signalled = False
        self._leader_checked = 0.0
        self._serve_failing_since: float | None = None
        self.voters = Voters(self)  # lost voters replaced (the aggregator), upgrades (clients)

    # -- output -----------------------------------------------------------------------------
    def emit(self, text: str, once: str | None = None) -> None:
        if once:
            if once in self._said:
                return
            self._said.add(once)
        stamp = time.strftime("%H:%M:%S")
        print(f"{stamp} [{self.opts.name}] {text}", file=self.out, flush=True)

    # -- startup ----------------------------------------------------------------------------
    def start_member(self) -> list[str]:
        """Start the embedded etcd member (unless external); returns the client endpoints."""
        o = self.opts
        if o.etcd_endpoints:
            return list(o.etcd_endpoints)
        everyone = {a.name: a for a in [o.address, *o.peers]}
        if not o.join:
            voters = initial_voters(sorted(everyone), o.max_voters)
            if o.name not in voters:  # every node computes the same split from the same names
                self.emit(f"etcd client of the {len(voters)} voters (--max-voters "
                          f"{o.max_voters}); this node runs no etcd member")
                return [everyone[n].client_endpoint for n in voters]
            everyone = {n: everyone[n] for n in voters}
        binary = find_etcd(o.etcd_bin)
        check_version(etcd_version(binary), o.allow_unsafe_etcd)
        if o.ip.startswith("127.") and any(not a.ip.startswith("127.") for a in o.peers):
            self.emit(f"warning: {o.address.host} resolves to {o.ip}, which peers on other hosts "
                      "cannot reach; use this host's LAN address in -s")
        spec = MemberSpec(
            name=o.name, cluster=o.cluster, data_dir=o.dir, ip=o.ip, peer_port=o.address.port,
            client_port=o.etcd_client_port, state="existing" if o.join else "new",
            initial_cluster={n: a.peer_url for n, a in sorted(everyone.items())})
        ports = ((spec.peer_port, "etcd peer"), (spec.client_port, "etcd client"),
                 (int(o.flower_address.rsplit(":", 1)[1]), "Flower"))
        if len({port for port, _ in ports}) < len(ports):
            raise RaftflError("the etcd peer, etcd client and Flower ports must differ: "
                              + ", ".join(f"{what} {port}" for port, what in ports))
        for port, what in ports:  # before prepare_data_dir: a failed start claims nothing
            check_port_free(o.ip, port, what)
        reused = prepare_data_dir(spec)
        self.member = EtcdMember(spec, binary)
        self.member.start(threaded=o.join)  # a joiner's JoinWatch already calls into gRPC
        self.emit(f"etcd member started (pid {self.member.proc.pid if self.member.proc else '?'}, "
                  f"{'reusing' if reused else 'new'} data dir {o.dir})")
        peers = [a.client_endpoint for n, a in sorted(everyone.items()) if n != o.name]
        return [spec.client_endpoint, *peers]

    def run(self) -> int:
        self._signals()
        try:
            self._serve_models()
            endpoints = self.start_member()
            self.store = Store(endpoints)
            self.election = Election(self.store, self.keys.aggregator, self.opts.name,
                                     self.opts.flower_address)
            if self.member is not None:
                wait_healthy(self.member, self._healthy, self.opts.start_timeout, self.emit,
                             self.stop)
            self.emit(f"etcd healthy; client endpoints {','.join(endpoints)}")
            first = self._first_run(self.opts.run) if self.opts.run is not None else None
            self.runs = Runs(self.store, self.keys, self.opts.dir, self.models)
            self.config = self._await_config()
            if first is not None and stored_runs.submit(self.store, self.keys, *first,
                                                        run_id=1) == 1:
                self.emit(f"submitted run 1: app {first[0].app}")
            self.runs.refresh()
            info = MemberInfo(node=self.opts.name, ip=self.opts.ip,
                              client_port=self.opts.etcd_client_port,
                              flower_address=self.opts.flower_address,
                              priority=self.opts.priority, nofailover=self.opts.nofailover,
                              pid=os.getpid(), max_examples=self.opts.max_examples,
                              models_address=self.opts.models_address)
            self.session = Session(self.store, self.keys, info, self.opts.lease_ttl,
                                   self._lease_lost, self.opts.probe_interval)
            self.session.open()
            self.session.start()
            self.runs.join_log().append(NodeJoined(node=self.opts.name))
            self.worker = WorkerRunner(runapp.node_id(self.opts.name), self.opts.name,
                                       self._handle)
            self._watch()
            return self._loop()
        finally:
            self._shutdown()

    def _serve_models(self) -> None:
        o = self.opts
        port = int(o.models_address.rsplit(":", 1)[1])
        if port in (o.address.port, o.etcd_client_port, int(o.flower_address.rsplit(":", 1)[1])):
            raise RaftflError(f"--models-port {port} is one of the node's other ports")
        files = ModelFiles(o.dir / "models")
        self.model_server = ModelServer(o.ip, port, files).start()
        self.models = Models(files, o.models_address, self._model_peers, o.model_replicas,
                             o.inline_model_bytes, self.emit)

    def _model_peers(self) -> list[str]:
        """Live peers' model services, best-ranked first: the likely next aggregator then
        resumes from its own copy."""
        assert self.store is not None
        order = {r.node: i for i, r in enumerate(self._ranked[0])} if self._ranked else {}
        peers = [m for n, m in read_members(self.store, self.keys).items()
                 if n != self.opts.name and m.models_address and not m.finished]
        peers.sort(key=lambda m: (order.get(m.node, len(order)), m.node))
        return [m.models_address for m in peers]

    @property
    def events(self) -> EventLog:
        """The active run's event log."""
        assert self.run_id is not None
        return self.runs.log(self.run_id)

    def _healthy(self) -> bool:
        assert self.store is not None
        self.store.call(lambda: self.store.client.get_response(self.keys.config), retry_for=0.5)
        return True

    def _await_config(self) -> RunConfig:
        assert self.store is not None
        deadline = time.monotonic() + self.opts.start_timeout
        while not self.stop.is_set():
            cfg = ensure(self.store, self.keys, self.opts.run)
            if cfg is not None:
                self.emit(f"cluster of {len(cfg.nodes)} initial nodes", once="config")
                return cfg
            if time.monotonic() > deadline:
                raise RaftflError("no cluster configuration in etcd: start the first node "
                                  "with -r ROUNDS")
            self.emit("waiting for the cluster configuration (start a node with -r ROUNDS)",
                      once="wcfg")
            self.stop.wait(1.0)
        raise RaftflError("stopped")

    def _first_run(self, proposed: RunConfig) -> tuple[RunSpec, bytes]:
        """Run 1, which the node with -r submits (unless it exists: a restart, or a peer's):
        this node's app, packaged. raftfl's task flags configure the bundled app; other apps
        take --run-config (and -r, as num-server-rounds)."""
        app = runapp.load(self.opts.app)
        bundled = app.root == runapp.bundled_app()
        flags = {f: getattr(proposed, f) for f in runapp.FLAG_KEYS if bundled or f == "rounds"}
        run_config = runapp.run_config(app, flags, self.opts.run_config)
        blob = pack(app.root)
        return RunSpec(app=app.name, app_sha256=hashlib.sha256(blob).hexdigest(),
                       run_config=run_config, rounds=spec_rounds(run_config),
                       by=self.opts.name), blob

    # -- watches ----------------------------------------------------------------------------
    def _watch(self) -> None:
        """Watches only hand changes over (a queue) and wake the loop; they decide nothing."""
        assert self.store is not None
        _, rev = self.store.range(self.keys.aggregator, keys_only=True)

        def role() -> None:
            assert self.store is not None
            for change in self.store.watch(self.keys.aggregator, rev + 1, self.stop):
                if isinstance(change, Resync) or change.key == self.keys.aggregator:
                    self.role_changes.put(change)
                    self.wake.set()

        def control() -> None:  # a handover request or a pause: decide again now
            assert self.store is not None
            for _ in self.store.watch(self.keys.control, rev + 1, self.stop):
                self.wake.set()

        threading.Thread(target=self._guard(role), name="role", daemon=True).start()
        threading.Thread(target=self._guard(control), name="control", daemon=True).start()

    def _watch_events(self, run_id: int, revision: int) -> None:
        """Wake the loop on each new event of the active run (a new watch when it changes)."""
        if self._events_watch is not None:
            if self._events_watch[0] == run_id:
                return
            self._events_watch[1].set()
        stop = threading.Event()
        self._events_watch = (run_id, stop)
        log = self.runs.log(run_id)

        def events() -> None:
            for _ in log.tail(revision + 1, stop):
                if self.stop.is_set():
                    return
                self.wake.set()

        threading.Thread(target=self._guard(events), name=f"events-{run_id}", daemon=True).start()

    def _guard(self, fn: Any) -> Any:
        def run() -> None:
            try:
                fn()
            except Exception:  # noqa: BLE001
                if not self.stop.is_set():
                    log.exception("%s watcher failed; the loop keeps polling", fn.__name__)
        return run

    # -- HA loop ----------------------------------------------------------------------------
    def _loop(self) -> int:
        """Observe, decide, act, until the node is stopped (or, with --exit-on-complete, no
        run is left).

        A cycle that fails is logged and retried with bounded backoff: a loop error never
        stops the embedded etcd member (only shutdown and `node leave` do).
        """
        failures = 0
        while not self.stop.is_set():
            self.next_wait = LOOP_WAIT_S
            try:
                if self.cycle():
                    return self._finish()
                failures = 0
            except NodeFatal:
                raise
            except EtcdNoSpace as exc:
                failures += 1
                if failures == 1:
                    self.emit(str(exc))
                self._step_down("etcd is out of space")
            except (EtcdUnavailable, FencedOut) as exc:
                failures += 1
                if failures == 1:
                    self.emit(f"{exc}")
            except LeaseGone as exc:  # not a loop failure: the next cycle opens a new lease
                self.emit(f"{exc}: opening a new lease")
                if self.session is not None:
                    self.session.gone()
            except Exception:  # noqa: BLE001 - logged with its traceback, then retried
                failures += 1
                log.exception("HA cycle failed (%d in a row); retrying", failures)
                self.emit(f"HA cycle failed ({failures} in a row); retrying")
            if failures:
                self.next_wait = min(MAX_BACKOFF_S, LOOP_WAIT_S * 2 ** min(failures - 1, 4))
            if self.member is not None and not self.member.alive():
                if self._removed():
                    self.emit("removed from the etcd cluster (node leave); stopping")
                    return 0
                raise RaftflError(f"etcd member exited unexpectedly: see {self.member.log_path}")
            self.wake.wait(self.next_wait)
            self.wake.clear()
        return 130

    def _removed(self) -> bool:
        """True when the peers no longer list our member: we were removed, not crashed."""
        assert self.store is not None
        try:
            return all(m.name != self.opts.name for m in self.store.members())
        except EtcdUnavailable:
            return False

    def cycle(self) -> bool:
        """One reconciliation. Returns True when the node is to leave (--exit-on-complete)."""
        view = self.observe()
        self._save_finished_runs()
        decision = decide(view, self._local())
        if decision.topic != self._last_topic:
            self._last_topic = decision.topic
            self.emit(decision.sentence)
        leave = self.act(decision, view)
        self.voters.tick()
        return leave

    def observe(self) -> View:
        """Read everything a cycle needs at one revision (the vacancy's, for the ranking)."""
        assert self.store is not None
        self._drain_role_changes()
        kvs, rev = self.store.range(self.keys.aggregator)
        kv = next((k for k in kvs if k.key == self.keys.aggregator), None)
        role = parse_role(kv.value, kv.create_revision, kv.lease, kv.mod_revision) if kv else None
        runs = self.runs.refresh(rev)
        self._activate(runs.active, rev)
        state = runs.state
        now = time.monotonic()
        if role is None and runs.active is not None:  # no run, no election: nor a rank clock
            self._vacancy_seen = self._vacancy_seen or now
        elif role is None:
            self._vacancy_seen = None
        else:
            self._vacancy_seen, self._vacancy_rev = None, None
        self._malformed_seen = (self._malformed_seen or now) if isinstance(role, MalformedRole) \
            else None
        at_run = {"run": runs.active, "elected_before": runs.elected_before,
                  **self._control(rev)}
        if at_run["paused_since"] is not None:  # the rank clock starts when failover resumes
            self._vacancy_seen = None
        if isinstance(role, RoleHolder) and role.node != self.opts.name and runs.active:
            return replace(self._observe_holder(rev, role, state), **at_run)
        self.holder_probe.follow(None)
        if role is not None or runs.active is None or self.opts.nofailover:
            return View(rev, role, state, **at_run)
        at = self._vacancy_rev or rev
        ranking, ranked_at, max_rtt = self._ranking(at, state)
        if not ranking and at != rev:
            # Nobody had a member record at the vacancy: every lease expired with the role's
            # (after a quorum loss the Raft leader revokes them all). Ranking there would wait
            # forever; rank the members that have republished since, as a poller would.
            ranking, ranked_at, max_rtt = self._ranking(rev, state)
        measured = True
        if not state.elections and not runs.elected_before and self.opts.aggregator == "auto":
            measured = self._peers_measured(rev)
            if not measured:  # the rank clock starts once everyone can rank the same way
                self._vacancy_seen = None
        return View(rev, role, state, ranking, ranked_at, self._vacancy_rev, measured, max_rtt,
                    **at_run)

    def _control(self, revision: int) -> dict[str, Any]:
        """The operator's requests at `revision` (View fields); a malformed one is skipped
        with one warning, as if absent."""
        assert self.store is not None
        kvs, _ = self.store.range(self.keys.control, revision=revision)
        out: dict[str, Any] = {"handover": None, "handover_revision": 0, "paused_since": None}
        for kv in kvs:
            try:
                if kv.key == self.keys.handover:
                    out["handover"] = HandoverRequest.from_json(kv.value)
                    out["handover_revision"] = kv.mod_revision
                elif kv.key == self.keys.paused:
                    Pause.from_json(kv.value)
                    out["paused_since"] = kv.create_revision
            except MalformedRecord as exc:
                SKIPS.skip("control record", kv.key, str(exc))
        return out

    def _activate(self, run_id: int | None, revision: int) -> None:
        """When the active run changes: unpack and import its app, watch its log."""
        if run_id == self.run_id:
            return
        self.run_id = run_id
        if run_id is None:
            return
        run_app = self.runs.app(run_id)
        if run_app.flower_app is None:
            self.emit(f"run {run_id}: its app cannot be used ({run_app.apps.exception()})")
        else:
            spec = run_app.spec
            assert spec is not None
            self.emit(f"run {run_id}: app {spec.app}"
                      + (f", {spec.rounds} rounds" if spec.rounds else ""))
        self._watch_events(run_id, revision)

    def _save_finished_runs(self) -> None:
        """Write each newly completed run's final model to <data-dir>/runs/<id>/ (not with
        --exit-on-complete, which writes the last one's to the data dir as it leaves)."""
        for run_id, state in list(self.runs.finished.items()):
            out = self.opts.dir / "runs" / str(run_id)
            if state.completed is not None and not self.opts.exit_on_complete \
                    and not (out / "result.json").exists():
                try:
                    path = self.runs.save_final_model(run_id, state, out, self.opts.name)
                    self.emit(f"run {run_id} completed: final model "
                              f"{state.completed.model_sha256[:12]} verified, saved to {path}")
                except checkpoint.CorruptCheckpoint as exc:
                    self.emit(f"run {run_id} completed, but its final model is unusable: {exc}")
            del self.runs.finished[run_id]

    def _observe_holder(self, rev: int, role: RoleHolder, state: FLState) -> View:
        """Another node holds the role: probe its host, and read who else suspects it."""
        assert self.store is not None
        if self.holder_probe.latest is None or self.holder_probe.latest.term != role.term:
            self.holder_probe.follow(role.term, role.node, self._endpoints_of(role))
        ev = self.holder_probe.latest
        if ev is None or ev.term != role.term or not gone(ev, time.monotonic(),
                                                          self.opts.lease_ttl):
            return View(rev, role, state)
        kvs, _ = self.store.range(self.keys.suspects(role.term), revision=rev)
        suspecting = frozenset(kv.key.rsplit("/", 1)[-1] for kv in kvs)
        members = frozenset(read_members(self.store, self.keys, rev))
        return View(rev, role, state, holder_gone=True, suspected_by=suspecting,
                    live_members=members)

    def _endpoints_of(self, role: RoleHolder) -> tuple[tuple[str, int], ...]:
        """The holder's Flower endpoint and, when it runs one of our members, its etcd one."""
        assert self.store is not None
        out: list[tuple[str, int]] = []
        if role.flower_address and ":" in role.flower_address:
            host, _, port = role.flower_address.rpartition(":")
            out.append((host, int(port)))
        record = read_members(self.store, self.keys).get(role.node)
        if record is not None:
            etcd_clients = {url.split("//", 1)[-1] for m in self.store.members()
                            for url in m.client_urls}
            if f"{record.ip}:{record.client_port}" in etcd_clients:
                out.append((record.ip, record.client_port))
        return tuple(out)

    def _drain_role_changes(self) -> None:
        while True:
            try:
                change = self.role_changes.get_nowait()
            except queue.Empty:
                return
            if isinstance(change, Resync):  # history compacted: the delete revision is lost
                self._vacancy_rev = None
            elif change.value is None:  # deleted at this revision: a vacancy everyone ranks at
                if change.revision != self._vacancy_rev:
                    self._vacancy_rev = change.revision
                    self._vacancy_seen = self._vacancy_seen or time.monotonic()
                    self.emit(f"aggregator role vacant at revision {change.revision}")
            else:
                self._vacancy_rev, self._vacancy_seen = None, None

    def _ranking(self, revision: int, state: FLState
                 ) -> tuple[tuple[Ranked, ...], int, float | None]:
        """Every node's ranking of the candidates at `revision` (cached: it never changes),
        and the largest mean RTT in it (which paces the rank steps)."""
        if self._ranked is not None and self._ranked[1] == revision:
            return self._ranked
        assert self.store is not None and self.config is not None
        last = next((e for e in reversed(state.elections) if e.term <= revision), None)
        try:
            members = read_members(self.store, self.keys, revision)
            samples = read_samples(self.store, self.keys, revision)
            suspected = last is not None and bool(
                self.store.range(self.keys.suspects(last.term), revision, keys_only=True)[0])
        except Compacted:
            log.warning("revision %d compacted; ranking at the current revision", revision)
            members, samples = read_members(self.store, self.keys), read_samples(self.store, self.keys)
            suspected = False
        previous = last.node if last else None
        if suspected:  # its role was freed on evidence that it is gone: not a candidate
            members.pop(previous, None)  # type: ignore[arg-type]
        ranking = tuple(rank(candidates(members, samples, self.opts.rtt_window),
                             self.config.ranking_weights, previous))
        max_rtt = max((r.rtt_ms for r in ranking if r.rtt_ms is not None), default=None)
        self._ranked = (ranking, revision, max_rtt)
        return self._ranked

    def _local(self) -> Local:
        assert self.session is not None
        serving = self.election.term if self.server is not None else None
        return Local(name=self.opts.name, now=time.monotonic(), lease=self.session.lease,
                     lease_valid=self.session.valid, serving_term=serving,
                     bootstrap=self.opts.aggregator, nofailover=self.opts.nofailover,
                     rank_step=self.opts.rank_step, lease_ttl=float(self.opts.lease_ttl),
                     vacancy_seen=self._vacancy_seen, malformed_seen=self._malformed_seen,
                     exit_on_complete=self.opts.exit_on_complete)

    def act(self, d: Decision, view: View) -> bool:
        """Carry a decision out. Returns True when the node is to leave."""
        assert self.worker is not None and self.session is not None and self.store is not None
        self._retire_server()
        match d.action:
            case Action.FINISH:
                return True
            case Action.OPEN_LEASE:
                self.session.open()
            case Action.STEP_DOWN:
                self._step_down(d.sentence)
            case Action.RECORD_ELECTION:
                assert d.term is not None and self.session.lease is not None
                self.election.adopt(d.term, self.session.lease)
                self._record_election(d.term, view)
            case Action.SERVE:
                assert d.term is not None and self.session.lease is not None
                if self.election.term != d.term:  # e.g. stepped down on a late refresh that
                    self.election.adopt(d.term, self.session.lease)  # then succeeded: ours
                self._serve(d.term)
                if time.monotonic() - self._leader_checked > LEADER_CHECK_S:
                    self._move_leader_away()
            case Action.FOLLOW:
                assert d.holder is not None
                self.worker.follow(d.holder.flower_address, d.term)
            case Action.SUSPECT | Action.TAKEOVER:
                assert d.holder is not None and d.term is not None and self.session.lease
                self.worker.follow(d.holder.flower_address, d.term)
                ev = self.holder_probe.latest
                self.store.create(self.keys.suspect(d.term, self.opts.name), json.dumps(
                    {"node": self.opts.name, "holder": d.holder.node, "ts": time.time(),
                     "refused": ev.refused if ev else 0, "failed": ev.failed if ev else 0}),
                    lease=self.session.lease)
                if d.action is Action.TAKEOVER and self.store.delete(
                        self.keys.aggregator, fence=Fence(self.keys.aggregator, d.term)):
                    self.emit(f"freed the role of {d.holder.node} (term {d.term}) on evidence")
                self.next_wait = min(self.next_wait, 0.1)
            case Action.CLEAR_MALFORMED:
                role = view.role
                assert isinstance(role, MalformedRole)
                self.store.delete_if_unchanged(self.keys.aggregator, role.mod_revision)
            case Action.CAMPAIGN:
                self.worker.follow(None, None)
                self._campaign(d, view)
            case Action.WAIT_RANK | Action.WAIT_HANDOVER:
                self.worker.follow(None, None)
                self.next_wait = min(self.next_wait, d.wait_s or LOOP_WAIT_S)
            case Action.HAND_OVER:
                assert d.term is not None and self.session.lease is not None
                if self.election.term != d.term:
                    self.election.adopt(d.term, self.session.lease)
                self._hand_over(d, view)
            case Action.PAUSED:  # follow a holder that may be gone; never take its place
                self.worker.follow(d.holder.flower_address if d.holder else None, d.term)
            case _:  # waiting: nothing to serve, nobody to train for
                self.worker.follow(None, None)
        return False

    def _peers_measured(self, revision: int) -> bool:
        """With -a auto, the first election waits until every expected node has samples."""
        assert self.store is not None and self.config is not None
        members = read_members(self.store, self.keys, revision)
        sampled = {s.node for s in read_samples(self.store, self.keys, revision)}
        expected = set(self.config.nodes) | {self.opts.name}
        return expected <= (set(members) & sampled)

    # -- election ---------------------------------------------------------------------------
    def _campaign(self, d: Decision, view: View) -> None:
        assert self.session is not None
        lease = self.session.lease
        if lease is None or not self.session.valid:
            return
        term = self.election.campaign(lease)
        if term is None:
            return
        self._campaigns[term] = (d, view)
        h = view.handover
        self._handed_over_by = h.holder if h is not None and h.to == self.opts.name else None
        self.emit(f"won the election: term {term}")
        self._record_election(term, view)

    def _record_election(self, term: int, view: View) -> None:
        """Append `aggregator_elected`, fenced.

        Also the repair for a term held without its record (a crash or an outage between
        the create and the append): without it, replay would not accept the term's commits.
        """
        fence = self.election.fence
        assert fence is not None and fence.create_revision == term
        d, at = self._campaigns.pop(term, (None, view))
        me = next((r for r in at.ranking if r.node == self.opts.name), None)
        state = at.state
        try:
            self.events.append(AggregatorElected(
                node=self.opts.name, term=term, flower_address=self.opts.flower_address,
                rank=(d.rank or 0) if d else 0, score=me.score if me else None,
                revision=at.ranked_at or at.revision,
                ranking=[r.to_dict() for r in at.ranking], previous=state.aggregator,
                vacant_since=time.time() - (time.monotonic() - self._vacancy_seen)
                if self._vacancy_seen else None), fence=fence)
        except FencedOut:
            return
        try:  # the evidence against our predecessors has served its purpose
            self.store.delete_prefix(self.keys.root + "suspects/")
            self._clear_handover(term)
        except RaftflError:
            pass
        self.emit(f"elected aggregator, term {term}"
                  + (f" (rank {d.rank}, score {me.score:.2f})" if d and me else "")
                  + f" (run {self.run_id})")
        self._move_leader_away()
        self.wake.set()

    def _clear_handover(self, term: int) -> None:
        """A handover request of an earlier term has served its purpose (or was overtaken):
        delete it, unless someone wrote a new one meanwhile."""
        assert self.store is not None
        kv = self.store.get(self.keys.handover)
        if kv is None:
            return
        try:
            stale = HandoverRequest.from_json(kv.value).term < term
        except MalformedRecord:
            stale = True
        if stale:
            self.store.delete_if_unchanged(self.keys.handover, kv.mod_revision)

    # -- aggregator role --------------------------------------------------------------------
    def _hand_over(self, d: Decision, view: View) -> None:
        """A planned handover of our term: the round in flight commits, no further round
        starts; then `handover` is recorded and the role key deleted (both fenced on the
        term), so the named node campaigns at once instead of waiting out our lease."""
        assert d.term is not None and view.handover is not None
        host, recorder = self.server, self.recorder
        if host is not None and recorder is not None and recorder.term == d.term:
            recorder.hand_over()
            if host.state == "running" and not recorder.halted.is_set():
                return  # the ServerApp wakes us (on_halt) when it reaches the next round
            if not host.join(timeout=STOP_JOIN_S):
                return  # still ending: the next cycle looks again
            if host.state == "completed" and recorder.complete():
                self._completed(recorder)
        self.server = self.recorder = None
        if host is not None:
            host.stop()  # its fleet server: the workers move on to the next holder
            self.fleet = None
        h = view.handover
        last = recorder.last_round if recorder is not None else view.state.last_committed_round
        log_ = self.events if self.run_id is not None else self.runs.join_log()
        try:
            log_.append(Handover(node=self.opts.name, term=d.term, to=h.to, round=last,
                                 ranked=h.ranked, requested_by=h.by), fence=self.election.fence)
        except FencedOut:
            self.election.fence = None
            return
        if self.election.resign():
            self.emit(f"handed term {d.term} over to {h.to} after round {last}: resigned")
        self.next_wait = min(self.next_wait, 0.1)

    def _serve(self, term: int) -> None:
        """Make sure the user's ServerApp runs for `term`, resuming from the log.

        A ServerApp that ended within the same term (an etcd outage outlasted its retries,
        or it failed) is joined first, and only then is the log re-read, so a round the old
        one committed is never committed again. This node's own ClientApp trains too.
        """
        assert self.store is not None and self.worker is not None and self.run_id is not None
        fence = self.election.fence
        assert fence is not None and fence.create_revision == term
        run_id = self.run_id
        self.worker.follow(self.opts.flower_address, term)
        host, recorder = self.server, self.recorder
        if host is not None and recorder is not None and recorder.term == term:
            if host.state == "running":
                return
            if host.state == "completed" and recorder.complete():
                self._completed(recorder)
                return
            if isinstance(recorder.failure, EtcdNoSpace):
                raise recorder.failure  # the loop reports it and steps down
            self.emit(f"ServerApp {host.state}"
                      + (f" ({type(host.error).__name__}: {host.error})" if host.error else "")
                      + "; restarting it from the log")
            host.stop()
            if not host.join(timeout=self.opts.round_timeout):
                raise RaftflError("the previous ServerApp thread did not stop")
            self.server = None
        state, _ = self.events.current()
        if state.finished:
            return
        self._predecessor = next((e.node for e in reversed(state.elections) if e.term < term), None)
        if self._predecessor == self._handed_over_by:  # alive, and about to train for us
            self._predecessor = None
        run_app = self.runs.app(run_id)
        try:
            server_app, _ = run_app.apps.result()
        except Exception as exc:  # noqa: BLE001 - the app's fault: skip the run, say why
            reason = f"its app cannot be used: {type(exc).__name__}: {exc}"[:500]
            self.events.append(RunStopped(node=self.opts.name, reason=reason))
            self.emit(f"run {run_id} stopped: {reason}")
            return
        spec = run_app.spec
        assert spec is not None
        keys = self.keys.run(run_id)
        from raftfl.flower.fleet import FleetServer
        from raftfl.flower.grid import RaftGrid
        from raftfl.flower.host import ServerAppHost
        from raftfl.flower.screen import ScreenPolicy

        try:
            if self.fleet is None or self.fleet.stopped:
                host_ip, _, port = self.opts.flower_address.rpartition(":")
                self.fleet = FleetServer(host_ip, int(port)).start()
            resume = resume_point(self.models, self.store, keys, self.events, state, fence,
                                  self.opts.name)
            self.recorder = AppRecorder(
                store=self.store, keys=keys, events=self.events, fence=fence, models=self.models,
                node=self.opts.name, workers=self._wait_for_workers, on_event=self._on_event,
                on_halt=self.wake.set, node_name=self._node_name)
            if resume is not None:
                self.recorder.base = state.committed[resume.next_round - 1].model_sha256 \
                    if resume.next_round > 1 else state.initial_model
                self.recorder.last_round = resume.next_round - 1
            grid = RaftGrid(self.fleet, run_id=run_id, term=term, hooks=self.recorder,
                            resume=resume, screen=ScreenPolicy(self._declared_examples,
                                                               self.opts.max_update_norm))
            self.emit(f"serving run {run_id} ({spec.app}) from round "
                      f"{resume.next_round if resume else 0} on {self.opts.flower_address}"
                      + (f" (model {self.recorder.base[:12]})" if self.recorder.base else ""))
            self.server = ServerAppHost(server_app, grid, spec.run_config).start()
            self._serve_failing_since = None
        except FencedOut:
            self._step_down("fenced out while resuming")
        except OSError as exc:  # e.g. the Flower port is not free yet
            self.fleet = None
            now = time.monotonic()
            self._serve_failing_since = self._serve_failing_since or now
            if now - self._serve_failing_since > SERVE_RETRY_S:
                self._serve_failing_since = None
                self.election.resign()
                raise NodeFatal(f"cannot serve on {self.opts.flower_address} for "
                                f"{SERVE_RETRY_S:.0f}s ({exc}): resigned the role") from exc
            self.emit(f"cannot serve yet ({exc}); retrying")

    def _completed(self, recorder: AppRecorder) -> None:
        """After `run_completed`: keep only the final model of the run's checkpoints."""
        assert self.store is not None and recorder.base is not None
        try:
            checkpoint.prune(self.store, recorder.keys, {recorder.base}, recorder.fence)
        except RaftflError as exc:
            log.info("pruning the completed run's checkpoints failed: %s", exc)

    def _retire_server(self) -> None:
        """The ServerApp of a run that is no longer active ends: at once if the run was
        stopped (it records nothing more), and is forgotten if it completed."""
        host, recorder = self.server, self.recorder
        if host is None or host.grid.run_id == self.run_id:
            return
        self.server = self.recorder = None
        if recorder is not None:
            recorder.deposed = True  # its hooks' next write is refused
        if host.state == "running":
            host.stop()  # stops the fleet server too: _serve starts a new one
            self.fleet = None
            self.emit(f"run {host.grid.run_id} stopped: ServerApp ended")
            if not host.join(timeout=STOP_JOIN_S):
                log.warning("the stopped run's ServerApp thread is still running")

    def _wait_for_workers(self) -> int:
        """Before each round: every live node's worker (ours too) for up to `client_wait`
        seconds; our predecessor's record outlives it by up to one TTL, so it is not waited
        for. Returns how many are connected."""
        fleet = self.fleet
        if fleet is None:
            return 0
        deadline = time.monotonic() + self.opts.client_wait
        while not fleet.stopped:  # stopped: we stepped down, the hooks' next write fails
            have = len(fleet.node_ids())
            handing_over = self.recorder is not None and self.recorder.handing_over
            if have >= self._expected_workers() or time.monotonic() >= deadline \
                    or handing_over:  # the round will not start: hand over now
                return have
            time.sleep(0.05)
        return 0

    def _expected_workers(self) -> int:
        if self.session is None:
            return 0
        return sum(1 for m in self.session.members.values()
                   if m.node != self._predecessor and not m.finished)

    def _member_by_id(self, node_id: int) -> MemberInfo | None:
        """The live member record of the node whose Flower node id is `node_id`."""
        members = self.session.members if self.session is not None else {}
        return next((m for m in list(members.values()) if runapp.node_id(m.node) == node_id),
                    None)

    def _declared_examples(self, node_id: int) -> int | None:
        """What the worker's node declared for its data (`--max-examples`), if anything."""
        member = self._member_by_id(node_id)
        return member.max_examples if member is not None and member.max_examples else None

    def _node_name(self, node_id: int) -> str | None:
        member = self._member_by_id(node_id)
        return member.node if member is not None else None

    def _on_event(self, event: Event) -> None:
        self.emit(describe(event))

    def _step_down(self, reason: str) -> None:
        """Stop serving at once. Fencing already guarantees nothing more commits."""
        server, recorder = self.server, self.recorder
        self.server = None
        self.election.fence = None
        if server is None:
            return
        if recorder is not None:
            recorder.deposed = True
        server.stop()
        self.fleet = None
        self.emit(f"stepped down: {reason}")
        if recorder is not None:
            try:
                self.events.append(StepDown(node=self.opts.name, term=recorder.term,
                                            reason=reason))
            except RaftflError:
                pass

    def _lease_lost(self) -> None:
        """Called from the keepalive thread: stop serving before etcd expires the lease.

        It only stops the server (thread-safe) and wakes the loop; the loop steps down.
        """
        server = self.server
        if server is not None:
            server.stop()
        self.wake.set()

    def _move_leader_away(self) -> None:
        """If our etcd member leads Raft, hand leadership to another member.

        etcd renews every lease when its leader changes, so an aggregator co-located with the
        Raft leader would cost an etcd election *plus* a full TTL when its host dies.
        """
        if not self.opts.move_leader or self.member is None or self.store is None:
            return
        self._leader_checked = time.monotonic()
        endpoint = self.member.spec.client_endpoint
        try:
            st = Store.endpoint_status(endpoint)
            if st.leader != st.header.member_id:
                return
            others = [m for m in self.store.members() if m.id != st.header.member_id and m.name]
            healthy = [m for m in others if self._member_up(m)]
            if healthy:
                target = min(healthy, key=lambda m: m.name)
                Store.move_leader(endpoint, target.id)
                self.emit(f"moved etcd leadership to {target.name}")
        except Exception as exc:  # noqa: BLE001 - an optimisation, never fatal
            log.info("move-leader skipped: %s", exc)

    @staticmethod
    def _member_up(member: Any) -> bool:
        for url in member.client_urls:
            try:
                Store.endpoint_status(url.split("//", 1)[-1], timeout=0.5)
                return True
            except Exception:  # noqa: BLE001
                continue
        return False

    # -- worker role ------------------------------------------------------------------------
    def _handle(self, msg_id: str, payload: bytes) -> bytes:
        """One instruction for this node's ClientApp of the run it names (in the worker
        thread). The run may be one this node's loop has not seen become active yet; an
        instruction for an earlier run, or one that cannot be read, goes to the current host,
        which refuses it."""
        from raftfl.flower.codec import CodecError, decode_message
        from raftfl.flower.grid import Stamp

        try:
            stamp = Stamp.from_json(decode_message(payload)[1])
        except CodecError:
            stamp = Stamp(0, 0)
        run_id = stamp.run_id
        current = next(iter(self._client_hosts), None)
        if run_id < max(current or 1, self.run_id or 1):
            run_id = current or self.run_id or 1
        if run_id not in self._client_hosts:
            self._client_hosts = {run_id: self._client_host(run_id)}  # one run at a time
        reply = self._client_hosts[run_id].handle(msg_id, payload)
        return tamper(reply, stamp.round)  # TEST ONLY, inert unless RAFTFL_TEST_HOSTILE is set

    def _client_host(self, run_id: int) -> Any:
        """This node's ClientApp for run `run_id`; one that cannot be loaded answers every
        instruction with the reason, as a ClientApp that raised."""
        from raftfl.flower.app import node_config
        from raftfl.flower.host import ClientAppHost

        assert self.config is not None
        run_app = self.runs.app(run_id)
        try:
            _, client_app = run_app.apps.result()
        except Exception as exc:  # noqa: BLE001 - reported in each reply
            client_app = _Unusable(exc)
        return ClientAppHost(
            client_app, run_id=run_id, node_id=runapp.node_id(self.opts.name),
            node_config=node_config(self.opts.node_config,
                                    self.config.shard_index(self.opts.name),
                                    len(self.config.nodes)),
            run_config=run_app.spec.run_config if run_app.spec else {}, admit=self._admit)

    def _admit(self, stamp: Any, message: Any) -> str | None:
        """Refuse an instruction from a term that is not the current one, or whose arrays
        are not the model it says the round starts from."""
        from raftfl.flower.codec import arrays_sha256

        assert self.store is not None
        kv = self.store.get(self.keys.aggregator)
        current = kv.create_revision if kv else None
        if stamp.term != current:
            return f"term {stamp.term} is not the current term ({current})"
        if stamp.base:
            arrays = message.content.array_records
            if len(arrays) == 1 and arrays_sha256(next(iter(arrays.values()))) != stamp.base:
                return f"the arrays are not base model {stamp.base[:12]}"
        if stamp.round and message.metadata.message_type == "train":
            self.emit(f"training round {stamp.round} for term {stamp.term}",
                      once=f"fit{stamp.term}:{stamp.round}")
            hold("fit", stamp.round)
        return None

    # -- the end ----------------------------------------------------------------------------
    def _finish(self) -> int:
        """--exit-on-complete: fetch and verify the last run's final model, write it to the
        data dir, linger for peers."""
        assert self.store is not None and self.session is not None
        runs = self.runs.refresh()
        if self.worker is not None:
            self.worker.stop()
        if runs.state.completed is None:
            self.emit(f"run {runs.latest} was stopped: no final model")
            code = 1
        else:
            assert runs.latest is not None
            path = self.runs.save_final_model(runs.latest, runs.state, self.opts.dir,
                                              self.opts.name)
            self.emit(f"final model {runs.state.completed.model_sha256[:12]} verified, "
                      f"saved to {path}")
            code = 0
        self.session.info.finished = True
        self.store.retry_for = 2.0  # peers are leaving: never wait long for a quorum now
        try:
            self.session.publish()
        except EtcdUnavailable:
            pass
        # Stay while a peer that is up has not finished: it may need our member for its
        # quorum. For one lease TTL an unfinished member counts even if it does not answer
        # (its partition may have healed a moment ago: the soak once left one stranded).
        # Once a peer is known to wait, an etcd blip does not end the wait; the deadline does.
        started, waiting = time.monotonic(), set[str]()
        while time.monotonic() - started < self.opts.linger and not self.stop.is_set():
            try:
                waiting = self._unfinished_peers(
                    unreachable_too=time.monotonic() - started < self.opts.lease_ttl)
            except EtcdUnavailable:
                pass
            if not waiting:
                return code
            self.emit(f"staying up to {self.opts.linger:.0f}s for {', '.join(sorted(waiting))}"
                      ": it may still need the quorum", once="linger")
            self.stop.wait(0.5)
        if waiting:
            self.emit(f"leaving; still unfinished: {', '.join(sorted(waiting))}")
        return code

    def _unfinished_peers(self, unreachable_too: bool = False) -> set[str]:
        """Peers that are up but have not fetched the final model yet.

        Leaving takes our etcd member with us, so we stay while a peer still needs the
        quorum: one with a live member record, or (embedded etcd) a reachable member, such
        as a node whose partition just healed and whose lease is gone. `unreachable_too`
        counts unfinished members that do not answer yet (a link that healed a moment ago).
        """
        assert self.store is not None
        records = read_members(self.store, self.keys)
        pending = {n for n, m in records.items() if not m.finished and n != self.opts.name}
        if self.member is not None:
            finished = {n for n, m in records.items() if m.finished}
            pending |= {m.name for m in self.store.members()
                        if m.name and m.name not in finished | {self.opts.name}
                        and (unreachable_too or self._member_up(m))}
        return pending

    def _signals(self) -> None:
        def handler(signum: int, _frame: Any) -> None:
            self.emit(f"signal {signum}: shutting down")
            self.signalled = True
            self.stop.set()
            self.wake.set()

        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, handler)
            signal.signal(signal.SIGINT, handler)

    def _shutdown(self) -> None:
        self.stop.set()
        if self._events_watch is not None:
            self._events_watch[1].set()
        self.holder_probe.stop()
        if self.worker is not None:
            self.worker.stop()
        if self.server is not None:
            self.server.stop()
        # Give the role (and the member record) up before waiting for a fit in flight: the
        # successor's election must not wait for our local training to end.
        if self.session is not None:
            if self.signalled and self.store is not None:
                self.store.retry_for = 2.0  # best effort on the way out: never hang here
                try:
                    self.runs.join_log().append(NodeLeft(node=self.opts.name))
                except RaftflError:
                    pass
            # A finished node's record outlives it by one TTL: peers still lingering then
            # know it left finished, not cut off (see _finish).
            self.session.close(revoke=not self.session.info.finished)
        if self.worker is not None and not self.worker.join(WORKER_STOP_S):
            log.warning("the worker's fit did not end within %.0fs", WORKER_STOP_S)
        if self.model_server is not None:
            self.model_server.stop()
        if self.member is not None:
            self.member.stop()


class _Unusable:
    """Stands in for a ClientApp whose run's app cannot be loaded: raises why, each time."""

    def __init__(self, error: BaseException):
        self.error = error

    def __call__(self, message: Any, context: Any) -> Any:
        raise RaftflError(f"this node cannot load the run's app: {self.error}")
