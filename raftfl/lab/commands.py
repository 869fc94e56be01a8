"""The lab's commands (demo, faults, soak, bench), added to `raftfl` by its `raftfl.commands`
entry point when the `lab` extra (matplotlib) is installed.

Heavy imports happen inside the commands: `raftfl` loads this module every time it starts.
"""

from __future__ import annotations

import sys
from importlib.util import find_spec
from pathlib import Path

import click

from raftfl.cli.options import lease_ttl_option, out_option
from raftfl.lab.bench_commands import bench


def register(group: click.Group) -> None:
    """The `raftfl.commands` entry point; ImportError without the lab extra."""
    if find_spec("matplotlib") is None:
        raise ImportError("the lab needs its extra: pip install 'raftfl[lab]'")
    for command in (demo, faults, soak, bench):
        group.add_command(command)


@click.command()
@click.option("--nodes", type=click.IntRange(2, 16), default=4, show_default=True,
              help="Nodes in total: one aggregator, the rest workers.")
@click.option("--rounds", type=click.IntRange(1), default=4, show_default=True)
@click.option("--kill-aggregator-at", "kill_at", type=click.IntRange(1), default=None,
              help="SIGKILL the aggregator node during this round (for a ServerApp with its own "
                   "loop: during this grid call).")
@click.option("--dataset", type=click.Choice(["auto", "cifar10", "synthetic"]), default="auto",
              show_default=True)
@click.option("--summary-json", type=click.Path(path_type=Path), default=None)
@out_option("runs/demo", "Directory for summary.json, rounds.csv, accuracy.png.")
@lease_ttl_option(default=None,
                  help="[default: 3 s up to 5 nodes, then one more second per 2 nodes (16 nodes: "
                       "9 s): every node of the demo shares this machine's cores, and a starved "
                       "keepalive thread loses its lease]")
@click.option("--keep", is_flag=True, help="Keep the nodes' data dirs and logs.")
@click.option("--app", "app", type=click.Path(path_type=Path, exists=True, file_okay=False),
              default=None, help="A Flower app directory [default: the bundled quick-start app].")
@click.option("--run-config", default=None, metavar='"KEY=VALUE ..."',
              help="Override the app's run config (Flower's syntax).")
@click.option("--secure", is_flag=True,
              help="Mutual TLS and etcd RBAC: a throwaway cluster CA, one bundle per node "
                   "(--certs) [default: as the quick start, mutual TLS from the CA the nodes "
                   "make in their folder, no RBAC].")
@click.option("--insecure", is_flag=True,
              help="Plain text on loopback (every local user can reach the nodes).")
def demo(nodes: int, rounds: int, kill_at: int | None, dataset: str, summary_json: Path | None,
         out: Path, lease_ttl: int | None, keep: bool, app: Path | None, run_config: str | None,
         secure: bool, insecure: bool) -> None:
    """Run a local cluster, kill the aggregator mid-round, verify the outcome."""
    from raftfl.lab.demo import run_demo

    if secure and insecure:
        raise click.UsageError("give --secure or --insecure, not both")
    lease_ttl = lease_ttl or 3 + max(0, nodes - 5 + 1) // 2

    sys.exit(run_demo(nodes, rounds, kill_at, dataset, out, summary_json, lease_ttl, keep,
                      echo=click.echo, app=app, run_config=run_config, secure=secure,
                      insecure=insecure))


@click.command()
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


@click.command()
@click.option("--duration", callback=_duration, default="30m", show_default=True,
              metavar="DUR", help="How long to keep starting runs: 90s, 30m, 1h.")
@click.option("--nodes", type=click.IntRange(3, 9), default=3, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True,
              help="The fault schedule's seed: the same seed replays the same faults.")
@lease_ttl_option()
@click.option("--max-runs", type=click.IntRange(1), default=None,
              help="Stop after this many runs even if time is left.")
@click.option("--summary-json", type=click.Path(path_type=Path), default=None,
              help="Summary file; CSV, PNG and failed runs' logs go beside it.")
@out_option("runs/soak", "Output directory when --summary-json is not given.")
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
