"""The `raftfl` command line (click). Heavy imports happen inside commands, so it starts fast.

Every user-facing failure is one line on stderr and a non-zero exit: 2 for bad usage,
1 for everything else.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from raftfl import __version__
from raftfl.core.address import NodeAddress, check_cluster_name, client_endpoints, parse_address
from raftfl.core.errors import RaftflError


def _addresses(values: tuple[str, ...]) -> list[NodeAddress]:
    try:
        return [parse_address(v) for v in values]
    except RaftflError as exc:
        raise click.BadParameter(str(exc)) from exc


def _endpoints(nodes: tuple[str, ...], endpoints: str | None,
               option: str = "--endpoints") -> list[str]:
    if endpoints:
        eps = [e.strip().split("//", 1)[-1] for e in endpoints.split(",") if e.strip()]
        for ep in eps or [endpoints]:
            host, sep, port = ep.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise click.BadParameter(f"invalid etcd endpoint {ep!r}: expected ip:port, "
                                         "e.g. 127.0.0.1:2379", param_hint=option)
        return eps
    if not nodes:
        raise click.UsageError("give the nodes (-n host:port ...) or --endpoints")
    return client_endpoints(_addresses(nodes))


def _cluster(ctx: click.Context, param: click.Parameter, value: str) -> str:
    try:
        return check_cluster_name(value)
    except RaftflError as exc:
        raise click.BadParameter(str(exc)) from exc


peers_option = click.option("-n", "--nodes", "nodes", multiple=True, metavar="HOST:PORT",
                            help="Node addresses (host:raft_port); repeat or list after -n.")
cluster_option = click.option("--cluster", default="default", show_default=True, callback=_cluster,
                              help="Cluster name: keys live under /raftfl/<cluster>/.")


def _certs(ctx: click.Context, param: click.Parameter, value: Path | None) -> None:
    """Load the bundle once; every etcd and fleet connection of this process then uses it."""
    from raftfl import tls

    if value is not None:
        try:
            tls.configure(tls.load(value))
        except RaftflError as exc:
            raise click.BadParameter(str(exc)) from exc


certs_option = click.option(
    "--certs", type=click.Path(path_type=Path, exists=True, file_okay=False), default=None,
    expose_value=False, is_eager=True, callback=_certs, metavar="DIR",
    help="Certificate bundle (ca.crt, tls.crt, tls.key from `raftfl certs issue`): mutual "
         "TLS to etcd and the fleet.")


def endpoints_option(fn: Any) -> Any:
    fn = certs_option(fn)
    return click.option("--endpoints", default=None,
                        help="etcd client endpoints (ip:port,...) instead of -n.")(fn)


def target_options(fn: Any) -> Any:
    """Which cluster a command talks to: -n HOST:PORT... (or --endpoints), --cluster, --certs."""
    fn = cluster_option(fn)
    fn = endpoints_option(fn)
    fn = click.argument("more_nodes", nargs=-1, metavar="[HOST:PORT]...")(fn)
    return peers_option(fn)


@contextmanager
def _store(nodes: tuple[str, ...], endpoints: str | None) -> Iterator[Any]:
    """An etcd client for a one-shot command, closed when it is done."""
    from raftfl.etcd.store import Store

    store = Store(_endpoints(nodes, endpoints), retry_for=10)
    try:
        yield store
    finally:
        store.close()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="raftfl")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for Flower's too).")
def cli(verbose: int) -> None:
    """raftfl: federated learning whose aggregator heals itself, on etcd."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@cli.group()
def node() -> None:
    """Start, join or leave a node."""


