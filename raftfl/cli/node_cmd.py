"""`raftfl node start | join | leave`."""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import click

from raftfl.cli.node_options import build_options, max_voters_option, node_options
from raftfl.cli.options import Target, addresses, submitter, target_options
from raftfl.core.errors import RaftflError
from raftfl.node.faults import NO_FAULTS, FaultHooks

if TYPE_CHECKING:
    from raftfl.node.ha import Node
    from raftfl.node.options import NodeOptions

FAULT_HOOKS = "fault_hooks"  # the key of the click context's obj that holds them


@click.group("node")
def node_group() -> None:
    """Start, join or leave a node."""


def _fault_hooks() -> FaultHooks:
    """The hooks a lab launcher (raftfl.lab.node) runs this command with; none otherwise."""
    obj = click.get_current_context().obj or {}
    hooks: FaultHooks = obj.get(FAULT_HOOKS, NO_FAULTS)
    return hooks


def _share_cores() -> None:
    """One OpenMP/BLAS thread per node unless the environment says otherwise, set before
    numpy or torch loads. Nodes often share a host's cores (three on a laptop), and pools
    sized to every core spin against each other: on 2 cores a 12 s quick-start round took
    45 s. RAFTFL_TORCH_THREADS (default 1) sets the size; OMP_NUM_THREADS, if set, wins."""
    threads = os.environ.get("RAFTFL_TORCH_THREADS", "1")
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, threads)


def _run(node: Node, opts: NodeOptions) -> int:
    """Run `node` (started with `opts`) with its HTTP API beside it (raftfl/ops): health,
    metrics, the dashboard. The API reads the snapshot each HA cycle publishes."""
    from raftfl.cli.logs import follow
    from raftfl.ops.server import ApiServer

    follow(opts.name, node.published)  # JSON lines' term, run and round
    api = None if opts.api_address is None else ApiServer(
        node.published, opts.api_address, opts.name, opts.cluster).start()
    try:
        return node.run()
    finally:
        if api is not None:
            api.stop()


def _options(join: bool, kw: dict[str, Any]) -> NodeOptions:
    """The node's options; a loopback node without --certs gets the quick start's identity
    (raftfl/cli/quickstart.py) before anything connects, and says so once."""
    from raftfl.cli.quickstart import secure_node
    from raftfl.node.shell import Voice

    opts = build_options(join, **kw)
    line = secure_node(opts, kw["insecure"])
    if line:
        Voice(opts.name)(line)
    return opts


def _exit_node(code: int) -> None:
    """Leave at once once the node has shut down (member stopped, files written).

    A ClientApp call may still be running on a worker thread (inside torch, say); Python's
    normal finalization would then tear native threads down under it and abort the process
    ("terminate called without an active exception") on a plain Ctrl-C.
    """
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


@node_group.command("start")
@node_options
def node_start(**kw: Any) -> None:
    """Start a node: its etcd member, its prober and its FL role.

    \b
    The seed's three terminals:
      raftfl node start -a self -r 3 -s localhost:5000 -n localhost:5001 localhost:5002
      raftfl node start -a localhost:5000 -s localhost:5001 -n localhost:5000 localhost:5002
      raftfl node start -a localhost:5000 -s localhost:5002 -n localhost:5000 localhost:5001
    """
    _share_cores()
    from raftfl.node.ha import Node

    opts = _options(False, kw)
    _exit_node(_run(Node(opts, hooks=_fault_hooks()), opts))


@node_group.command("join")
@node_options
@click.option("--join-timeout", type=click.FloatRange(1), default=60.0, show_default=True,
              help="Seconds for the new etcd member to come up; otherwise it is removed again.")
@click.option("--fresh", is_flag=True,
              help="Clear etcd data left in the data dir by a removed member of this node.")
def node_join(join_timeout: float, fresh: bool, **kw: Any) -> None:
    """Add a node to a running cluster: as an etcd learner, promoted once caught up.

    -n names running nodes; the new member learns the full membership from them. The local
    checks (etcd binary, ports, data dir) run before the cluster is changed.
    """
    _share_cores()
    from raftfl.etcd.membership import JoinWatch, add_learner, local_checks
    from raftfl.net.address import client_endpoint
    from raftfl.node.ha import Node
    from raftfl.node.shell import Voice

    opts = _options(True, kw)
    if opts.etcd_endpoints is not None:  # an external cluster: nothing to add
        _exit_node(_run(Node(opts, hooks=_fault_hooks()), opts))
    member, peers = add_learner(opts, local_checks(opts), fresh, Voice(opts.name))
    opts = replace(opts, peers=peers)
    node = Node(opts, hooks=_fault_hooks())
    watch = JoinWatch(node.say, member, f"{opts.ip}:{opts.etcd_client_port}",
                      [client_endpoint(p) for p in peers], join_timeout, opts.max_voters,
                      on_rollback=node.request_stop)
    watch.start()
    try:
        code = _run(node, opts)
    except BaseException:
        watch.finish(failed=True)
        raise
    watch.finish(failed=False)
    if watch.outcome.rolled_back:
        raise RaftflError(watch.outcome.rolled_back)
    sys.exit(code)


@node_group.command("leave")
@click.option("-s", "--self", "address", required=True, metavar="HOST:PORT",
              help="The node that leaves.")
@target_options
@max_voters_option
@click.option("--handover-timeout", type=click.FloatRange(1), default=120.0, show_default=True,
              help="Seconds a leaving aggregator gets to hand the role over.")
def node_leave(address: str, target: Target, max_voters: int, handover_timeout: float) -> None:
    """Remove a node's etcd member from the cluster; the node then stops by itself.

    Refused when the remaining voters would have no quorum. An aggregator hands its role
    over first (its round in flight commits). A voter that leaves is replaced by a
    caught-up learner when there is one.
    """
    from raftfl.etcd.membership import remove_member

    leaving = addresses((address,))[0]
    click.echo(remove_member(leaving, target.endpoints(), target.cluster,
                             max_voters=max_voters, handover_timeout=handover_timeout,
                             by=submitter(), emit=click.echo))
