"""`node start` and `node join`'s options, and the one `NodeOptions` built from them."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from raftfl.cli import config_file, logs
from raftfl.cli.options import (
    addresses,
    certs_option,
    cluster_option,
    endpoints,
    lease_ttl_option,
    more_nodes_argument,
    peers_option,
)

if TYPE_CHECKING:
    from raftfl.node.options import NodeOptions

max_voters_option = click.option(
    "--max-voters", type=click.IntRange(1, 9), default=5, show_default=True,
    help="Voter target: the first N initial nodes (by name) run etcd members, the others "
         "are etcd clients of them; a caught-up learner is promoted only while there are "
         "fewer voters.")

_OPTIONS = [
    config_file.config_option(),
    click.option("--print-config", is_flag=True,
                 help="Print the effective configuration (flags over --config over defaults) "
                      "as a config file, and exit."),
    click.option("-s", "--self", "address", required=True, metavar="HOST:PORT",
                 help="This node's address; PORT is its etcd peer (Raft) port."),
    peers_option,
    more_nodes_argument,
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
    certs_option(expose_value=True),
    click.option("--trusted-entities", type=click.Path(path_type=Path, exists=True,
                                                        dir_okay=False),
                 default=None, callback=lambda _c, _p, v: _trusted_entities(v), metavar="FILE",
                 help="Run only apps signed by one of these keys (Flower's YAML: KEY_ID: "
                      "'ssh-ed25519 ...'; see `raftfl certs signing-key`) [default: any app, "
                      "unsigned: anyone who can write to etcd can run code on this node]."),
    click.option("--sign-key", type=click.Path(path_type=Path, exists=True, dir_okay=False),
                 default=None, callback=lambda _c, _p, v: _sign_key(v), metavar="PATH",
                 help="With -r: sign run 1 with this operator's Ed25519 key (as `raftfl run "
                      "submit --sign-key`)."),
    click.option("--insecure", is_flag=True,
                 help="Serve without TLS: anyone who reaches the ports (on loopback: every "
                      "local user) can read, write and train [default on loopback without "
                      "--certs: mutual TLS from the quick start's own CA, made in the cluster's "
                      "folder, the data dir's parent]."),
    click.option("--client-port", type=click.IntRange(1, 65535), default=None,
                 help="etcd client port [default: raft port + 100]."),
    click.option("--flower-port", type=click.IntRange(1, 65535), default=None,
                 help="Flower server port [default: raft port + 200]."),
    click.option("--models-port", type=click.IntRange(1, 65535), default=None,
                 help="Model service port: peers fetch checkpoints here [default: raft "
                      "port + 300]."),
    click.option("--api-port", type=click.IntRange(0, 65535), default=None,
                 help="HTTP API port: health, metrics, the dashboard (0: none) [default: raft "
                      "port + 400]."),
    click.option("--model-replicas", type=click.IntRange(1, 16), default=2, show_default=True,
                 help="A round commits once this many nodes hold its model (the "
                      "aggregator and the best-ranked peers)."),
    click.option("--inline-model-bytes", type=click.IntRange(0), default=0, show_default=True,
                 help="Keep models of at most this size in etcd instead of on the nodes."),
    lease_ttl_option(help="Seconds a silent node keeps its lease (and the role)."),
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
    click.option("--app", "app", type=click.Path(path_type=Path, exists=True, file_okay=False),
                 default=None,
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
                      "an update claiming more. It only tightens --examples-cap for this "
                      "node [default: 0, none declared]."),
    click.option("--examples-cap", type=click.IntRange(1, 10**12), default=None,
                 help="The most num-examples any reply may claim, stored in the cluster "
                      "config by the node that creates it (with -r) [default: 10000000]."),
    click.option("--outlier-factor", type=click.FloatRange(0, 1e6), default=None,
                 help="Refuse a train update whose norm is above this many times the "
                      "median of its round's updates (3 or more), stored in the cluster "
                      "config by the node that creates it (with -r); 0: off [default: 10]."),
    click.option("--max-update-norm", type=click.FloatRange(0, min_open=True), default=None,
                 help="As aggregator, refuse an update whose L2 norm (reply minus global "
                      "model) is above this [default: no bound]."),
    click.option("--isolation", type=click.Choice(["thread", "process"]), default="thread",
                 show_default=True,
                 help="Where this node runs the ClientApp: in its worker thread, or in a child "
                      "process (one per run) that may exit, crash, run out of memory or hang "
                      "without taking the node down (as flower-supernode's --isolation)."),
    click.option("--isolation-memory-mb", type=click.IntRange(100), default=None,
                 help="With --isolation process: cap the child's address space (RLIMIT_AS, "
                      "virtual memory: importing torch alone maps about 3.5 GB) at this many "
                      "MB, so a runaway ClientApp fails alone [default: no cap]."),
    click.option("--round-timeout", type=click.FloatRange(1), default=120.0,
                 show_default=True, help="Seconds Flower waits for fit results."),
    click.option("--start-timeout", type=click.FloatRange(1), default=300.0,
                 show_default=True, help="Seconds to wait for quorum and workers."),
    click.option("--exit-on-complete", is_flag=True,
                 help="Leave once no run is left: write the last run's final model to the data "
                      "dir and exit (by default a node stays up for the next `raftfl run "
                      "submit`)."),
    max_voters_option,
    click.option("--voter-grace", type=click.FloatRange(1), default=10.0, show_default=True,
                 help="Seconds a voter may be unhealthy before the aggregator removes it and "
                      "asks a node without an etcd member to become a voter in its place."),
    click.option("--log-format", type=click.Choice(logs.FORMATS), default="text",
                 show_default=True,
                 help="json: one JSON object per line (time, level, node, term, run, round, "
                      "event), the node's lines and its logging alike."),
]


def node_options(fn: Any) -> Any:
    """Every option of `node start` (and of `node join`, which adds its own), --config FILE
    among them. With --print-config the command prints its effective configuration instead
    of running; else it makes the process's lines --log-format's and runs. (--certs is loaded
    by its own callback: its value is only printed.)"""

    @functools.wraps(fn)
    def command(*args: Any, print_config: bool, log_format: str, certs: Path | None,
                **kw: Any) -> Any:
        ctx = click.get_current_context()
        if print_config:
            values = config_file.effective(ctx)
            values["nodes"] = [*kw["nodes"], *kw["more_nodes"]]  # -n A B C: A is -n's, B C after
            click.echo(config_file.render(f"raftfl node {ctx.info_name}: effective configuration "
                                          "(flags over --config over defaults)", values), nl=False)
            return None
        logs.use(log_format, addresses((kw["address"],))[0].name)
        return fn(*args, **kw)

    for option in reversed(_OPTIONS):
        command = option(command)
    return command


def _trusted_entities(path: Path | None) -> Path | None:
    """Load the file once: this process's runs then accept only apps its keys signed."""
    from raftfl import signing

    if path is not None:
        try:
            signing.configure(signing.load_trusted_entities(path))
        except signing.SigningError as exc:
            raise click.BadParameter(str(exc), param_hint="--trusted-entities") from exc
    return path


