"""`raftfl bench ...`: the benchmarks' commands (part of the lab's, see raftfl/lab/commands.py)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from raftfl.cli.options import json_option, lease_ttl_option, out_option
from raftfl.core.errors import RaftflError

Echo = Callable[[str], None]


@click.group()
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


def _echo(as_json: bool) -> Echo:
    """Where the table and progress go: stderr with --json (the JSON goes to stdout)."""
    return (lambda line: click.echo(line, err=True)) if as_json else click.echo


def _bench_exit(result: tuple[int, Any], as_json: bool) -> None:
    code, summary = result
    if as_json:
        click.echo(json.dumps(summary, indent=2, default=str))
    sys.exit(code)


_OUT = out_option("runs/bench", "Where the CSV and PNG files go.")
_PLAIN_OUT = out_option("runs/bench")
_JSON = json_option("Print the summary as JSON on stdout (table and progress on stderr).")


@bench.command("recovery")
@click.option("--nodes", "nodes_list", multiple=True, default=("3,5,7",), show_default=True,
              callback=_int_list(3, 9), help="Cluster sizes, comma-separated.")
@click.option("--runs", type=click.IntRange(1), default=5, show_default=True,
              help="Faults per cluster size.")
@lease_ttl_option("--ttl", "--lease-ttl", "ttl", help="Lease TTL of every node (s).")
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

    echo = _echo(as_json)
    _bench_exit(run(nodes_list, runs, ttl, fault, seed, out, echo=echo, progress=echo),
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

    echo = _echo(as_json)
    _bench_exit(run(nodes, rounds, model_mb, db_limit_mb, out, echo=echo, progress=echo),
                as_json)


@bench.command("traffic")
@click.option("--nodes", "nodes_list", multiple=True, default=("3,5,8,16",), show_default=True,
              callback=_int_list(2, 16), help="Cluster sizes, comma-separated.")
@click.option("--rounds", type=click.IntRange(1), default=3, show_default=True)
@click.option("--idle", "idle_s", type=click.FloatRange(5, 3600), default=None,
              help="Bytes per second over this many seconds after a one-round run has "
                   "completed, instead of per round.")
@_OUT
@_JSON
def bench_traffic(nodes_list: list[int], rounds: int, idle_s: float | None, out: Path,
                  as_json: bool) -> None:
    """Bytes per round on Raft, etcd-client and Flower channels, in model copies: etcd's
    metrics, cross-checked with kernel counters (network namespaces; needs root)."""
    from raftfl.lab.bench_traffic import bench_traffic as run

    echo = _echo(as_json)
    _bench_exit(run(nodes_list, rounds, out, echo=echo, progress=echo, idle_s=idle_s or 0.0),
                as_json)


@bench.command("overhead")
@click.option("--nodes", type=click.IntRange(2, 9), default=3, show_default=True)
@click.option("--rounds", type=click.IntRange(3, 100), default=5, show_default=True,
              help="Rounds per run (round 1 is warm-up and not timed).")
@click.option("--reps", type=click.IntRange(1, 20), default=3, show_default=True,
              help="Runs per engine, alternating.")
@click.option("--train-size", type=click.IntRange(100), default=2000, show_default=True)
@click.option("--test-size", type=click.IntRange(10), default=500, show_default=True)
@click.option("--secure", is_flag=True,
              help="Compare raftfl with mutual TLS and etcd RBAC (demo --secure) against "
                   "raftfl in plain text, instead of raftfl against plain Flower.")
@click.option("--demo-task", is_flag=True,
              help="Train `raftfl demo`'s task (16,000 images, 2 local epochs; overrides "
                   "--train-size) instead of the bench's small one.")
@_OUT
@_JSON
def bench_overhead(nodes: int, rounds: int, reps: int, train_size: int, test_size: int,
                   secure: bool, demo_task: bool, out: Path, as_json: bool) -> None:
    """The quick-start app under plain Flower (Deployment Engine) and under raftfl,
    alternating: the ratio of round wall time and of bytes. With --secure: raftfl secured
    against raftfl in plain text."""
    from raftfl.lab.bench_overhead import bench_overhead as run

    echo = _echo(as_json)
    try:
        result = run(nodes, rounds, reps, train_size, test_size, out, echo=echo,
                     progress=echo, secure=secure, demo_task=demo_task)
    except RaftflError as exc:
        raise click.ClickException(str(exc)) from exc
    _bench_exit(result, as_json)


@bench.command("replay")
@click.option("--events", "counts", multiple=True, default=("1000,10000,100000",),
              show_default=True, callback=_int_list(1, 10_000_000),
              help="Log lengths, comma-separated (with --restart: 1000000 unless given).")
@click.option("--restart", is_flag=True,
              help="Instead: a real 3-node federation trains, one worker is killed, the run's "
                   "log grows to N events, and the worker is restarted: seconds from its "
                   "process start until its API says it caught up, and until it trains.")
@_OUT
@_JSON
def bench_replay(counts: list[int], restart: bool, out: Path, as_json: bool) -> None:
    """Time to rebuild the FL state from N events (decode + replay, and from etcd), and the
    cost of one HA cycle afterwards; with --restart, a real node restarted into such a log."""
    echo = _echo(as_json)
    if restart:
        from raftfl.lab.bench_restart import DEFAULT_EVENTS, bench_restart

        source = click.get_current_context().get_parameter_source("counts")
        given = source is not click.core.ParameterSource.DEFAULT
        _bench_exit(bench_restart(counts if given else [DEFAULT_EVENTS], out, echo=echo,
                                  progress=echo), as_json)
    from raftfl.lab.bench_replay import bench_replay as run

    _bench_exit(run(counts, out, echo=echo, progress=echo), as_json)


@bench.command("retention")
@click.option("--rounds", type=click.IntRange(1, 100_000), default=500, show_default=True)
@click.option("--every", type=click.IntRange(1), default=10, show_default=True,
              help="Run retention (compaction + defragmentation) every N rounds.")
@click.option("--model-bytes", type=click.IntRange(1, 1024 * 1024), default=248_024,
              show_default=True, help="Checkpoint size written per round.")
@click.option("--baseline/--no-baseline", default=True, show_default=True,
              help="Also measure without retention, for comparison.")
@_PLAIN_OUT
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
@lease_ttl_option()
@click.option("--etcd-heartbeat-ms", type=click.IntRange(10, 10_000), default=None,
              help="etcd heartbeat interval of every member [default: etcd's 100].")
@click.option("--etcd-election-ms", type=click.IntRange(100, 60_000), default=None,
              help="etcd election timeout of every member [default: etcd's 1000].")
@_PLAIN_OUT
@json_option("Print the summary as JSON on stdout.")
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
    echo = _echo(as_json)
    _bench_exit(run(WanSpec.from_ranges(nodes, rtt_ms, jitter_ms, loss_pct), minutes, lease_ttl,
                    out, echo=echo, etcd_timeouts=timeouts), as_json)


@bench.command("ranking")
@click.option("--nodes", "nodes_list", type=click.Choice(["3", "5"]), multiple=True,
              default=("3", "5"), show_default=True)
@_PLAIN_OUT
@click.option("--load", is_flag=True,
              help="Keep training while the nodes measure (all nodes share this machine's cores).")
@json_option("Print the results as JSON on stdout.")
def bench_ranking(nodes_list: tuple[str, ...], out: Path, load: bool, as_json: bool) -> None:
    """The election on real latency: unequal delays on the nodes' real connections (WAN lab;
    needs root), SIGKILL of the aggregator; the nearest survivor must win."""
    from raftfl.lab.bench_wan import bench_ranking as run

    echo = _echo(as_json)
    _bench_exit(run([int(n) for n in nodes_list], out, echo=echo, load=load), as_json)


@bench.command("transparency")
@click.option("--app", "app", required=True,
              type=click.Path(path_type=Path, exists=True, file_okay=False),
              help="The Flower app directory to run twice (e.g. examples/conformance/fedadam).")
@click.option("--rounds", type=click.IntRange(4, 1000), default=6, show_default=True,
              help="Rounds per run (node-1 dies in round 3).")
@click.option("--nodes", type=click.IntRange(3, 9), default=3, show_default=True)
@click.option("--run-config", default=None, metavar='"KEY=VALUE ..."',
              help="Override the app's run config (Flower's syntax).")
@_OUT
@_JSON
def bench_transparency(app: Path, rounds: int, nodes: int, run_config: str | None, out: Path,
                       as_json: bool) -> None:
    """Is a failover invisible to the app? The same app twice, node-1 SIGKILLed mid-round 3:
    as the aggregator, then as a worker. Compares the final models and the epsilon reported."""
    from raftfl.lab.bench_transparency import bench_transparency as run

    echo = _echo(as_json)
    try:
        result = run(app, rounds, nodes, run_config, out, echo=echo, progress=echo)
    except RaftflError as exc:
        raise click.ClickException(str(exc)) from exc
    _bench_exit(result, as_json)


@bench.command("isolation")
@click.option("--nodes", type=click.IntRange(2, 9), default=3, show_default=True)
@click.option("--rounds", type=click.IntRange(3, 100), default=6, show_default=True,
              help="Rounds per run (round 1 is warm-up and not timed).")
@click.option("--reps", type=click.IntRange(1, 20), default=3, show_default=True,
              help="Runs per isolation mode, alternating.")
@click.option("--train-size", type=click.IntRange(100), default=2000, show_default=True)
@click.option("--test-size", type=click.IntRange(10), default=500, show_default=True)
@_OUT
@_JSON
def bench_isolation(nodes: int, rounds: int, reps: int, train_size: int, test_size: int,
                    out: Path, as_json: bool) -> None:
    """The quick-start app with --isolation thread and process, alternating: what running
    each node's ClientApp in a child process costs per round."""
    from raftfl.lab.bench_isolation import bench_isolation as run

    echo = _echo(as_json)
    try:
        result = run(nodes, rounds, reps, train_size, test_size, out, echo=echo, progress=echo)
    except RaftflError as exc:
        raise click.ClickException(str(exc)) from exc
    _bench_exit(result, as_json)


