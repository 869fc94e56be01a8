"""`raftfl demo`: the paper's scenario on one machine, checked.

Start a local cluster, train, SIGKILL the aggregator in the middle of a round, watch the
survivors elect a replacement and finish, then verify every round was committed exactly
once and every survivor holds the same model. Writes a JSON summary, a CSV and a PNG.
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from typing import Any

from raftfl.core.events import (
    AggregatorElected,
    CheckpointFallback,
    RoundCommitted,
    RoundStarted,
    RunCompleted,
    StepDown,
    describe,
)
from raftfl.core.invariants import check, failovers
from raftfl.core.replay import replay
from raftfl.lab.localcluster import LocalCluster

KILL_DELAY_S = 0.1  # after the round's start: the workers are mid-fit
# The demo's task, for the bundled app (another --app keeps its own config), sized to learn
# visibly in a few short rounds. The lab cluster's 5,000 images gave each of 4 nodes 40 SGD
# steps (batches of 32, lr 0.01) a round: the CNN never left its initial plateau on the
# synthetic set (train loss 2.31 -> 2.28, accuracy 0.11 -> 0.13 in 4 rounds). 16,000 images,
# 2 local epochs in batches of 64 at lr 0.03: 125 steps of twice the batch a round, accuracy
# 0.16, 0.23, 0.31, 0.38. `--run-config` overrides any of these keys.
DEMO_TASK = {"train-size": 16000, "local-epochs": 2, "batch-size": 64, "learning-rate": 0.03}
# The events the demo narrates; the rest (fit results, checkpoints, joins) is in `history`.
SHOWN = (AggregatorElected, RoundStarted, RoundCommitted, StepDown, CheckpointFallback, RunCompleted)
GRID_EXCHANGE = "grid_exchange"  # a ServerApp's own-loop grid call, journaled (flower/journal.py)


def run_demo(nodes: int, rounds: int, kill_at: int | None, dataset: str, out_dir: Path,
             summary_json: Path | None, lease_ttl: int = 3, keep: bool = False,
             echo: Any = print, timeout: float | None = None, app: Path | None = None,
             run_config: str | None = None, secure: bool = False,
             insecure: bool = False) -> int:
    """The demo; by default as the quick start runs (mutual TLS from the cluster's own CA, no
    RBAC), `secure`: --certs bundles and etcd RBAC, `insecure`: plain text."""
    out_dir.mkdir(parents=True, exist_ok=True)
    timeout = timeout or 120 + 40 * rounds
    from raftfl.task.data import resolve_kind

    dataset = resolve_kind(dataset)
    run_config = run_config if app else _with_demo_task(run_config)
    cluster = LocalCluster(n=nodes, rounds=rounds, dataset=dataset, cluster="demo",
                           lease_ttl=lease_ttl, keep=keep,
                           extra_args=["--app", str(app)] if app else [],
                           node_args={0: ["--run-config", run_config]} if run_config else {},
                           secure=secure, quickstart=not secure and not insecure)
    try:
        cluster.start()
        echo(f"demo: {nodes} nodes on 127.0.0.1 ports {cluster.base}..{cluster.base + nodes - 1}"
             f" (logs in {cluster.workdir}); {rounds} rounds, dataset {dataset}, lease TTL "
             f"{lease_ttl} s"
             + (f", run config {run_config}" if run_config else "")
             + (f", killing the aggregator in round {kill_at}" if kill_at else "")
             + f"; {_security(cluster, secure, insecure)}")
        started = time.monotonic()
        shown = 0
        killed = done = False
        while not done and time.monotonic() - started < timeout:
            if shown == len(cluster.log):
                if not any(n.alive for n in cluster.nodes):
                    break
                time.sleep(0.05)
                continue
            ev = cluster.log[shown].event
            shown += 1
            if isinstance(ev, SHOWN):
                echo(f"  [{time.strftime('%H:%M:%S')}] {describe(ev)}")
            if kill_at and not killed and kill_point(ev, kill_at):
                # A grid call can end within KILL_DELAY_S (SecAgg+ stages do): no delay there.
                time.sleep(KILL_DELAY_S if isinstance(ev, RoundStarted) else 0.0)
                cluster.kill(ev.node)
                killed = True
                echo(f"  [{time.strftime('%H:%M:%S')}] SIGKILL {ev.node} (the aggregator) "
                     f"during {_unit(ev)} {kill_at}")
            done = isinstance(ev, RunCompleted)
        if done:
            try:
                cluster.wait_exit(60)
            except Exception:  # noqa: BLE001 - a missing final model is reported below
                pass
        log = list(cluster.log)
        state = replay(log)
        survivors = {n.name for n in cluster.nodes if n.name not in cluster.kills}
        finals = {k: v for k, v in cluster.final_models().items() if k in survivors}
        missing = survivors - set(finals)
        verdict = check(state, rounds, finals)
        if not done:
            verdict.violations.append(f"the run did not complete within {timeout:.0f}s")
        if kill_at and not killed:
            verdict.violations.append(f"--kill-aggregator-at {kill_at}: the run had no round "
                                      f"or grid call {kill_at}, nothing was killed")
        if missing:
            verdict.violations.append(f"no final model from {sorted(missing)}")
        fos = failovers(log, cluster.kills, cluster.vacancies)
        summary = {
            "rounds": rounds,
            "committed_rounds": state.commit_order,
            "failovers": [f.to_dict() for f in fos],
            "final_model_sha256": finals,
            "accuracy": [state.committed[r].accuracy for r in sorted(state.committed)],
            "loss": [state.committed[r].loss for r in sorted(state.committed)],
            "metrics": [state.committed[r].metrics for r in sorted(state.committed)],
            "terms": [state.committed[r].term for r in sorted(state.committed)],
            "aggregators": [state.committed[r].node for r in sorted(state.committed)],
            "ok": verdict.ok,
            "violations": verdict.violations,
            "dataset": dataset,
            "nodes": nodes,
            "secure": secure,
            "security": "secure" if secure else "insecure" if insecure else "quickstart",
            "round_s": _round_seconds(log),
            # A ServerApp with its own loop commits no rounds: its recorded grid calls, in log
            # order (each once, unless a successor diverged from the record), and completions.
            "grid_calls": [item.event.call for item in log if item.event.type == GRID_EXCHANGE],
            "run_completed": sum(isinstance(item.event, RunCompleted) for item in log),
        }
        _write_outputs(out_dir, summary, state)
        if summary_json:
            summary_json.write_text(json.dumps(summary, indent=2))
        _print_summary(summary, echo)
        if not verdict.ok:
            echo(cluster.tail_logs())
        return 0 if verdict.ok else 1
    finally:
        cluster.close()


def _security(cluster: LocalCluster, secure: bool, insecure: bool) -> str:
    if secure:
        return "mutual TLS and etcd RBAC (CA in the logs dir)"
    if insecure:
        return "plain text (--insecure: every local user can reach the nodes)"
    return f"mutual TLS from the quick start's own CA ({cluster.quick_start_ca})"


def kill_point(event: Any, kill_at: int) -> bool:
    """Whether `event` is where `--kill-aggregator-at R` SIGKILLs the aggregator (its `node`):
    round R's start; or, for a ServerApp with its own loop, whose grid calls are journaled
    instead of rounds, the record of call R-1, so that the kill lands in the middle of call
    R. For R=1 that is the run's first election: no call is recorded before call 1 ends."""
    if isinstance(event, RoundStarted):
        return event.round == kill_at
    if kill_at == 1:
        return isinstance(event, AggregatorElected)
    return event.type == GRID_EXCHANGE and getattr(event, "call", None) == kill_at - 1