def _node_options(fn: Any) -> Any:
    options = [
        click.option("-s", "--self", "address", required=True, metavar="HOST:PORT",
                     help="This node's address; PORT is its etcd peer (Raft) port."),
        peers_option,
        click.argument("more_nodes", nargs=-1, metavar="[HOST:PORT]..."),
        click.option("-a", "--aggregator", default="auto", show_default=True,
                     help="Bootstrap aggregator: 'self', 'auto' (by context) or a node address."),
        click.option("-r", "--rounds", type=click.IntRange(1), default=None,
                     help="FL rounds (needed on the node that creates the cluster)."),
        cluster_option,
        click.option("--data-dir", type=click.Path(path_type=Path), default=None,
                     help="Member data dir [default: .raftfl/<cluster>/<host>_<port>]."),
        click.option("--etcd-bin", default=None, help="etcd binary [env RAFTFL_ETCD_BIN, PATH]."),
        click.option("--allow-unsafe-etcd", is_flag=True,
                     help="Run etcd 3.5.0-3.5.5 despite its data-inconsistency bugs."),
        click.option("--etcd-endpoints", default=None,
                     help="Use an external etcd cluster (ip:port,...); no embedded member."),
        certs_option,
        click.option("--insecure", is_flag=True,
                     help="Serve without TLS on a non-loopback address (anyone who reaches "
                          "the ports can read, write and train)."),
        click.option("--client-port", type=click.IntRange(1, 65535), default=None,
                     help="etcd client port [default: raft port + 100]."),
        click.option("--flower-port", type=click.IntRange(1, 65535), default=None,
                     help="Flower server port [default: raft port + 200]."),
        click.option("--models-port", type=click.IntRange(1, 65535), default=None,
                     help="Model service port: peers fetch checkpoints here [default: raft "
                          "port + 300]."),
        click.option("--model-replicas", type=click.IntRange(1, 16), default=2,
                     show_default=True,
                     help="A round commits once this many nodes hold its model (the "
                          "aggregator and the best-ranked peers)."),
        click.option("--inline-model-bytes", type=click.IntRange(0), default=0,
                     show_default=True,
                     help="Keep models of at most this size in etcd instead of on the nodes."),
        click.option("--lease-ttl", type=click.IntRange(2, 60), default=3, show_default=True,
                     help="Seconds a silent node keeps its lease (and the role)."),
        click.option("--priority", type=float, default=0.0, show_default=True,
                     help="Operator priority in the ranking (higher wins)."),
        click.option("--nofailover", is_flag=True, help="Never take the aggregator role."),
        click.option("--rank-step", type=click.FloatRange(0.1, 30), default=1.0,
                     show_default=True, help="Seconds between campaigns of successive ranks."),
        click.option("--weights", default="", metavar="NAME=VALUE,...",
                     help="Ranking weights, stored in the cluster config by the node that "
                          "creates it: priority, rtt, cpu, mem, missing_rtt_ms, stale_penalty, "
                          "previous_penalty, fresh_s (see README)."),
        click.option("--probe-interval", type=click.FloatRange(0.2, 60), default=1.0,
                     show_default=True, help="Seconds between latency probe rounds."),
        # The bundled app's task knobs: unset ones come from its run config
        # (examples/quickstart/pyproject.toml: a human-paced workload).
        click.option("--dataset", type=click.Choice(["auto", "cifar10", "synthetic"]),
                     default=None, help="[default: the app's run config: auto]"),
        click.option("--partition", type=click.Choice(["iid", "dirichlet"]), default=None,
                     help="[default: the app's run config: iid]"),
        click.option("--alpha", type=click.FloatRange(0.01), default=None,
                     help="Dirichlet concentration for --partition dirichlet [default: 0.5]."),
        click.option("--train-size", type=click.IntRange(100), default=None,
                     help="Images in the whole federation's training set [default: the app's "
                          "run config: 50000, CIFAR-10's size]."),
        click.option("--test-size", type=click.IntRange(100), default=None,
                     help="[default: the app's run config]"),
        click.option("--epochs", type=click.IntRange(1), default=None,
                     help="Local epochs per round [default: the app's run config]."),
        click.option("--seed", type=int, default=None, help="Data seed [default: 0]."),
        click.option("--app", "app", type=click.Path(path_type=Path, exists=True,
                                                      file_okay=False), default=None,
                     help="A Flower app directory (pyproject.toml with [tool.flwr.app]) "
                          "[default: the bundled quick-start app]."),
        click.option("--run-config", default=None, metavar='"KEY=VALUE ..."',
                     help="Override the app's [tool.flwr.app.config] (Flower's syntax; used by "
                          "the node that creates the cluster)."),
        click.option("--node-config", default=None, metavar='"KEY=VALUE ..."',
                     help="This node's context.node_config [default: partition-id and "
                          "num-partitions from its place in the federation]."),
        click.option("--max-examples", type=click.IntRange(0), default=0,
                     help="The most training examples this node has; the aggregator refuses "
                          "an update claiming more [default: 0, none declared]."),
        click.option("--max-update-norm", type=click.FloatRange(0, min_open=True), default=None,
                     help="As aggregator, refuse an update whose L2 norm (reply minus global "
                          "model) is above this [default: no bound]."),
        click.option("--round-timeout", type=click.FloatRange(1), default=120.0,
                     show_default=True, help="Seconds Flower waits for fit results."),
        click.option("--start-timeout", type=click.FloatRange(1), default=300.0,
                     show_default=True, help="Seconds to wait for quorum and workers."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _weights(text: str) -> dict[str, float]:
    from dataclasses import fields

    from raftfl.core.ranking import Weights

    known = {f.name for f in fields(Weights)}
    out: dict[str, float] = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = item.partition("=")
        try:
            if not sep or name not in known:
                raise ValueError
            out[name] = float(value)
        except ValueError:
            raise click.BadParameter(f"{item!r}: expected NAME=NUMBER with NAME one of "
                                     f"{', '.join(sorted(known))}", param_hint="--weights") from None
    return out


def _build_options(join: bool, address: str, nodes: tuple[str, ...], more_nodes: tuple[str, ...],
                   **kw: Any) -> Any:
    from raftfl.core.runconfig import RunConfig
    from raftfl.node.ha import NodeOptions

    me = _addresses((address,))[0]
    peers = [p for p in _addresses(nodes + more_nodes) if p.name != me.name]
    aggregator = kw["aggregator"]
    if aggregator not in ("self", "auto"):
        aggregator = _addresses((aggregator,))[0].name
    run = None
    if kw["rounds"] is not None:
        run = RunConfig(rounds=kw["rounds"], nodes=sorted({me.name, *(p.name for p in peers)}),
                        dataset=kw["dataset"], partition=kw["partition"], alpha=kw["alpha"],
                        n_train=kw["train_size"], n_test=kw["test_size"], epochs=kw["epochs"],
                        seed=kw["seed"], weights=_weights(kw["weights"]))
    from raftfl import tls
    from raftfl.core.certs import check_bind

    check_bind(me.ip, tls.current() is not None, kw["insecure"])  # resolves: a usage error
    return NodeOptions(
        address=me, peers=peers, aggregator=aggregator, rounds=kw["rounds"],
        cluster=kw["cluster"], data_dir=kw["data_dir"], etcd_bin=kw["etcd_bin"],
        allow_unsafe_etcd=kw["allow_unsafe_etcd"],
        etcd_endpoints=_endpoints((), kw["etcd_endpoints"], "--etcd-endpoints")
        if kw["etcd_endpoints"] else None,
        client_port=kw["client_port"], flower_port=kw["flower_port"],
        models_port=kw["models_port"], model_replicas=kw["model_replicas"],
        inline_model_bytes=kw["inline_model_bytes"], join=join,
        lease_ttl=kw["lease_ttl"], priority=kw["priority"], nofailover=kw["nofailover"],
        rank_step=kw["rank_step"], probe_interval=kw["probe_interval"],
        round_timeout=kw["round_timeout"], start_timeout=kw["start_timeout"], run=run,
        app=kw["app"], run_config=kw["run_config"], node_config=kw["node_config"],
        max_examples=kw["max_examples"], max_update_norm=kw["max_update_norm"])


exit_on_complete_option = click.option(
    "--exit-on-complete", is_flag=True,
    help="Leave once no run is left: write the last run's final model to the data dir and "
         "exit (by default a node stays up for the next `raftfl run submit`).")


def _share_cores() -> None:
    """One OpenMP/BLAS thread per node unless the environment says otherwise, set before
    numpy or torch loads. Nodes often share a host's cores (three on a laptop), and pools
    sized to every core spin against each other: on 2 cores a 12 s quick-start round took
    45 s. RAFTFL_TORCH_THREADS (default 1) sets the size; OMP_NUM_THREADS, if set, wins."""
    import os

    threads = os.environ.get("RAFTFL_TORCH_THREADS", "1")
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, threads)


def _exit_node(code: int) -> None:
    """Leave at once once the node has shut down (member stopped, files written).

    A ClientApp call may still be running on a worker thread (inside torch, say); Python's
    normal finalization would then tear native threads down under it and abort the process
    ("terminate called without an active exception") on a plain Ctrl-C.
    """
    import os

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


max_voters_option = click.option(
    "--max-voters", type=click.IntRange(1, 9), default=5, show_default=True,
    help="Voter target: the first N initial nodes (by name) run etcd members, the others "
         "are etcd clients of them; a caught-up learner is promoted only while there are "
         "fewer voters.")
voter_grace_option = click.option(
    "--voter-grace", type=click.FloatRange(1), default=10.0, show_default=True,
    help="Seconds a voter may be unhealthy before the aggregator removes it and asks a node "
         "without an etcd member to become a voter in its place.")


@node.command("start")
@_node_options
@exit_on_complete_option
@max_voters_option
@voter_grace_option
def node_start(exit_on_complete: bool, max_voters: int, voter_grace: float, **kw: Any) -> None:
    """Start a node: its etcd member, its prober and its FL role.

    \b
    The seed's three terminals:
      raftfl node start -a self -r 3 -s localhost:5000 -n localhost:5001 localhost:5002
      raftfl node start -a localhost:5000 -s localhost:5001 -n localhost:5000 localhost:5002
      raftfl node start -a localhost:5000 -s localhost:5002 -n localhost:5000 localhost:5001
    """
    _share_cores()
    from raftfl.node.ha import Node

    opts = _build_options(False, **kw)
    opts.exit_on_complete, opts.max_voters = exit_on_complete, max_voters
    opts.voter_grace = voter_grace
    _exit_node(Node(opts).run())


@node.command("join")
@_node_options
@exit_on_complete_option
@max_voters_option
@voter_grace_option
@click.option("--join-timeout", type=click.FloatRange(1), default=60.0, show_default=True,
              help="Seconds for the new etcd member to come up; otherwise it is removed again.")
@click.option("--fresh", is_flag=True,
              help="Clear etcd data left in the data dir by a removed member of this node.")
def node_join(exit_on_complete: bool, max_voters: int, voter_grace: float, join_timeout: float,
              fresh: bool, **kw: Any) -> None:
    """Add a node to a running cluster: as an etcd learner, promoted once caught up.

    -n names running nodes; the new member learns the full membership from them. The local
    checks (etcd binary, ports, data dir) run before the cluster is changed.
    """
    _share_cores()
    from raftfl.etcd.membership import JoinWatch, add_learner, local_checks
    from raftfl.node.ha import Node

    opts = _build_options(True, **kw)
    opts.exit_on_complete, opts.max_voters = exit_on_complete, max_voters
    opts.voter_grace = voter_grace
    if opts.etcd_endpoints is not None:  # an external cluster: nothing to add
        _exit_node(Node(opts).run())
    node = Node(opts)
    member = add_learner(opts, local_checks(opts), fresh, node.emit)
    watch = JoinWatch(node, member, join_timeout, max_voters)
    watch.start()
    try:
        code = node.run()
    except BaseException:
        watch.finish(failed=True)
        raise
    watch.finish(failed=False)
    if watch.outcome.rolled_back:
        raise RaftflError(watch.outcome.rolled_back)
    sys.exit(code)


@node.command("leave")
@click.option("-s", "--self", "address", required=True, metavar="HOST:PORT",
              help="The node that leaves.")
@target_options
@max_voters_option
@click.option("--handover-timeout", type=click.FloatRange(1), default=120.0, show_default=True,
              help="Seconds a leaving aggregator gets to hand the role over.")
def node_leave(address: str, nodes: tuple[str, ...], more_nodes: tuple[str, ...],
               endpoints: str | None, cluster: str, max_voters: int,
               handover_timeout: float) -> None:
    """Remove a node's etcd member from the cluster; the node then stops by itself.

    Refused when the remaining voters would have no quorum. An aggregator hands its role
    over first (its round in flight commits). A voter that leaves is replaced by a
    caught-up learner when there is one.
    """
    from raftfl.etcd.membership import remove_member

    leaving = _addresses((address,))[0]
    click.echo(remove_member(leaving, _endpoints(nodes + more_nodes, endpoints), cluster,
                             max_voters=max_voters, handover_timeout=handover_timeout,
                             by=_submitter(), emit=click.echo))


@cli.command()
@target_options
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--run", "run_id", type=click.IntRange(1), default=None,
              help="The run whose rounds to show [default: the newest].")
