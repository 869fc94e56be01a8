"""`raftfl aggregator handover`, `raftfl pause` and `raftfl resume`: an operator's requests."""

from __future__ import annotations

from typing import Any

import click

from raftfl.cli.options import Target, submitter, target_options
from raftfl.core.errors import RaftflError


@click.group("aggregator")
def aggregator_group() -> None:
    """Move the aggregator role by hand."""


@aggregator_group.command("handover")
@target_options
@click.option("--to", "to", default=None, metavar="NAME",
              help="The node to take the role [default: the best-ranked other live node].")
@click.option("--wait", type=click.FloatRange(0, 3600), default=60.0, show_default=True,
              help="Seconds to wait for the new aggregator (0: return once requested).")
def aggregator_handover(target: Target, to: str | None, wait: float) -> None:
    """Planned handover: the aggregator finishes its current round, records `handover` and
    resigns; the named (or best-ranked) node takes the role at once, with no lease wait."""
    from raftfl.core.keys import Keys
    from raftfl.etcd.handover import request_handover, wait_handover

    keys = Keys(target.cluster)
    with target.store() as store:
        req = request_handover(store, keys, to.strip() if to else None, submitter())
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


def _control(target: Target, what: str, **kw: Any) -> None:
    from raftfl import control
    from raftfl.core.keys import Keys

    with target.store() as store:
        click.echo(getattr(control, what)(store, Keys(target.cluster), submitter(), **kw))


@click.command()
@target_options
@click.option("--reason", default="", help="Why (recorded in the failover_paused event).")
def pause(target: Target, reason: str) -> None:
    """Maintenance mode: no automatic failover until `raftfl resume` (the aggregator keeps
    serving; a vacant role stays vacant; `aggregator handover` still works)."""
    if len(reason) > 500:
        raise click.BadParameter("at most 500 characters", param_hint="--reason")
    _control(target, "pause", reason=reason)


@click.command()
@target_options
def resume(target: Target) -> None:
    """End maintenance mode: a vacant role is filled automatically again."""
    _control(target, "resume")
