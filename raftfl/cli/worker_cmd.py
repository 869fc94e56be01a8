"""`raftfl worker`: one edge worker (raftfl/node/edge.py) running a local Flower app.

It trains for whichever node holds the aggregator role, found through the node APIs given
with --node, and is never a candidate itself: Flower's `flower-supernode`, for a federation
that heals itself. It keeps nothing in etcd and needs no etcd address.
"""

from __future__ import annotations

import hashlib
import signal
import socket
import threading
from pathlib import Path
from urllib.parse import urlsplit

import click

from raftfl import tls
from raftfl.cli.options import certs_option, cluster_option
from raftfl.core.certs import is_loopback
from raftfl.core.errors import RaftflError


def _urls(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> tuple[str, ...]:
    for url in value:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise click.BadParameter(f"{url!r} is not a node API URL (http://HOST:PORT)")
    return value


@click.command("worker")
@click.option("--node", "apis", multiple=True, required=True, callback=_urls, metavar="URL",
              help="A node's API URL (http://HOST:PORT or https://...), repeatable: the worker "
                   "asks them in turn who holds the aggregator role.")
@click.option("--app", "app_dir", type=click.Path(path_type=Path, exists=True, file_okay=False),
              required=True, help="The Flower app directory; the worker serves only runs of "
                                  "this exact app (same package sha256).")
@click.option("--name", default=None, help="The worker's name, its Flower node id's seed "
                                           "[default: --certs' CN, else the host name].")
@click.option("--node-config", default=None, metavar="'k=v ...'",
              help="context.node_config, as flower-supernode's --node-config "
                   "[default: 'partition-id=0 num-partitions=1'].")
@certs_option()
@cluster_option
def worker(apis: tuple[str, ...], app_dir: Path, name: str | None, node_config: str | None,
           cluster: str) -> None:
    """Train as an edge worker of a raftfl federation (never an aggregator)."""
    from raftfl.cli.quickstart import client_identity, cluster_ca
    from raftfl.flower.app import load_app
    from raftfl.flower.app import node_config as make_node_config
    from raftfl.node import runapp
    from raftfl.node.edge import EdgeOptions, EdgeWorker
    from raftfl.node.edge_runs import RunHosts
    from raftfl.node.package import PackageError, pack

    identity = tls.current()
    if identity is not None:
        if name is not None and name != identity.name:
            raise RaftflError(f"--name {name} differs from --certs' CN {identity.name}: a "
                              "worker speaks only as its certificate's name")
        name = identity.name
    name = name or socket.gethostname()
    hosts = [urlsplit(u).hostname or "" for u in apis]
    if identity is None and any(u.startswith("https:") for u in apis) and all(
            is_loopback(h) for h in hosts):
        quick = client_identity(cluster_ca(cluster), name, f"worker_{name}")  # this host's
        if quick is None:
            raise RaftflError(f"https node APIs need --certs DIR (no quick-start CA for "
                              f"cluster {cluster} here)")
        tls.configure(quick)
    try:
        app = load_app(app_dir)
        sha = hashlib.sha256(pack(app.root)).hexdigest()
    except PackageError as exc:
        raise RaftflError(str(exc)) from None
    client_app = app.load_client_app()
    edge: EdgeWorker
    node_id = runapp.node_id(name)
    hosts_by_run = RunHosts(client_app, sha, apis, node_id,
                            make_node_config(node_config, 0, 1),
                            admit=lambda stamp, message: edge.admit(stamp, message))
    edge = EdgeWorker(node_id, name, hosts_by_run.handle, EdgeOptions(apis=apis))
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: (stop.set(), edge.stop()))
    click.echo(f"worker {name}: app {app.name} ({sha[:12]}), asking {', '.join(apis)}")
    edge.run(stop)