def _sign_key(path: Path | None) -> Path | None:
    """Fail at start-up, not when run 1 is submitted, if the key cannot sign."""
    from raftfl import signing

    if path is not None:
        try:
            signing.load_private_key(path)
        except signing.SigningError as exc:
            raise click.BadParameter(str(exc), param_hint="--sign-key") from exc
    return path


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


def _screen_bounds(cap: int | None, factor: float | None) -> dict[str, Any]:
    """The update screen's bounds for the cluster config: only those given (a factor in
    (0, 1] would refuse honest updates: a usage error)."""
    if factor is not None and 0 < factor <= 1:
        raise click.BadParameter(f"{factor:g} would refuse the median update itself: give "
                                 "0 (off) or more than 1", param_hint="--outlier-factor")
    bounds: dict[str, Any] = {"max_examples": cap, "outlier_factor": factor}
    return {k: v for k, v in bounds.items() if v is not None}


def build_options(join: bool, address: str, nodes: tuple[str, ...], more_nodes: tuple[str, ...],
                  **kw: Any) -> NodeOptions:
    """The node's options, checked (a bad value is a usage error), in one piece."""
    from raftfl import tls
    from raftfl.core.certs import check_bind
    from raftfl.core.specs import ClusterConfig
    from raftfl.net.address import resolve
    from raftfl.node.options import NodeOptions

    me = addresses((address,))[0]
    peers = [p for p in addresses(nodes + more_nodes) if p.name != me.name]
    aggregator = kw["aggregator"]
    if aggregator not in ("self", "auto"):
        aggregator = addresses((aggregator,))[0].name
    run = None
    if kw["rounds"] is not None:
        run = ClusterConfig(rounds=kw["rounds"], nodes=sorted({me.name, *(p.name for p in peers)}),
                        dataset=kw["dataset"], partition=kw["partition"], alpha=kw["alpha"],
                        n_train=kw["train_size"], n_test=kw["test_size"], epochs=kw["epochs"],
                        seed=kw["seed"], weights=_weights(kw["weights"]),
                        **_screen_bounds(kw["examples_cap"], kw["outlier_factor"]))
    check_bind(resolve(me.host), tls.current() is not None, kw["insecure"])
    if kw["sign_key"] is not None and run is None:
        raise click.BadParameter("signs run 1, which only the node with -r submits",
                                 param_hint="--sign-key")
    if kw["isolation_memory_mb"] is not None and kw["isolation"] != "process":
        raise click.BadParameter("caps the ClientApp's process: give --isolation process too",
                                 param_hint="--isolation-memory-mb")
    return NodeOptions(
        address=me, peers=tuple(peers), bootstrap=aggregator, cluster=kw["cluster"],
        data_dir=kw["data_dir"], etcd_bin=kw["etcd_bin"], allow_unsafe_etcd=kw["allow_unsafe_etcd"],
        etcd_endpoints=tuple(endpoints((), kw["etcd_endpoints"], "--etcd-endpoints"))
        if kw["etcd_endpoints"] else None,
        client_port=kw["client_port"], flower_port=kw["flower_port"],
        models_port=kw["models_port"], api_port=kw["api_port"], model_replicas=kw["model_replicas"],
        inline_model_bytes=kw["inline_model_bytes"], join=join,
        lease_ttl=kw["lease_ttl"], priority=kw["priority"], nofailover=kw["nofailover"],
        rank_step=kw["rank_step"], probe_interval=kw["probe_interval"],
        round_timeout=kw["round_timeout"], start_timeout=kw["start_timeout"], first_run=run,
        app=kw["app"], run_config=kw["run_config"], node_config=kw["node_config"],
        max_examples=kw["max_examples"], max_update_norm=kw["max_update_norm"],
        isolation=kw["isolation"], isolation_memory_mb=kw["isolation_memory_mb"],
        exit_on_complete=kw["exit_on_complete"], max_voters=kw["max_voters"],
        voter_grace=kw["voter_grace"],
        trusted_entities=kw["trusted_entities"], sign_key=kw["sign_key"])