def _unit(event: Any) -> str:
    """What the kill interrupts, as the demo says it."""
    if isinstance(event, RoundStarted):
        return "round"
    return "grid call" if event.type == GRID_EXCHANGE else "round or grid call"


def _with_demo_task(run_config: str | None) -> str:
    """The bundled app's --run-config: DEMO_TASK, with the keys `run_config` sets its own."""
    from raftfl.flower.app import parse_config

    given = parse_config(run_config)
    demo = " ".join(f"{key}={value}" for key, value in DEMO_TASK.items() if key not in given)
    return f"{demo} {run_config or ''}".strip()


def _round_seconds(log: list[Any]) -> list[float]:
    """Seconds from each round's start to its commit by the same term (redone rounds: the
    attempt that committed)."""
    started: dict[tuple[int, int], float] = {}
    out = []
    for item in log:
        event = item.event
        if isinstance(event, RoundStarted):
            started[(event.round, event.term)] = event.ts
        elif isinstance(event, RoundCommitted) and (event.round, event.term) in started:
            out.append(round(event.ts - started[(event.round, event.term)], 3))
    return out


def _write_outputs(out_dir: Path, summary: dict[str, Any], state: Any) -> None:
    with open(out_dir / "rounds.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["round", "accuracy", "loss", "term", "aggregator", "committed_at"])
        for r in sorted(state.committed):
            c = state.committed[r]
            w.writerow([r, c.accuracy, c.loss, c.term, c.node, round(c.ts, 3)])
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    rounds = sorted(state.committed)
    ax.plot(rounds, [a if a is not None else float("nan") for a in summary["accuracy"]],
            marker="o", label="test accuracy")
    for fo in summary["failovers"]:
        first_new = next((r for r in rounds if state.committed[r].node == fo["new"]), None)
        if first_new is not None:
            ax.axvline(first_new - 0.5, color="red", linestyle="--",
                       label=f"failover {fo['failed']} -> {fo['new']} ({fo['recovery_s']} s)")
    ax.set_xticks(rounds)
    ax.set_xlabel("round")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.set_title("raftfl: accuracy per round")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_dir / "accuracy.png", dpi=100)
    plt.close(fig)


def _print_summary(summary: dict[str, Any], echo: Any) -> None:
    echo("")
    echo("round  accuracy  term  aggregator")
    for i, r in enumerate(sorted(set(summary["committed_rounds"]))):
        acc = summary["accuracy"][i]
        echo(f"{r:>5}  {'-' if acc is None else f'{acc:.3f}':>8}  {summary['terms'][i]:>4}  "
             f"{summary['aggregators'][i]}")
    for fo in summary["failovers"]:
        t0 = fo["killed_at"]

        def rel(t: float | None, t0: float | None = t0) -> str:
            return "?" if t is None or t0 is None else f"+{t - t0:.2f}s"

        echo(f"failover {fo['failed']} -> {fo['new']}: killed, role freed "
             f"{rel(fo['lease_expired_at'])}, elected {rel(fo['elected_at'])}, resumed "
             f"{rel(fo['resumed_at'])}; recovery {fo['recovery_s']} s")
    models = set(summary["final_model_sha256"].values())
    echo(f"final model on {len(summary['final_model_sha256'])} survivors: "
         + (f"{next(iter(models))[:16]} (identical)" if len(models) == 1 else f"DIFFERENT {models}"))
    echo("OK: every round committed exactly once; survivors agree" if summary["ok"]
         else "FAILED: " + "; ".join(summary["violations"]))
