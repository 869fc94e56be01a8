"""`raftfl run submit | list | stop`: runs on a running federation."""

from __future__ import annotations

import json
from pathlib import Path

import click

from raftfl.cli.options import Target, json_option, submitter, target_options
from raftfl.etcd import run_store


@click.group("run")
def run_group() -> None:
    """Submit, list and stop runs on a running federation."""


@run_group.command("submit")
@target_options
@click.option("--app", "app", type=click.Path(path_type=Path, exists=True, file_okay=False),
              required=True, help="The Flower app directory to run (its pyproject.toml and "
                                  "python files are stored in etcd, at most 1 MiB).")
@click.option("--run-config", default=None, metavar='"KEY=VALUE ..."',
              help="Override the app's [tool.flwr.app.config] (Flower's syntax).")
@click.option("--sign-key", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              default=None, metavar="PATH",
              help="Sign the run with this Ed25519 key (`raftfl certs signing-key`, or "
                   "ssh-keygen -t ed25519): nodes started with --trusted-entities run only "
                   "runs signed by a key they trust.")
@json_option("Print {\"run\": ID, ...} as JSON.")
def run_submit(target: Target, app: Path, run_config: str | None, sign_key: Path | None,
               as_json: bool) -> None:
    """Package a Flower app and queue it as a new run; prints the run id."""
    import hashlib

    from raftfl import signing
    from raftfl.core.keys import Keys
    from raftfl.core.specs import RunSpec, spec_rounds
    from raftfl.node import runapp
    from raftfl.node.package import pack

    flower_app = runapp.load(app)
    config = runapp.run_config(flower_app, {}, run_config)
    blob = pack(flower_app.root)
    spec = RunSpec(app=flower_app.name, app_sha256=hashlib.sha256(blob).hexdigest(),
                   run_config=config, rounds=spec_rounds(config), by=submitter())
    if sign_key is not None:
        spec = signing.sign_run(spec, blob, signing.load_private_key(sign_key), target.cluster)
    with target.store() as store:
        run_id = run_store.submit(store, Keys(target.cluster), spec, blob)
    if as_json:
        click.echo(json.dumps({"run": run_id, "app": spec.app, "rounds": spec.rounds,
                               "app_sha256": spec.app_sha256, "package_bytes": len(blob),
                               "signed_by": spec.signed_by or None}))
    else:
        click.echo(run_id)


@run_group.command("list")
@target_options
@json_option("One JSON array of runs.")
def run_list(target: Target, as_json: bool) -> None:
    """Every run: app, state (queued/running/completed/stopped), rounds, final model."""
    from raftfl.inspection import format_runs
    from raftfl.inspection import run_list as list_runs

    rows = list_runs(target.endpoints(), target.cluster)
    click.echo(json.dumps(rows, indent=2) if as_json else format_runs(rows))


@run_group.command("stop")
@target_options
@click.argument("run_id", metavar="RUN", type=click.IntRange(1))
def run_stop(target: Target, run_id: int) -> None:
    """Stop a run: the aggregator ends its ServerApp at once and moves on (a queued run is
    skipped). Recorded as `run_stopped` in the run's log."""
    from raftfl.core.keys import Keys

    with target.store() as store:
        click.echo(run_store.stop(store, Keys(target.cluster), run_id, submitter(), "raftfl run stop"))
