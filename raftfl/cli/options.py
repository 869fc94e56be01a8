"""Options shared by the commands, declared once, and the parsing behind them.

`target_options` gives a command one `Target` (-n HOST:PORT..., --endpoints, --cluster,
--certs) in place of four parameters.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from raftfl.core.address import NodeAddress, check_cluster_name, parse_address
from raftfl.core.errors import RaftflError
from raftfl.net.address import client_endpoints

if TYPE_CHECKING:
    from raftfl.etcd.store import Store

Decorator = Callable[[Any], Any]


def addresses(values: tuple[str, ...]) -> list[NodeAddress]:
    try:
        return [parse_address(v) for v in values]
    except RaftflError as exc:
        raise click.BadParameter(str(exc)) from exc


def endpoints(nodes: tuple[str, ...], given: str | None, option: str = "--endpoints") -> list[str]:
    """etcd client endpoints: `given` (ip:port,...) checked, else those of the nodes."""
    if given:
        eps = [e.strip().split("//", 1)[-1] for e in given.split(",") if e.strip()]
        for ep in eps or [given]:
            host, sep, port = ep.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise click.BadParameter(f"invalid etcd endpoint {ep!r}: expected ip:port, "
                                         "e.g. 127.0.0.1:2379", param_hint=option)
        return eps
    if not nodes:
        raise click.UsageError("give the nodes (-n host:port ...) or --endpoints")
    return client_endpoints(addresses(nodes))


def submitter() -> str:
    """Who runs this command (user@host), as records and events name them."""
    import getpass
    import socket

    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"[:255]


def _cluster(ctx: click.Context, param: click.Parameter, value: str) -> str:
    try:
        return check_cluster_name(value)
    except RaftflError as exc:
        raise click.BadParameter(str(exc)) from exc


def _certs(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
    """Load the bundle once; every etcd and fleet connection of this process then uses it."""
    from raftfl import tls

    if value is not None:
        try:
            tls.configure(tls.load(value))
        except RaftflError as exc:
            raise click.BadParameter(str(exc)) from exc
    return value


peers_option = click.option("-n", "--nodes", "nodes", multiple=True, metavar="HOST:PORT",
                            help="Node addresses (host:raft_port); repeat or list after -n.")
more_nodes_argument = click.argument("more_nodes", nargs=-1, metavar="[HOST:PORT]...")
cluster_option = click.option("--cluster", default="default", show_default=True, callback=_cluster,
                              help="Cluster name: keys live under /raftfl/<cluster>/.")


def certs_option(expose_value: bool = False) -> Decorator:
    """--certs DIR, loaded before the other options (eager); `expose_value` also passes the
    directory on (a node prints it with --print-config)."""
    return click.option(
        "--certs", type=click.Path(path_type=Path, exists=True, file_okay=False), default=None,
        expose_value=expose_value, is_eager=True, callback=_certs, metavar="DIR",
        help="Certificate bundle (ca.crt, tls.crt, tls.key from `raftfl certs issue`): mutual "
             "TLS to etcd and the fleet [default on loopback: the quick start's own CA in "
             ".raftfl/<cluster>/ca].")


endpoints_option = click.option("--endpoints", default=None,
                                help="etcd client endpoints (ip:port,...) instead of -n.")


def json_option(help: str) -> Decorator:
    return click.option("--json", "as_json", is_flag=True, help=help)


def out_option(default: str, help: str | None = None) -> Decorator:
    return click.option("--out", type=click.Path(path_type=Path), default=Path(default),
                        show_default=True, help=help)


def lease_ttl_option(*decls: str, default: int | None = 3, help: str | None = None) -> Decorator:
    """--lease-ttl (or `decls`): whole seconds from 2 to 60."""
    return click.option(*(decls or ("--lease-ttl",)), type=click.IntRange(2, 60), default=default,
                        show_default=default is not None, help=help)


@dataclass(frozen=True)
class Target:
    """The cluster a one-shot command talks to, as the command line names it."""

    nodes: tuple[str, ...]  # -n and the addresses after it
    given_endpoints: str | None  # --endpoints
    cluster: str

    def endpoints(self) -> list[str]:
        return endpoints(self.nodes, self.given_endpoints)

    @contextmanager
    def store(self) -> Iterator[Store]:
        """An etcd client for the command, closed when it is done."""
        from raftfl.etcd.store import Store

        store = Store(self.endpoints(), retry_for=10)
        try:
            yield store
        finally:
            store.close()


def _quick_start_identity(target: Target) -> None:
    """Without --certs, a command to loopback nodes whose quick start made its own CA here
    (.raftfl/<cluster>/ca) speaks mutual TLS as that CA's `root` (raftfl/cli/quickstart.py)."""
    from raftfl.cli.quickstart import use_client_identity

    try:
        eps = target.endpoints()
    except (click.UsageError, RaftflError):
        return  # the command says what is missing
    try:
        use_client_identity(target.cluster, eps)
    except RaftflError as exc:
        raise click.ClickException(str(exc)) from exc


def target_options(fn: Any) -> Any:
    """-n HOST:PORT... (or --endpoints), --cluster and --certs, passed on as `target`."""

    @functools.wraps(fn)
    def command(*args: Any, nodes: tuple[str, ...], more_nodes: tuple[str, ...],
                endpoints: str | None, cluster: str, **kw: Any) -> Any:
        target = Target(nodes + more_nodes, endpoints, cluster)
        _quick_start_identity(target)
        return fn(*args, target=target, **kw)

    for option in (cluster_option, certs_option(), endpoints_option, more_nodes_argument,
                   peers_option):
        command = option(command)
    return command