def status(nodes: tuple[str, ...], more_nodes: tuple[str, ...], endpoints: str | None,
           cluster: str, as_json: bool, run_id: int | None) -> None:
    """Members, their context, the aggregator, the etcd leader and health."""
    from raftfl.inspection import cluster_status, format_status

    info = cluster_status(_endpoints(nodes + more_nodes, endpoints), cluster, run_id)
    click.echo(json.dumps(info, indent=2) if as_json else format_status(info))


@cli.command()
@target_options
@click.option("--json", "as_json", is_flag=True, help="One JSON object per event (default).")
@click.option("--summary", is_flag=True, help="Print the replayed state instead of events.")
@click.option("--run", "run_id", type=click.IntRange(1), default=None,
              help="The run whose log to replay [default: the newest].")
def history(nodes: tuple[str, ...], more_nodes: tuple[str, ...], endpoints: str | None,
            cluster: str, as_json: bool, summary: bool, run_id: int | None) -> None:
    """Replay a run's event log: one JSON object per line (seq, type, ts, node, ...)."""
    from raftfl.inspection import history_lines

    for line in history_lines(_endpoints(nodes + more_nodes, endpoints), cluster, summary,
                              run_id):
        click.echo(line)


@cli.group("run")
def run_group() -> None:
    """Submit, list and stop runs on a running federation."""