@bench.command("durable")
@click.option("--params", "sizes", multiple=True, default=("62006,1000000",),
              show_default=True, callback=_int_list(1, 100_000_000),
              help="Model sizes (float32 parameters), comma-separated.")
@click.option("--workers", type=click.IntRange(1, 1000), default=3, show_default=True)
@click.option("--rounds", type=click.IntRange(1, 1000), default=10, show_default=True)
@_OUT
@_JSON
def bench_durable(sizes: list[int], workers: int, rounds: int, out: Path, as_json: bool) -> None:
    """What resuming a ServerApp costs each way: a state snapshot at each commit (strategy
    apps) or durable execution (apps with their own loop), per round and at failover."""
    from raftfl.lab.bench_durable import bench_durable as run

    echo = _echo(as_json)
    _bench_exit(run(sizes, workers, rounds, out, echo=echo, progress=echo), as_json)


@bench.command("scale")
@click.option("--workers", "sizes", multiple=True, default=("10,100,1000",), show_default=True,
              callback=_int_list(1, 4000), help="Edge workers per federation, comma-separated.")
@click.option("--rounds", type=click.IntRange(5, 100), default=10, show_default=True,
              help="Rounds per federation: 1 warm-up, then timed ones; the aggregator is "
                   "killed in round ROUNDS-2 (the next one if reading the counters outlasted it). "
                   "Ten give 6 timed rounds: at 10 workers a round takes 0.07 s, and with 3 "
                   "a latency sample falling in the window moved woken cycles by 18%.")
@click.option("--seed", type=int, default=0, show_default=True)
@_OUT
@_JSON
def bench_scale(sizes: list[int], rounds: int, seed: int, out: Path, as_json: bool) -> None:
    """Edge workers at scale on 3 nodes: round overhead per worker, the aggregator's memory,
    etcd requests per round, and the failover time until 90% and 100% of them reply."""
    from raftfl.lab.bench_scale import bench_scale as run

    echo = _echo(as_json)
    try:
        result = run(sizes, rounds, out, echo=echo, progress=echo, seed=seed)
    except RaftflError as exc:
        raise click.ClickException(str(exc)) from exc
    _bench_exit(result, as_json)
