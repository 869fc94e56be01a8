"""The steps of a node's start-up and of its end, which `Node.run` puts in order: the etcd
member, the model service, the cluster config, run 1; leaving with --exit-on-complete, and
moving etcd's Raft leadership away. They run in the HA loop's thread.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import logging
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from raftfl import signing
from raftfl.core.errors import RaftflError
from raftfl.core.keys import Keys
from raftfl.core.quorum import initial_voters
from raftfl.core.ranking import Ranked
from raftfl.core.specs import ClusterConfig, RunSpec, spec_rounds
from raftfl.etcd import run_store as stored_runs
from raftfl.etcd import signers
from raftfl.etcd.clusterconfig import ensure
from raftfl.etcd.context import read_members
from raftfl.etcd.member import (
    EtcdMember,
    MemberSpec,
    check_version,
    etcd_version,
    find_etcd,
    prepare_data_dir,
)
from raftfl.etcd.store import EtcdUnavailable, Store
from raftfl.net.address import client_endpoint, peer_url, resolve
from raftfl.net.ports import check_port_free
from raftfl.node import runapp
from raftfl.node.models import MayPut, ModelFiles, Models, ModelServer
from raftfl.node.options import LINGER_S, NodeOptions
from raftfl.node.package import pack
from raftfl.node.runs import Runs
from raftfl.node.session import Session
from raftfl.node.shell import Shell, Voice
from raftfl.node.worker import WorkerRunner

log = logging.getLogger(__name__)

# Libraries whose first import holds Python's GIL for a long stretch: libtorch's loading and
# static initialisers, 0.36 s at once on an idle core here. On a busy or small host that is
# seconds in which the node sends no lease keepalive (16 nodes on 2 cores lost 4.7 leases a
# round, each in the first seconds of the run's first training).
WARM_UP = ("torch",)


# -- start-up -----------------------------------------------------------------------------
def warm_up(o: NodeOptions) -> None:
    """Import the heavy libraries this node's app depends on (of `WARM_UP`) before the node
    has a lease to lose; nothing for an app without them (a numpy app stays small)."""
    try:
        wanted = [name for name in WARM_UP if name in runapp.load(o.app).dependencies]
    except RaftflError:
        return  # a bad app is reported where the run is submitted or taken up
    for name in wanted:
        if importlib.util.find_spec(name) is not None:
            started = time.monotonic()
            importlib.import_module(name)
            log.info("imported %s before opening the lease (%.1f s)", name,
                     time.monotonic() - started)


def start_member(o: NodeOptions, say: Voice) -> tuple[EtcdMember | None, list[str]]:
    """Start the embedded etcd member (unless external or a client); returns it and the
    client endpoints."""
    if o.etcd_endpoints:
        return None, list(o.etcd_endpoints)
    everyone = {a.name: a for a in [o.address, *o.peers]}
    if not o.join:
        voters = initial_voters(sorted(everyone), o.max_voters)
        if o.name not in voters:  # every node computes the same split from the same names
            say(f"etcd client of the {len(voters)} voters (--max-voters "
                f"{o.max_voters}); this node runs no etcd member")
            return None, [client_endpoint(everyone[n]) for n in voters]
        everyone = {n: everyone[n] for n in voters}
    binary = find_etcd(o.etcd_bin)
    check_version(etcd_version(binary), o.allow_unsafe_etcd)
    if o.ip.startswith("127.") and any(not resolve(a.host).startswith("127.") for a in o.peers):
        say(f"warning: {o.address.host} resolves to {o.ip}, which peers on other hosts "
            "cannot reach; use this host's LAN address in -s")
    spec = MemberSpec(
        name=o.name, cluster=o.cluster, data_dir=o.dir, ip=o.ip, peer_port=o.address.port,
        client_port=o.etcd_client_port, state="existing" if o.join else "new",
        initial_cluster={n: peer_url(a) for n, a in sorted(everyone.items())})
    ports = ((spec.peer_port, "etcd peer"), (spec.client_port, "etcd client"),
             (int(o.flower_address.rsplit(":", 1)[1]), "Flower"))
    if len({port for port, _ in ports}) < len(ports):
        raise RaftflError("the etcd peer, etcd client and Flower ports must differ: "
                          + ", ".join(f"{what} {port}" for port, what in ports))
    for port, what in ports:  # before prepare_data_dir: a failed start claims nothing
        check_port_free(o.ip, port, what)
    reused = prepare_data_dir(spec)
    member = EtcdMember(spec, binary)
    member.start(threaded=o.join)  # a joiner's JoinWatch already calls into gRPC
    say(f"etcd member started (pid {member.proc.pid if member.proc else '?'}, "
        f"{'reusing' if reused else 'new'} data dir {o.dir})")
    peers = [client_endpoint(a) for n, a in sorted(everyone.items()) if n != o.name]
    return member, [spec.client_endpoint, *peers]


def publish_certificate(store: Store, keys: Keys) -> None:
    """In a secured cluster, publish this node's certificate (`certs/<name>`) before it
    signs anything: its peers check its events and role claims against it."""
    signers.publish(store, keys)


def serve_models(opts: NodeOptions, say: Voice, peers: Callable[[], list[str]],
                 committed: Callable[[], set[str]] | None = None,
                 may_put: MayPut | None = None) -> tuple[ModelServer, Models]:
    """The model service and this node's `Models`; `committed` names the models retention
    must keep (node/models.py `committed_models`, read through the node's store), `may_put`
    who may store one."""
    port = int(opts.models_address.rsplit(":", 1)[1])
    if port in (opts.address.port, opts.etcd_client_port,
                int(opts.flower_address.rsplit(":", 1)[1])):
        raise RaftflError(f"--models-port {port} is one of the node's other ports")
    files = ModelFiles(opts.dir / "models", committed=committed)
    server = ModelServer(opts.ip, port, files, may_put=may_put).start()
    return server, Models(files, opts.models_address, peers, opts.model_replicas,
                          opts.inline_model_bytes, say)


def model_peers(store: Store, keys: Keys, me: str, ranking: tuple[Ranked, ...]) -> list[str]:
    """Live peers' model services, best-ranked first: the likely next aggregator then
    resumes from its own copy. A member-local read: a stale list only costs a push that fails
    and moves on to the next peer."""
    order = {r.node: i for i, r in enumerate(ranking)}
    peers = [m for n, m in read_members(store, keys, serializable=True).items()
             if n != me and m.models_address and not m.finished]
    peers.sort(key=lambda m: (order.get(m.node, len(order)), m.node))
    return [m.models_address for m in peers]


def healthy(store: Store, keys: Keys) -> bool:
    store.call(lambda: store.client.get_response(keys.config), retry_for=0.5)
    return True


def await_config(store: Store, keys: Keys, opts: NodeOptions, say: Voice,
                 stop: threading.Event) -> ClusterConfig:
    deadline = time.monotonic() + opts.start_timeout
    while not stop.is_set():
        cfg = ensure(store, keys, opts.first_run)
        if cfg is not None:
            say(f"cluster of {len(cfg.nodes)} initial nodes", once="config")
            return cfg
        if time.monotonic() > deadline:
            raise RaftflError("no cluster configuration in etcd: start the first node "
                              "with -r ROUNDS")
        say("waiting for the cluster configuration (start a node with -r ROUNDS)", once="wcfg")
        stop.wait(1.0)
    raise RaftflError("stopped")


def submit_first_run(store: Store, keys: Keys, opts: NodeOptions, say: Voice) -> None:
    """The node with -r submits run 1, unless it exists (a restart, or a peer's)."""
    if opts.first_run is None:
        return
    spec, blob = first_run(opts, opts.first_run)
    if opts.sign_key is not None:
        spec = signing.sign_run(spec, blob, signing.load_private_key(opts.sign_key), keys.cluster)
    if stored_runs.submit(store, keys, spec, blob, run_id=1) == 1:
        say(f"submitted run 1: app {spec.app}"
            + (f", signed by {spec.signed_by}" if spec.signed_by else ""))


def first_run(opts: NodeOptions, proposed: ClusterConfig) -> tuple[RunSpec, bytes]:
    """Run 1, which the node with -r submits (unless it exists: a restart, or a peer's):
    this node's app, packaged. raftfl's task flags configure the bundled app; other apps
    take --run-config (and -r, as num-server-rounds)."""
    app = runapp.load(opts.app)
    bundled = app.root == runapp.bundled_app()
    flags = {f: getattr(proposed, f) for f in runapp.FLAG_KEYS if bundled or f == "rounds"}
    run_config = runapp.run_config(app, flags, opts.run_config)
    blob = pack(app.root)
    return RunSpec(app=app.name, app_sha256=hashlib.sha256(blob).hexdigest(),
                   run_config=run_config, rounds=spec_rounds(run_config), by=opts.name), blob


def move_leader_away(store: Store, member: EtcdMember, say: Voice) -> None:
    """If our etcd member leads Raft, hand leadership to another member.

    etcd renews every lease when its leader changes, so an aggregator co-located with the
    Raft leader would cost an etcd election *plus* a full TTL when its host dies.
    """
    endpoint = member.spec.client_endpoint
    try:
        st = Store.endpoint_status(endpoint)
        if st.leader != st.header.member_id:
            return
        others = [m for m in store.members() if m.id != st.header.member_id and m.name]
        healthy = [m for m in others if _member_up(m)]
        if healthy:
            target = min(healthy, key=lambda m: m.name)
            Store.move_leader(endpoint, target.id)
            say(f"moved etcd leadership to {target.name}")
    except Exception as exc:  # noqa: BLE001 - an optimisation, never fatal
        log.info("move-leader skipped: %s", exc)


def _member_up(member: Any) -> bool:
    for url in member.client_urls:
        try:
            Store.endpoint_status(url.split("//", 1)[-1], timeout=0.5)
            return True
        except Exception:  # noqa: BLE001
            continue
    return False


def removed(store: Store, name: str) -> bool:
    """True when the peers no longer list our member: we were removed, not crashed."""
    try:
        return all(m.name != name for m in store.members())
    except EtcdUnavailable:
        return False


# -- the end --------------------------------------------------------------------------------
def finish(shell: Shell, runs: Runs, session: Session, worker: WorkerRunner,
           member: EtcdMember | None) -> int:
    """--exit-on-complete: fetch and verify the last run's final model, write it to the
    data dir, linger for peers."""
    opts, store, say = shell.opts, shell.store, shell.say
    seen = runs.refresh()
    worker.stop()
    if seen.state.completed is None:
        say(f"run {seen.latest} was stopped: no final model")
        code = 1
    else:
        assert seen.latest is not None
        path = runs.save_final_model(seen.latest, seen.state, opts.dir, opts.name)
        say(f"final model {seen.state.completed.model_sha256[:12]} verified, saved to {path}"
            if path else f"run {seen.latest} completed; its ServerApp committed no model")
        code = 0
    session.info.finished = True
    store.retry_for = 2.0  # peers are leaving: never wait long for a quorum now
    try:
        session.publish()
    except EtcdUnavailable:
        pass
    # Stay while a peer that is up has not finished: it may need our member for its
    # quorum. For one lease TTL an unfinished member counts even if it does not answer
    # (its partition may have healed a moment ago: the soak once left one stranded).
    # Once a peer is known to wait, an etcd blip does not end the wait; the deadline does.
    started, waiting = time.monotonic(), set[str]()
    while time.monotonic() - started < LINGER_S and not shell.stop.is_set():
        try:
            waiting = _unfinished_peers(
                shell, member, time.monotonic() - started < opts.timings.quorum_grace_s)
        except EtcdUnavailable:
            pass
        if not waiting:
            return code
        say(f"staying up to {LINGER_S:.0f}s for {', '.join(sorted(waiting))}"
            ": it may still need the quorum", once="linger")
        shell.stop.wait(0.5)
    if waiting:
        say(f"leaving; still unfinished: {', '.join(sorted(waiting))}")
    return code


def _unfinished_peers(shell: Shell, member: EtcdMember | None, unreachable_too: bool) -> set[str]:
    """Peers that are up but have not fetched the final model yet.

    Leaving takes our etcd member with us, so we stay while a peer still needs the
    quorum: one with a live member record, or (embedded etcd) a reachable member, such
    as a node whose partition just healed and whose lease is gone. `unreachable_too`
    counts unfinished members that do not answer yet (a link that healed a moment ago).
    """
    name, store = shell.name, shell.store
    records = read_members(store, shell.keys)
    pending = {n for n, m in records.items() if not m.finished and n != name}
    if member is not None:
        finished = {n for n, m in records.items() if m.finished}
        pending |= {m.name for m in store.members()
                    if m.name and m.name not in finished | {name}
                    and (unreachable_too or _member_up(m))}
    return pending


def install_signals(on_signal: Callable[[int], None]) -> None:
    """SIGTERM and SIGINT call `on_signal` (only the main thread can install handlers)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda signum, _frame: on_signal(signum))
        signal.signal(signal.SIGINT, lambda signum, _frame: on_signal(signum))
