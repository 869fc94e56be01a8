"""`raftfl status` and `raftfl history`: read-only views of a cluster."""

from __future__ import annotations

import json

import click

from raftfl.cli.options import Target, json_option, target_options


@click.command()
@target_options
@json_option("Machine-readable output.")
@click.option("--run", "run_id", type=click.IntRange(1), default=None,
              help="The run whose rounds to show [default: the newest].")
def status(target: Target, as_json: bool, run_id: int | None) -> None:
    """Members, their context, the aggregator, the etcd leader and health."""
    from raftfl.inspection import cluster_status, format_status

    info = cluster_status(target.endpoints(), target.cluster, run_id)
    click.echo(json.dumps(info, indent=2) if as_json else format_status(info))


@click.command()
@target_options
@json_option("One JSON object per event (default).")
@click.option("--summary", is_flag=True, help="Print the replayed state instead of events.")
@click.option("--run", "run_id", type=click.IntRange(1), default=None,
              help="The run whose log to replay [default: the newest].")
def history(target: Target, as_json: bool, summary: bool, run_id: int | None) -> None:
    """Replay a run's event log: one JSON object per line (seq, type, ts, node, ...)."""
    from raftfl.inspection import history_lines

    for line in history_lines(target.endpoints(), target.cluster, summary, run_id):
        click.echo(line)
