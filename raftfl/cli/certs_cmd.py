"""`raftfl certs init | issue | rbac | signing-key`: the cluster CA, its bundles, etcd auth,
and the operators' keys that sign runs."""

from __future__ import annotations

from pathlib import Path

import click

from raftfl.cli.options import Target, addresses, cluster_option, target_options
from raftfl.core.errors import RaftflError


@click.group("certs")
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
    from raftfl.cli.quickstart import node_hosts
    from raftfl.core.address import check_node_name
    from raftfl.core.certs import OPERATOR_PREFIX, ROOT_CN

    if sum(x is not None and x is not False for x in (node_address, operator, admin)) != 1:
        raise click.UsageError("give exactly one of --node HOST:PORT, --operator NAME, --admin")
    if node_address is not None:
        me = addresses((node_address,))[0]
        path = tls.issue_bundle(directory, f"{me.host}_{me.port}", me.name, node_hosts(me),
                                force)
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
def certs_rbac(target: Target, users: tuple[str, ...], operators: tuple[str, ...]) -> None:
    """Turn on etcd auth: each node (its CN) reads /raftfl/<cluster>/ and writes its shared
    keys and its own records only, operators read it and submit runs. Run with --certs
    pointing at the admin (root) bundle; repeatable."""
    from raftfl import tls
    from raftfl.core.certs import ROOT_CN
    from raftfl.etcd import rbac

    identity = tls.current()
    if identity is None or identity.name != ROOT_CN:
        raise click.UsageError("certs rbac needs --certs DIR/root (from `certs issue --admin`)")
    names = [a.name for a in addresses(target.nodes + users)]
    with target.store() as store:
        rbac.enable(store, target.cluster, names, operators)
    click.echo(f"etcd auth on: {len(names)} node(s) read /raftfl/{target.cluster}/ and write "
               f"the shared keys and their own records, {len(operators)} operator(s) read it "
               "and submit runs")


@certs_group.command("signing-key")
@click.argument("name")
@click.option("--out", "out", type=click.Path(path_type=Path), required=True,
              help="Where NAME.key (0600: keep it with the operator) and NAME.pub go.")
@click.option("--force", is_flag=True, help="Replace an existing key pair.")
def certs_signing_key(name: str, out: Path, force: bool) -> None:
    """An Ed25519 key pair that signs runs (`run submit --sign-key OUT/NAME.key`), in
    Flower's formats: OpenSSH keys, and the line to add to the nodes' --trusted-entities
    file (Flower's YAML, as `flower-supernode --trusted-entities` reads it)."""
    from raftfl import signing
    from raftfl.core.address import check_node_name

    try:
        check_node_name(name)
    except RaftflError as exc:
        raise click.BadParameter(str(exc), param_hint="NAME") from exc
    private, public, line = signing.new_key_pair(name, out, force)
    click.echo(f"signing key {private} (mode 0600), public key {public}")
    click.echo(f"trusted-entities line for the nodes: {line}")
