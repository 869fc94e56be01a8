"""One raftfl node and its HA loop.

Like Patroni's `ha.py`, the loop is level-triggered: each cycle reads the role key and
replays the event log, then makes this node's role match what etcd says. Watches only wake
the loop early; missing one costs at most one `LOOP_WAIT_S`.

    role vacant     -> rank candidates at the vacancy's revision; the node at rank k
                       campaigns after k * rank_step seconds (create-if-absent)
    role is mine    -> serve the rounds that remain, resuming from the last checkpoint
    role is theirs  -> train for them (and stop serving, if this node still was)
    run completed   -> fetch and verify the final model, then leave
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raftfl.core.address import NodeAddress, check_port_free
from raftfl.core.errors import FencedOut, RaftflError
from raftfl.core.events import AggregatorElected, NodeJoined, NodeLeft, RunStarted, StepDown
from raftfl.core.keys import Keys
from raftfl.core.ranking import Ranked, rank
from raftfl.core.replay import FLState
from raftfl.core.runconfig import RunConfig, ensure
from raftfl.etcd import checkpoint
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
from raftfl.etcd.store import EtcdUnavailable, Fence, Store
from raftfl.flower.legacy import ServerSession
from raftfl.node.aggregator import RoundRecorder, resume_point
from raftfl.node.session import MemberInfo, Session, candidates, read_members, read_samples
from raftfl.node.worker import Trainer, WorkerRunner

log = logging.getLogger(__name__)

LOOP_WAIT_S = 1.0
LEADER_CHECK_S = 5.0  # how often a serving aggregator makes sure it does not lead etcd
EXTRA_ROUNDS = 2  # Flower rounds beyond the remaining ones, for rounds that must be retried
SERVE_RETRY_S = 10.0  # then give the role up (exit) instead of holding it without serving


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
    run: RunConfig | None = None  # proposed run config (used when this node creates the cluster)
    linger: float = 15.0

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
    def dir(self) -> Path:
        default = Path(".raftfl") / self.cluster / self.name.replace(":", "_")
        return (self.data_dir or default).expanduser().resolve()


@dataclass
class Vacancy:
    revision: int
    seen_ts: float
    seen_mono: float
    ranking: list[Ranked]
    my_rank: int


class Node:
    def __init__(self, opts: NodeOptions, out: Any = None):
        self.opts = opts
        self.keys = Keys(opts.cluster)
        self.out = out or sys.stdout
        self.stop = threading.Event()
        self.wake = threading.Event()
        self.member: EtcdMember | None = None
        self.store: Store | None = None
        self.events: EventLog  # set once etcd answers, in run()
        self.session: Session | None = None
        self.server: ServerSession | None = None
        self.recorder: RoundRecorder | None = None
        self.worker: WorkerRunner | None = None
        self.vacancy: Vacancy | None = None
        self.vacancy_rev: int | None = None
        self.term: int | None = None  # current aggregator term as last seen
        self.config: RunConfig | None = None
        self.data: Future[Any] | None = None
        self._said: set[str] = set()
        self.signalled = False
        self._leader_checked = 0.0
        self._serve_failing_since: float | None = None

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
        binary = find_etcd(o.etcd_bin)
        check_version(etcd_version(binary), o.allow_unsafe_etcd)
        everyone = {a.name: a for a in [o.address, *o.peers]}
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
        self.member.start()
        self.emit(f"etcd member started (pid {self.member.proc.pid if self.member.proc else '?'}, "
                  f"{'reusing' if reused else 'new'} data dir {o.dir})")
        peers = [a.client_endpoint for n, a in sorted(everyone.items()) if n != o.name]
        return [spec.client_endpoint, *peers]

    def run(self) -> int:
        self._signals()
        try:
            endpoints = self.start_member()
            self.store = Store(endpoints)
            if self.member is not None:
                wait_healthy(self.member, self._healthy, self.opts.start_timeout, self.emit)
            self.emit(f"etcd healthy; client endpoints {','.join(endpoints)}")
            self.events = EventLog(self.store, self.keys)
            self.config = self._await_config()
            self.data = ThreadPoolExecutor(1, "data").submit(self._load_data)
            info = MemberInfo(node=self.opts.name, ip=self.opts.ip,
                              client_port=self.opts.etcd_client_port,
                              flower_address=self.opts.flower_address,
                              priority=self.opts.priority, nofailover=self.opts.nofailover,
                              pid=os.getpid())
            self.session = Session(self.store, self.keys, info, self.opts.lease_ttl,
                                   self._lease_lost, self.opts.probe_interval)
            self.session.open()
            self.session.start()
            self.events.append(NodeJoined(node=self.opts.name))
            self.worker = WorkerRunner(Trainer(self.opts.name, self._current_term, self._train,
                                               self._on_fit))
            self._watch()
            return self._loop()
        finally:
            self._shutdown()

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
                self.emit(f"run: {cfg.rounds} rounds, dataset {cfg.dataset}, "
                          f"{len(cfg.nodes)} initial nodes", once="config")
                return cfg
            if time.monotonic() > deadline:
                raise RaftflError("no run configuration in etcd: start the first node with -r ROUNDS")
            self.emit("waiting for the run configuration (start a node with -r ROUNDS)", once="wcfg")
            self.stop.wait(1.0)
        raise RaftflError("stopped")

    def _load_data(self) -> tuple[Any, Any]:
        import torch

        from raftfl.task.data import load_dataset, partition, subset

        torch.set_num_threads(int(os.environ.get("RAFTFL_TORCH_THREADS", "1")))
        cfg = self.config
        assert cfg is not None
        train, test = load_dataset(cfg.dataset, n_train=cfg.n_train, n_test=cfg.n_test,
                                   seed=cfg.seed)
        labels = train.y.numpy()
        idx = partition(len(train), len(cfg.nodes), cfg.shard_index(self.opts.name),
                        scheme=cfg.partition, alpha=cfg.alpha, labels=labels, seed=cfg.seed)
        self.emit(f"data: {train.name}, shard of {len(idx)} of {len(train)} images")
        return subset(train, idx), test

    # -- watches ----------------------------------------------------------------------------
    def _watch(self) -> None:
        assert self.store is not None
        _, rev = self.store.range(self.keys.aggregator, keys_only=True)

        def role() -> None:
            assert self.store is not None
            for change in self.store.watch(self.keys.aggregator, rev + 1, self.stop):
                if change.key != self.keys.aggregator:
                    continue
                if change.value is None:
                    self.vacancy_rev = change.revision
                    self.emit(f"aggregator role vacant at revision {change.revision}")
                else:
                    self.vacancy_rev, self.vacancy = None, None
                self.wake.set()

        def events() -> None:
            for _ in self.events.tail(rev + 1, self.stop):
                self.wake.set()

        for target in (role, events):
            threading.Thread(target=self._guard(target), name=target.__name__, daemon=True).start()

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
        while not self.stop.is_set():
            self.next_wait = LOOP_WAIT_S
            try:
                if self.cycle():
                    return self._finish()
            except (EtcdUnavailable, FencedOut) as exc:
                self.emit(f"{exc}")
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
        """One reconciliation. Returns True when the run has completed."""
        assert self.store is not None and self.session is not None and self.worker is not None
        agg = self.store.get(self.keys.aggregator)
        state, rev = self.events.current()
        if state.done:
            return True
        if self.session.lease is None:
            self.session.open()
            self.emit("rejoined with a new lease")
        holder = self._holder(agg)
        if agg is None or holder is None:
            self.term = None
            if self.server is not None:
                self._step_down("the role key is gone")
            self.worker.follow(None, None)
            self._consider_campaign(state, rev)
            return False
        self.term = agg.create_revision
        self.vacancy = None
        if holder.get("node") == self.opts.name and agg.lease == self.session.lease:
            self._serve(agg.create_revision, state)
            if time.monotonic() - self._leader_checked > LEADER_CHECK_S:
                self._move_leader_away()
            return False
        if self.server is not None:
            self._step_down(f"{holder.get('node')} holds term {agg.create_revision}")
        if holder.get("node") == self.opts.name:
            self.worker.follow(None, None)  # our old key, on a lost lease: it will expire
        else:
            self.emit(f"worker for {holder.get('node')} (term {agg.create_revision})",
                      once=f"follow{agg.create_revision}")
            self.worker.follow(holder.get("flower_address"), agg.create_revision)
        return False

    def _holder(self, agg: Any) -> dict[str, Any] | None:
        """The role key's value; a malformed one (written by hand) is reported, not fatal."""
        if agg is None:
            return None
        try:
            holder = json.loads(agg.value)
            if isinstance(holder, dict) and isinstance(holder.get("node"), str):
                return holder
        except ValueError:
            pass
        self.emit(f"the aggregator key holds a malformed value; remove it with `etcdctl del "
                  f"{self.keys.aggregator}`", once=f"badagg{agg.mod_revision}")
        return {"node": "?", "flower_address": None}

    # -- election ---------------------------------------------------------------------------
    def _consider_campaign(self, state: FLState, rev: int) -> None:
        o = self.opts
        if o.nofailover:
            self.emit("role vacant; this node is nofailover and will not campaign", once="nofo")
            return
        if not state.elections:  # bootstrap: the seed's -a flag decides
            if o.aggregator in ("self", o.name):
                self._campaign(None, rev, state)
                return
            if o.aggregator != "auto":
                self.emit(f"waiting for bootstrap aggregator {o.aggregator}", once="boot")
                return
            if not self._peers_measured():
                return
        if self.vacancy is None:
            self.vacancy = self._rank(self.vacancy_rev or rev, state.aggregator)
            top = ", ".join(f"{r.node}={r.score:.2f}" for r in self.vacancy.ranking[:5])
            self.emit(f"election at revision {self.vacancy.revision}: my rank "
                      f"{self.vacancy.my_rank} [{top}]")
        due = self.vacancy.seen_mono + self.vacancy.my_rank * o.rank_step
        wait = due - time.monotonic()
        if wait <= 0:
            self._campaign(self.vacancy, rev, state)
        else:
            self.next_wait = min(self.next_wait, wait)

    def _peers_measured(self) -> bool:
        """With -a auto, rank only once every expected peer has published samples."""
        assert self.store is not None and self.config is not None
        members = read_members(self.store, self.keys)
        sampled = {s.node for s in read_samples(self.store, self.keys)}
        expected = set(self.config.nodes) | {self.opts.name}
        ready = expected <= (set(members) & sampled)
        if not ready:
            self.emit("waiting for every node to publish latency samples", once="measure")
        return ready

    def _rank(self, revision: int, previous: str | None) -> Vacancy:
        assert self.store is not None
        members = read_members(self.store, self.keys, revision)
        samples = read_samples(self.store, self.keys, revision)
        assert self.config is not None
        ranking = rank(candidates(members, samples, self.opts.rtt_window),
                       self.config.ranking_weights,
                       previous)
        names = [r.node for r in ranking]
        my_rank = names.index(self.opts.name) if self.opts.name in names else len(names)
        return Vacancy(revision, time.time(), time.monotonic(), ranking, my_rank)

    def _campaign(self, vacancy: Vacancy | None, rev: int, state: FLState) -> None:
        assert self.store is not None and self.session is not None
        lease = self.session.lease
        if lease is None or not self.session.valid:
            return
        value = {"node": self.opts.name, "flower_address": self.opts.flower_address, "term": 0}
        self.store.create(self.keys.aggregator, json.dumps(value), lease=lease)
        # Judge by the key, not the reply: a retried create that had landed answers EXISTS.
        kv = self.store.get(self.keys.aggregator)
        if kv is None or kv.lease != lease or json.loads(kv.value).get("term") != 0:
            return
        term = kv.create_revision
        fence = Fence(self.keys.aggregator, term)
        value["term"] = term
        try:
            self.store.put_fenced(self.keys.aggregator, json.dumps(value), fence, lease=lease)
            me = next((r for r in vacancy.ranking if r.node == self.opts.name), None) \
                if vacancy else None
            self.events.append(AggregatorElected(
                node=self.opts.name, term=term, flower_address=self.opts.flower_address,
                rank=vacancy.my_rank if vacancy else 0, score=me.score if me else None,
                revision=vacancy.revision if vacancy else rev,
                ranking=[r.to_dict() for r in vacancy.ranking] if vacancy else [],
                previous=state.aggregator, vacant_since=vacancy.seen_ts if vacancy else None),
                fence=fence)
            if state.rounds is None:
                from raftfl.task.model import initial_weights, weights_sha256

                assert self.config is not None
                self.events.append(RunStarted(
                    node=self.opts.name, term=term, rounds=self.config.rounds,
                    initial_model=weights_sha256(initial_weights(self.config.seed))), fence=fence)
        except FencedOut:
            return
        self.emit(f"elected aggregator, term {term}"
                  + (f" (rank {vacancy.my_rank}, score {me.score:.2f})" if vacancy and me else ""))
        self._move_leader_away()
        self.wake.set()

    # -- aggregator role --------------------------------------------------------------------
    def _serve(self, term: int, state: FLState) -> None:
        assert self.store is not None and self.worker is not None and self.config is not None
        if self.server is not None and self.recorder is not None and self.recorder.term == term:
            if self.server.running or self.recorder.done:
                return
            # Still our term, yet the server ended (an etcd outage outlasted the retries,
            # or every retry round failed): resume again from the log.
            self.emit("Flower server ended before the run completed; restarting it")
        self.worker.follow(None, None)
        fence = Fence(self.keys.aggregator, term)
        cfg = self.config
        assert self.data is not None
        _, test = self.data.result()
        from raftfl.task.model import initial_weights

        try:
            resume = resume_point(self.store, self.keys, self.events, state, fence,
                                  self.opts.name, lambda: initial_weights(cfg.seed))
            self.recorder = RoundRecorder(
                store=self.store, keys=self.keys, events=self.events, fence=fence,
                node=self.opts.name, rounds=cfg.rounds, resume=resume, test_set=test,
                expected_workers=self._expected_workers, client_wait_s=self.opts.client_wait,
                no_worker_wait_s=self.opts.start_timeout, on_round=self._on_round)
            if self.recorder.done:  # every round committed, completion not yet recorded
                self.recorder.complete()
                return
            remaining = cfg.rounds - resume.round + 1
            self.emit(f"serving rounds {resume.round}..{cfg.rounds} on {self.opts.flower_address}"
                      f" from model {resume.sha256[:12]}")
            self.server = ServerSession(self.opts.flower_address, self.recorder, resume.weights,
                                        remaining + EXTRA_ROUNDS, self.opts.round_timeout).start()
            self._serve_failing_since = None
        except FencedOut:
            self._step_down("fenced out while resuming")
        except (OSError, RuntimeError) as exc:  # e.g. the Flower port is not free yet
            self.server = None
            now = time.monotonic()
            self._serve_failing_since = self._serve_failing_since or now
            if now - self._serve_failing_since > SERVE_RETRY_S:
                raise RaftflError(f"cannot serve on {self.opts.flower_address} for "
                                  f"{SERVE_RETRY_S:.0f}s: {exc}") from exc
            self.emit(f"cannot serve yet ({exc}); retrying")

    def _expected_workers(self) -> int:
        if self.session is None:
            return 0
        return sum(1 for m in self.session.members.values()
                   if m.node != self.opts.name and not m.finished)

    def _on_round(self, what: str, info: dict[str, Any]) -> None:
        if what == "committed":
            self.emit(f"round {info['round']} committed: accuracy {info['accuracy']:.3f}, "
                      f"loss {info['loss']:.3f}, {info['results']} results, "
                      f"{info['failures']} failures")
        elif what == "started":
            self.emit(f"round {info['round']} started with {info['clients']} workers")
        elif what == "retry":
            self.emit(f"round {info['round']}: no results ({info['failures']} failures); retrying")
        elif what == "waiting":
            self.emit(f"round {info['round']}: {info['connected']}/{info['expected']} workers "
                      "connected; waiting")
        elif what == "completed":
            self.emit(f"run completed: {info['rounds']} rounds, model {info['model'][:12]}")

    def _step_down(self, reason: str) -> None:
        """Stop serving at once. Fencing already guarantees nothing more commits."""
        server, recorder = self.server, self.recorder
        self.server = None
        if server is not None:
            if recorder is not None:
                recorder.deposed = True
            server.stop()
            self.emit(f"stepped down: {reason}")
            if self.store is not None and recorder is not None:
                try:
                    self.events.append(StepDown(node=self.opts.name, term=recorder.term,
                                                reason=reason))
                except (EtcdUnavailable, RaftflError):
                    pass

    def _lease_lost(self) -> None:
        """Called from the keepalive thread: stop serving before anything else happens."""
        if self.server is not None:
            self.server.stop()
            if self.recorder is not None:
                self.recorder.deposed = True
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
    def _current_term(self) -> int | None:
        assert self.store is not None
        kv = self.store.get(self.keys.aggregator)
        return kv.create_revision if kv else None

    def _train(self, params: list[Any], rnd: int) -> tuple[list[Any], int]:
        from raftfl.task.model import train

        assert self.data is not None and self.config is not None
        shard, _ = self.data.result()
        cfg = self.config
        seed = cfg.seed * 1_000_003 + rnd * 1009 + cfg.shard_index(self.opts.name)
        weights, metrics = train(params, shard, epochs=cfg.epochs, lr=cfg.lr,
                                 batch_size=cfg.batch_size, seed=seed)
        return weights, int(metrics["num_examples"])

    def _on_fit(self, rnd: int, term: int) -> None:
        self.emit(f"training round {rnd} for term {term}")

    # -- the end ----------------------------------------------------------------------------
    def _finish(self) -> int:
        """Fetch and verify the final model, write it to the data dir, linger for peers."""
        assert self.store is not None and self.session is not None
        state, _ = self.events.current()
        assert state.completed is not None
        sha = state.completed.model_sha256
        if self.worker is not None:
            self.worker.stop()
        blob = checkpoint.load(self.store, self.keys, sha)
        path = self.opts.dir / "final_model.bin"
        path.write_bytes(blob)
        result = {"node": self.opts.name, "final_model_sha256": checkpoint.sha256(blob),
                  "rounds": state.rounds, "committed": state.commit_order}
        (self.opts.dir / "result.json").write_text(json.dumps(result))
        self.emit(f"final model {result['final_model_sha256'][:12]} verified, saved to {path}")
        self.session.info.finished = True
        self.store.retry_for = 2.0  # peers are leaving: never wait long for a quorum now
        try:
            self.session.publish()
        except EtcdUnavailable:
            pass
        deadline = time.monotonic() + self.opts.linger
        while time.monotonic() < deadline and not self.stop.is_set():
            try:
                if not self._unfinished_peers():
                    break
            except EtcdUnavailable:
                break
            self.stop.wait(0.5)
        return 0

    def _unfinished_peers(self) -> set[str]:
        """Peers that are up but have not fetched the final model yet.

        Leaving takes our etcd member with us, so we stay while a peer still needs the
        quorum: one with a live member record, or (embedded etcd) a reachable member, such
        as a node whose partition just healed and whose lease is gone.
        """
        assert self.store is not None
        records = read_members(self.store, self.keys)
        pending = {n for n, m in records.items() if not m.finished}
        if self.member is not None:
            finished = {n for n, m in records.items() if m.finished}
            pending |= {m.name for m in self.store.members()
                        if m.name and m.name not in finished and self._member_up(m)}
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
        if self.worker is not None:
            self.worker.stop()
        if self.server is not None:
            self.server.stop()
        if self.session is not None:
            if self.signalled and self.store is not None:
                self.store.retry_for = 2.0  # best effort on the way out: never hang here
                try:
                    self.events.append(NodeLeft(node=self.opts.name))
                except RaftflError:
                    pass
            self.session.close(revoke=True)
        if self.member is not None:
            self.member.stop()