def _submitter() -> str:
    import getpass
    import socket

    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"[:255]


@run_group.command("submit")
@target_options
@click.option("--app", "app", type=click.Path(path_type=Path, exists=True, file_okay=False),
              required=True, help="The Flower app directory to run (its pyproject.toml and "
                                  "python files are stored in etcd, at most 1 MiB).")
@click.option("--run-config", default=None, metavar='"KEY=VALUE ..."',
              help="Override the app's [tool.flwr.app.config] (Flower's syntax).")
@click.option("--json", "as_json", is_flag=True, help="Print {\"run\": ID, ...} as JSON.")
def run_submit(nodes: tuple[str, ...], more_nodes: tuple[str, ...], endpoints: str | None,
               cluster: str, app: Path, run_config: str | None, as_json: bool) -> None:
    """Package a Flower app and queue it as a new run; prints the run id."""
    import hashlib

    from raftfl.core.keys import Keys
    from raftfl.core.runconfig import RunSpec, spec_rounds
    from raftfl.etcd import runs
    from raftfl.node import runapp
    from raftfl.node.package import pack

    flower_app = runapp.load(app)
    config = runapp.run_config(flower_app, {}, run_config)
    blob = pack(flower_app.root)
    spec = RunSpec(app=flower_app.name, app_sha256=hashlib.sha256(blob).hexdigest(),
                   run_config=config, rounds=spec_rounds(config), by=_submitter())
    with _store(nodes + more_nodes, endpoints) as store:
        run_id = runs.submit(store, Keys(cluster), spec, blob)
    if as_json:
        click.echo(json.dumps({"run": run_id, "app": spec.app, "rounds": spec.rounds,
                               "app_sha256": spec.app_sha256, "package_bytes": len(blob)}))
    else:
        click.echo(run_id)


@run_group.command("list")
@target_options
@click.option("--json", "as_json", is_flag=True, help="One JSON array of runs.")
def run_list(nodes: tuple[str, ...], more_nodes: tuple[str, ...], endpoints: str | None,
             cluster: str, as_json: bool) -> None:
    """Every run: app, state (queued/running/completed/stopped), rounds, final model."""
    from raftfl.inspection import format_runs
    from raftfl.inspection import run_list as list_runs

    rows = list_runs(_endpoints(nodes + more_nodes, endpoints), cluster)
    click.echo(json.dumps(rows, indent=2) if as_json else format_runs(rows))


@run_group.command("stop")
@target_options
@click.argument("run_id", metavar="RUN", type=click.IntRange(1))
def run_stop(nodes: tuple[str, ...], more_nodes: tuple[str, ...], run_id: int,
             endpoints: str | None, cluster: str) -> None:
    """Stop a run: the aggregator ends its ServerApp at once and moves on (a queued run is
    skipped). Recorded as `run_stopped` in the run's log."""
    from raftfl.core.keys import Keys
    from raftfl.etcd import runs

    with _store(nodes + more_nodes, endpoints) as store:
        click.echo(runs.stop(store, Keys(cluster), run_id, _submitter(), "raftfl run stop"))


@cli.group("aggregator")
def aggregator_group() -> None:
    """Move the aggregator role by hand."""


@aggregator_group.command("handover")
@target_options
@click.option("--to", "to", default=None, metavar="NAME",
              help="The node to take the role [default: the best-ranked other live node].")
@click.option("--wait", type=click.FloatRange(0, 3600), default=60.0, show_default=True,
              help="Seconds to wait for the new aggregator (0: return once requested).")
def aggregator_handover(nodes: tuple[str, ...], more_nodes: tuple[str, ...],
                        endpoints: str | None, cluster: str, to: str | None,
                        wait: float) -> None:
    """Planned handover: the aggregator finishes its current round, records `handover` and
    resigns; the named (or best-ranked) node takes the role at once, with no lease wait."""
    from raftfl.control import request_handover, wait_handover
    from raftfl.core.keys import Keys

    keys = Keys(cluster)
    with _store(nodes + more_nodes, endpoints) as store:
        req = request_handover(store, keys, to.strip() if to else None, _submitter())
        r = req.request
        click.echo(f"handover of term {r.term} from {r.holder} to {r.to}"
                   + (" (best-ranked)" if r.ranked else "") + f" requested at revision "
                   f"{req.revision}: {r.holder} resigns after its current round")
        if wait <= 0:
            return
        done = wait_handover(store, keys, req, wait)
    if done is None:
        raise RaftflError(f"no new aggregator within {wait:.0f}s; the request stands "
                          "(see raftfl status)")
    click.echo(f"{done.node} is the aggregator: term {done.term}, {done.seconds:.2f} s after "
               "the request")


def _control(nodes: tuple[str, ...], endpoints: str | None, cluster: str, what: str,
             **kw: Any) -> None:
    from raftfl import control
    from raftfl.core.keys import Keys

    with _store(nodes, endpoints) as store:
        click.echo(getattr(control, what)(store, Keys(cluster), _submitter(), **kw))


@cli.command()
@target_options
@click.option("--reason", default="", help="Why (recorded in the failover_paused event).")
def pause(nodes: tuple[str, ...], more_nodes: tuple[str, ...], endpoints: str | None,
          cluster: str, reason: str) -> None:
    """Maintenance mode: no automatic failover until `raftfl resume` (the aggregator keeps
    serving; a vacant role stays vacant; `aggregator handover` still works)."""
    if len(reason) > 500:
        raise click.BadParameter("at most 500 characters", param_hint="--reason")
    _control(nodes + more_nodes, endpoints, cluster, "pause", reason=reason)


@cli.command()
@target_options
def resume(nodes: tuple[str, ...], more_nodes: tuple[str, ...], endpoints: str | None,
           cluster: str) -> None:
    """End maintenance mode: a vacant role is filled automatically again."""
    _control(nodes + more_nodes, endpoints, cluster, "resume")


@cli.group("certs")
def certs_group() -> None:
    """A cluster CA and the certificates that admit nodes and operators (README: Security)."""


@certs_group.command("init")
@click.option("--dir", "directory", type=click.Path(path_type=Path), required=True,
              help="Where the CA goes (ca.key stays here: keep it off the nodes).")
@cluster_option
@click.option("--force", is_flag=True, help="Replace an existing CA (every bundle then expires).")
def certs_init(directory: Path, cluster: str, force: bool) -> None:
    """Create the cluster CA: DIR/ca.crt and DIR/ca.key (0600)."""
    from raftfl import tls

    click.echo(f"cluster CA for {cluster!r}: {tls.init_ca(directory, cluster, force)}")


@certs_group.command("issue")
@click.option("--dir", "directory", type=click.Path(path_type=Path, exists=True,
                                                     file_okay=False), required=True,
              help="The directory `certs init` made.")
@click.option("--node", "node_address", default=None, metavar="HOST:PORT",
              help="A node's -s address: its CN and SANs (etcd client, peer and fleet).")
@click.option("--operator", default=None, metavar="NAME",
              help="A read-only operator (status, history, etcdctl get).")
@click.option("--admin", is_flag=True,
              help="etcd's root user: membership, RBAC, defrag (keep it with the operator).")
@click.option("--force", is_flag=True, help="Replace an existing bundle.")
def certs_issue(directory: Path, node_address: str | None, operator: str | None, admin: bool,
                force: bool) -> None:
    """Issue one bundle into DIR/<name>/: ca.crt, tls.crt, tls.key (0600), cluster.

    Hand a node its bundle directory (scp -r DIR/HOST_PORT node:~/raftfl-certs) and start it
    with --certs ~/raftfl-certs."""
    from raftfl import tls
    from raftfl.core.address import check_node_name
    from raftfl.core.certs import OPERATOR_PREFIX, ROOT_CN

    if sum(x is not None and x is not False for x in (node_address, operator, admin)) != 1:
        raise click.UsageError("give exactly one of --node HOST:PORT, --operator NAME, --admin")
    if node_address is not None:
        me = _addresses((node_address,))[0]
        try:
            hosts = [me.host, me.ip]
        except RaftflError:
            hosts = [me.host]  # not resolvable here: the name alone
        path = tls.issue_bundle(directory, f"{me.host}_{me.port}", me.name, hosts, force)
    elif operator is not None:
        try:
            check_node_name(operator)
        except RaftflError as exc:
            raise click.BadParameter(str(exc), param_hint="--operator") from exc
        path = tls.issue_bundle(directory, OPERATOR_PREFIX + operator, OPERATOR_PREFIX + operator,
                                [], force)
    else:
        path = tls.issue_bundle(directory, ROOT_CN, ROOT_CN, [], force)
    click.echo(f"issued {path}/tls.crt (key {path}/tls.key, mode 0600)")


@certs_group.command("rbac")
@target_options
@click.option("--user", "users", multiple=True, metavar="HOST:PORT",
              help="Admit this node's identity too (for example one about to join).")
@click.option("--operator", "operators", multiple=True, metavar="NAME",
              help="A read-only operator (its bundle from `certs issue --operator NAME`).")
def certs_rbac(nodes: tuple[str, ...], more_nodes: tuple[str, ...], endpoints: str | None,
               cluster: str, users: tuple[str, ...], operators: tuple[str, ...]) -> None:
    """Turn on etcd auth: each node (its CN) may read and write /raftfl/<cluster>/ only,
    operators may read it. Run with --certs pointing at the admin (root) bundle; repeatable."""
    from raftfl import tls
    from raftfl.core.certs import ROOT_CN
    from raftfl.etcd import rbac

    identity = tls.current()
    if identity is None or identity.name != ROOT_CN:
        raise click.UsageError("certs rbac needs --certs DIR/root (from `certs issue --admin`)")
    names = [a.name for a in _addresses(nodes + more_nodes + users)]
    with _store(nodes + more_nodes, endpoints) as store:
        rbac.enable(store, cluster, names, operators)
    click.echo(f"etcd auth on: {len(names)} node(s) read/write /raftfl/{cluster}/, "
               f"{len(operators)} operator(s) read it")


def main() -> None:
    """Entry point: one-line errors, exit 2 for usage and 1 for runtime problems."""
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.UsageError as exc:
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx else ""
        click.echo(f"raftfl: error: {exc.format_message()}{hint}", err=True)
        sys.exit(2)
    except click.ClickException as exc:
        click.echo(f"raftfl: error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except RaftflError as exc:
        click.echo(f"raftfl: error: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - a bug: one line, the traceback with -v
        logging.getLogger("raftfl").debug("traceback", exc_info=True)
        if logging.getLogger().isEnabledFor(logging.INFO):
            logging.getLogger("raftfl").exception("unexpected error")
        click.echo(f"raftfl: internal error: {type(exc).__name__}: {exc} (-v for details)", err=True)
        sys.exit(1)


@cli.command()
@click.option("--nodes", type=click.IntRange(2, 16), default=4, show_default=True,
              help="Nodes in total: one aggregator, the rest workers.")
@click.option("--rounds", type=click.IntRange(1), default=4, show_default=True)
@click.option("--kill-aggregator-at", "kill_at", type=click.IntRange(1), default=None,
              help="SIGKILL the aggregator node during this round.")
@click.option("--dataset", type=click.Choice(["auto", "cifar10", "synthetic"]), default="auto",
              show_default=True)
@click.option("--summary-json", type=click.Path(path_type=Path), default=None)
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs/demo"),
              show_default=True, help="Directory for summary.json, rounds.csv, accuracy.png.")
@click.option("--lease-ttl", type=click.IntRange(2, 60), default=None,
              help="[default: 3 s up to 5 nodes, then one more second per 2 nodes (16 nodes: "
                   "9 s): every node of the demo shares this machine's cores, and a starved "
                   "keepalive thread loses its lease]")
@click.option("--keep", is_flag=True, help="Keep the nodes' data dirs and logs.")
@click.option("--app", "app", type=click.Path(path_type=Path, exists=True, file_okay=False),
              default=None, help="A Flower app directory [default: the bundled quick-start app].")
@click.option("--run-config", default=None, metavar='"KEY=VALUE ..."',
              help="Override the app's run config (Flower's syntax).")
@click.option("--secure", is_flag=True,
              help="Mutual TLS and etcd RBAC: a throwaway cluster CA, one bundle per node.")
def demo(nodes: int, rounds: int, kill_at: int | None, dataset: str, summary_json: Path | None,
         out: Path, lease_ttl: int | None, keep: bool, app: Path | None, run_config: str | None,
         secure: bool) -> None:
    """Run a local cluster, kill the aggregator mid-round, verify the outcome."""
    from raftfl.lab.demo import run_demo

    lease_ttl = lease_ttl or 3 + max(0, nodes - 5 + 1) // 2

    if kill_at is not None and kill_at > rounds:
        raise click.BadParameter(f"round {kill_at} > --rounds {rounds}",
                                 param_hint="--kill-aggregator-at")
    sys.exit(run_demo(nodes, rounds, kill_at, dataset, out, summary_json, lease_ttl, keep,
                      echo=click.echo, app=app, run_config=run_config, secure=secure))


@cli.command()
@click.option("--quick", "mode", flag_value="quick", default=True,
              help="The representative subset CI runs (default).")
@click.option("--all", "mode", flag_value="all", help="Every scenario.")
@click.option("--only", multiple=True, metavar="NAME", help="Run just these scenarios.")
@click.option("--csv", "csv_path", type=click.Path(path_type=Path), default=None,
              help="Also write the table as CSV.")
def faults(mode: str, only: tuple[str, ...], csv_path: Path | None) -> None:
    """Run the fault-injection matrix and print one table."""
    import csv

    from raftfl.lab.faults import format_table, run_scenario, select

    chosen = select(mode == "quick", list(only))
    outcomes = []
    for i, scenario in enumerate(chosen, 1):
        click.echo(f"[{i}/{len(chosen)}] {scenario.name}: {scenario.fault} ...")
        outcome = run_scenario(scenario, echo=click.echo)
        click.echo(f"    -> {'ok' if outcome.ok else 'FAILED'} ({outcome.outcome}, "
                   f"{outcome.seconds:.0f}s)")
        outcomes.append(outcome)
    click.echo("")
    click.echo(format_table(outcomes))
    if csv_path:
        from raftfl.lab.bench import plot_bars

        plot_bars(csv_path.with_suffix(".png"), "recovery time per fault",
                  [o.name for o in outcomes], [max(o.recovery_s, default=0.0) for o in outcomes],
                  "scenario", "seconds (0: no failover)")
        with open(csv_path, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["scenario", "fault", "ok", "outcome", "recovery_s", "seconds"])
            for o in outcomes:
                w.writerow([o.name, o.fault, o.ok, o.outcome,
                            ";".join(map(str, o.recovery_s)), o.seconds])
    sys.exit(0 if all(o.ok for o in outcomes) else 1)


def _duration(ctx: click.Context, param: click.Parameter, value: str) -> float:
    from raftfl.lab.soak import parse_duration

    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc


@cli.command()
@click.option("--duration", callback=_duration, default="30m", show_default=True,
              metavar="DUR", help="How long to keep starting runs: 90s, 30m, 1h.")
@click.option("--nodes", type=click.IntRange(3, 9), default=3, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True,
              help="The fault schedule's seed: the same seed replays the same faults.")
@click.option("--lease-ttl", type=click.IntRange(2, 60), default=3, show_default=True)
@click.option("--max-runs", type=click.IntRange(1), default=None,
              help="Stop after this many runs even if time is left.")
@click.option("--summary-json", type=click.Path(path_type=Path), default=None,
              help="Summary file; CSV, PNG and failed runs' logs go beside it.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs/soak"),
              show_default=True, help="Output directory when --summary-json is not given.")
@click.option("--keep-logs", is_flag=True,
              help="Keep every run's node logs (by default only failed runs').")
def soak(duration: float, nodes: int, seed: int, lease_ttl: int, max_runs: int | None,
         summary_json: Path | None, out: Path, keep_logs: bool) -> None:
    """Training runs back to back with random faults; checks the invariants after each.

    Exits 0 only when no node that was not faulted crashed, no invariant was violated and
    the soak itself did not fail.
    """
    from raftfl.lab.soak import SoakOptions
    from raftfl.lab.soak import soak as run_soak

    sys.exit(run_soak(SoakOptions(duration, nodes, seed, lease_ttl, max_runs, out,
                                  summary_json, keep_logs), echo=click.echo))


@cli.group()
def bench() -> None:
    """Benchmarks that print figures and write CSV + PNG."""


def _int_list(low: int, high: int) -> Any:
    """A click callback: "3,5,7" (or the option repeated) -> [3, 5, 7], each in low..high."""
    def parse(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> list[int]:
        out = []
        for text in ",".join(values).split(","):
            if not text.strip():
                continue
            if not text.strip().isdigit() or not low <= int(text) <= high:
                raise click.BadParameter(f"{text.strip()!r}: expected whole numbers from {low} "
                                         f"to {high}, comma-separated")
            out.append(int(text))
        if not out:
            raise click.BadParameter("give at least one number")
        return out
    return parse


def _bench_out(as_json: bool) -> tuple[Any, Any]:
    """(echo, progress): with --json, the table and progress go to stderr, JSON to stdout."""
    if as_json:
        return (lambda line: click.echo(line, err=True)), (lambda line: click.echo(line, err=True))
    return click.echo, click.echo


def _bench_exit(result: tuple[int, dict[str, Any]], as_json: bool) -> None:
    code, summary = result
    if as_json:
        click.echo(json.dumps(summary, indent=2, default=str))
    sys.exit(code)


_OUT = click.option("--out", type=click.Path(path_type=Path), default=Path("runs/bench"),
                    show_default=True, help="Where the CSV and PNG files go.")
_JSON = click.option("--json", "as_json", is_flag=True,
                     help="Print the summary as JSON on stdout (table and progress on stderr).")


@bench.command("recovery")
@click.option("--nodes", "nodes_list", multiple=True, default=("3,5,7",), show_default=True,
              callback=_int_list(3, 9), help="Cluster sizes, comma-separated.")
@click.option("--runs", type=click.IntRange(1), default=5, show_default=True,
              help="Faults per cluster size.")
@click.option("--ttl", "--lease-ttl", "ttl", type=click.IntRange(2, 60), default=3,
              show_default=True, help="Lease TTL of every node (s).")
@click.option("--fault", type=click.Choice(["kill", "stop"]), default="kill", show_default=True,
              help="SIGKILL the aggregator's process group, or SIGSTOP it (SIGCONT once "
                   "replaced).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds the kill points.")
@_OUT
@_JSON
def bench_recovery(nodes_list: list[int], runs: int, ttl: int, fault: str, seed: int, out: Path,
                   as_json: bool) -> None:
    """Recovery timeline after an aggregator fault at a random point of a round: evidence,
    role free, elected, server up, first fit (recovery), training, committed."""
    from raftfl.lab.bench_recovery import bench_recovery as run

    echo, progress = _bench_out(as_json)
    _bench_exit(run(nodes_list, runs, ttl, fault, seed, out, echo=echo, progress=progress),
                as_json)


@bench.command("bigmodel")
@click.option("--nodes", type=click.IntRange(2, 9), default=3, show_default=True)
@click.option("--rounds", type=click.IntRange(1), default=30, show_default=True)
@click.option("--model-mb", type=click.FloatRange(0.1, 500), default=50, show_default=True,
              help="Size of the examples/bigmodel app's model.")
@click.option("--db-limit-mb", type=click.FloatRange(1), default=64, show_default=True,
              help="The largest etcd database the run may leave.")
@_OUT
@_JSON
def bench_bigmodel(nodes: int, rounds: int, model_mb: float, db_limit_mb: float, out: Path,
                   as_json: bool) -> None:
    """A big model for many rounds on real nodes: etcd's database size after every commit
    (models live on the nodes, not in etcd)."""
    from raftfl.lab.bench_bigmodel import bench_bigmodel as run

    echo, progress = _bench_out(as_json)
    _bench_exit(run(nodes, rounds, model_mb, db_limit_mb, out, echo=echo, progress=progress),
                as_json)


@bench.command("traffic")
@click.option("--nodes", "nodes_list", multiple=True, default=("3,5,8,16",), show_default=True,
              callback=_int_list(2, 16), help="Cluster sizes, comma-separated.")
@click.option("--rounds", type=click.IntRange(1), default=3, show_default=True)
@_OUT
@_JSON
def bench_traffic(nodes_list: list[int], rounds: int, out: Path, as_json: bool) -> None:
    """Bytes per round on Raft, etcd-client and Flower channels, in model copies: etcd's
    metrics, cross-checked with kernel counters (network namespaces; needs root)."""
    from raftfl.lab.bench_traffic import bench_traffic as run

    echo, progress = _bench_out(as_json)
    _bench_exit(run(nodes_list, rounds, out, echo=echo, progress=progress), as_json)


@bench.command("overhead")
@click.option("--nodes", type=click.IntRange(2, 9), default=3, show_default=True)
@click.option("--rounds", type=click.IntRange(3, 100), default=5, show_default=True,
              help="Rounds per run (round 1 is warm-up and not timed).")
@click.option("--reps", type=click.IntRange(1, 20), default=3, show_default=True,
              help="Runs per engine, alternating.")
@click.option("--train-size", type=click.IntRange(100), default=2000, show_default=True)
@click.option("--test-size", type=click.IntRange(10), default=500, show_default=True)
@_OUT
@_JSON
def bench_overhead(nodes: int, rounds: int, reps: int, train_size: int, test_size: int,
                   out: Path, as_json: bool) -> None:
    """The quick-start app under plain Flower (Deployment Engine) and under raftfl,
    alternating: the ratio of round wall time and of bytes."""
    from raftfl.lab.bench_overhead import bench_overhead as run

    echo, progress = _bench_out(as_json)
    try:
        result = run(nodes, rounds, reps, train_size, test_size, out, echo=echo,
                     progress=progress)
    except RaftflError as exc:
        raise click.ClickException(str(exc)) from exc
    _bench_exit(result, as_json)


@bench.command("replay")
@click.option("--events", "counts", multiple=True, default=("1000,10000,100000",),
              show_default=True, callback=_int_list(1, 10_000_000),
              help="Log lengths, comma-separated.")
@_OUT
@_JSON
def bench_replay(counts: list[int], out: Path, as_json: bool) -> None:
    """Time to rebuild the FL state from N events (decode + replay, and from etcd), and the
    cost of one HA cycle afterwards."""
    from raftfl.lab.bench_replay import bench_replay as run

    echo, progress = _bench_out(as_json)
    _bench_exit(run(counts, out, echo=echo, progress=progress), as_json)


@bench.command("retention")
@click.option("--rounds", type=click.IntRange(1, 100_000), default=500, show_default=True)
@click.option("--every", type=click.IntRange(1), default=10, show_default=True,
              help="Run retention (compaction + defragmentation) every N rounds.")
@click.option("--model-bytes", type=click.IntRange(1, 1024 * 1024), default=248_024,
              show_default=True, help="Checkpoint size written per round.")
@click.option("--baseline/--no-baseline", default=True, show_default=True,
              help="Also measure without retention, for comparison.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs/bench"),
              show_default=True)
def bench_retention(rounds: int, every: int, model_bytes: int, baseline: bool, out: Path) -> None:
    """etcd db size per round over a long run (no training), with and without retention."""
    from raftfl.lab.bench import retention

    sys.exit(retention(rounds, every, model_bytes, baseline, out, echo=click.echo))


def _range_option(name: str, default: str, upper: float, what: str) -> Any:
    def parse(ctx: click.Context, param: click.Parameter, value: str) -> tuple[float, float]:
        from raftfl.lab.wan import parse_range

        try:
            low, high = parse_range(value)
        except ValueError:
            raise click.BadParameter(f"{value!r}: expected LOW..HIGH or one number") from None
        if high > upper:
            raise click.BadParameter(f"{value!r}: at most {upper:g}")
        return low, high

    return click.option(name, default=default, show_default=True, callback=parse,
                        metavar="LOW..HIGH", help=f"{what}, spread over the links.")


@bench.command("wan")
@click.option("--minutes", type=click.FloatRange(0.5, 600), default=10.0, show_default=True,
              help="Length of the healthy run.")
@click.option("--nodes", type=click.IntRange(3, 9), default=3, show_default=True)
@_range_option("--rtt-ms", "50..200", 5000, "Round-trip time per link (ms)")
@click.option("--jitter-ms", type=click.FloatRange(0, 1000), default=50.0, show_default=True,
              help="Each round trip varies by up to this much (ms).")
@_range_option("--loss-pct", "1..3", 50, "Packet loss per link and direction (%)")
@click.option("--lease-ttl", type=click.IntRange(2, 60), default=3, show_default=True)
@click.option("--etcd-heartbeat-ms", type=click.IntRange(10, 10_000), default=None,
              help="etcd heartbeat interval of every member [default: etcd's 100].")
@click.option("--etcd-election-ms", type=click.IntRange(100, 60_000), default=None,
              help="etcd election timeout of every member [default: etcd's 1000].")
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs/bench"),
              show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on stdout.")
def bench_wan(minutes: float, nodes: int, rtt_ms: tuple[float, float], jitter_ms: float,
              loss_pct: tuple[float, float], lease_ttl: int, etcd_heartbeat_ms: int | None,
              etcd_election_ms: int | None, out: Path, as_json: bool) -> None:
    """Takeovers of a healthy aggregator under emulated WAN links (network namespaces, a delay
    relay, nftables loss; needs root), then the time to replace a SIGSTOPped one."""
    from raftfl.lab.bench_wan import bench_wan as run
    from raftfl.lab.wan import WanSpec

    timeouts = None
    if etcd_heartbeat_ms or etcd_election_ms:
        timeouts = (etcd_heartbeat_ms or 100, etcd_election_ms or 10 * (etcd_heartbeat_ms or 100))
        if timeouts[1] < 5 * timeouts[0]:
            raise click.BadParameter("etcd needs an election timeout of at least 5 heartbeats",
                                     param_hint="--etcd-election-ms")
    echo = (lambda line: click.echo(line, err=True)) if as_json else click.echo
    code, summary = run(WanSpec.from_ranges(nodes, rtt_ms, jitter_ms, loss_pct), minutes,
                        lease_ttl, out, echo=echo, etcd_timeouts=timeouts)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    sys.exit(code)


@bench.command("ranking")
@click.option("--nodes", "nodes_list", type=click.Choice(["3", "5"]), multiple=True,
              default=("3", "5"), show_default=True)
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs/bench"),
              show_default=True)
@click.option("--load", is_flag=True,
              help="Keep training while the nodes measure (all nodes share this machine's cores).")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON on stdout.")
def bench_ranking(nodes_list: tuple[str, ...], out: Path, load: bool, as_json: bool) -> None:
    """The election on real latency: unequal delays on the nodes' real connections (WAN lab;
    needs root), SIGKILL of the aggregator; the nearest survivor must win."""
    from raftfl.lab.bench_wan import bench_ranking as run

    echo = (lambda line: click.echo(line, err=True)) if as_json else click.echo
    code, summary = run([int(n) for n in nodes_list], out, echo=echo, load=load)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    sys.exit(code)
