"""`raftfl bench transparency`: is a failover invisible to the Flower app it interrupts?

Two runs of the same app on real node processes, identical but for one thing: node-1 (the
first node, partition 0) is SIGKILLed at the same point of round 3 in both, holding the
aggregator role in run A and only a worker in run B (node-2 holds the role there). With
deterministic local training both runs train the same partitions from the same arrays in
every round, so any difference in the final model, or in the epsilon a DP app reports after
its last round, is state the failover lost: FedAdam's moments, a privacy accountant's steps,
an RNG, the ServerApp's `context.state`.

The kill point: node-1 is held inside its round-3 fit (the lab's RAFTFL_TEST_HOLD, in both
runs) and killed `KILL_DELAY_S` after `round_started` of round 3 is recorded, so it never
replies in round 3 of either run, and the survivors have started training.

A run whose commits show the role moving for another reason (say, a lease starved on a
loaded machine) is void: both runs could then lose the same state and agree for the wrong
reason. It is run once more; if it strays again, the bench fails.

The comparison is pure (`max_rel_diff`, `epsilon_after`, `deviation`); exit 1 means a run did
not complete or did not follow its scenario, never that a comparison missed its target (that
is printed).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from raftfl.core.errors import RaftflError
from raftfl.core.events import RoundStarted, RunCompleted
from raftfl.core.invariants import check
from raftfl.core.replay import FLState
from raftfl.flower.app import load_app
from raftfl.lab.bench_report import Echo, machine, write_csv
from raftfl.lab.faults import WAIT_S, at, first_term
from raftfl.lab.localcluster import LocalCluster
from raftfl.lab.testhooks import HOLD_ENV
from raftfl.node.runapp import run_config as fuse_run_config

KILL_ROUND = 3
KILL_DELAY_S = 0.5  # after round 3's round_started: the instructions are out, workers train
HOLD_S = 60  # node-1's round-3 fit outlasts the kill, so it never replies in round 3
VICTIM = 0  # node-1: partition 0; the aggregator in run A
OTHER_HOLDER = 1  # node-2 holds the role in run B
TARGET_MAX_REL_DIFF = 1e-5
TINY = 1e-12  # the scale below which an array counts as zero
ATTEMPTS = 2  # runs of each scenario while a run completes but strays from it


@dataclass(frozen=True)
class RunOutcome:
    """One run of the pair, as the bench saw it."""

    label: str  # "killed_aggregator" | "killed_worker"
    completed: bool
    seconds: float
    arrays: dict[str, np.ndarray] | None = None  # the final model, as the survivors saved it
    rounds: list[dict[str, Any]] = field(default_factory=list)  # per committed round
    epsilon: float | None = None  # reported after the last round
    victim: str = ""
    aggregators: list[str] = field(default_factory=list)  # in commit order, repeats dropped
    notes: list[str] = field(default_factory=list)  # invariant violations, disagreements
    error: str | None = None
    deviation: str | None = None  # how the run strayed from its scenario (figures void)

    @property
    def valid(self) -> bool:
        return self.completed and self.deviation is None


# -- pure comparison ------------------------------------------------------------------------
def as_arrays(model: Any) -> dict[str, np.ndarray]:
    """{name: ndarray} of an npz file's contents, a mapping of arrays, or an ArrayRecord."""
    if hasattr(model, "files"):  # numpy's NpzFile
        return {name: np.asarray(model[name]) for name in model.files}
    if isinstance(model, Mapping):
        return {name: (value.numpy() if hasattr(value, "numpy") and not isinstance(
            value, np.ndarray) else np.asarray(value)) for name, value in model.items()}
    raise TypeError(f"not a model: {type(model).__name__}")


def max_rel_diff(a: Any, b: Any) -> float:
    """Max over arrays of max|a - b| / max(max|b|, TINY): each array's largest difference
    relative to that array's own scale (b is the reference).

    Why per array and not per element: an element that is zero in one run and 1e-9 in the
    other is noise of the float32 sums (workers' replies arrive in a different order), not a
    different model, yet its elementwise ratio is 1; `max_rel_diff_elementwise` gives that
    figure too. Raises ValueError when the models do not hold the same arrays."""
    return _max_ratio(a, b, elementwise=False)


def max_rel_diff_elementwise(a: Any, b: Any) -> float:
    """Max over every element of |a - b| / max(|b|, TINY)."""
    return _max_ratio(a, b, elementwise=True)


def _max_ratio(a: Any, b: Any, elementwise: bool) -> float:
    left, right = as_arrays(a), as_arrays(b)
    if set(left) != set(right):
        raise ValueError(f"the models hold different arrays: {sorted(set(left) ^ set(right))}")
    worst = 0.0
    for name, ref in right.items():
        x, y = left[name].astype(np.float64), ref.astype(np.float64)
        if x.shape != y.shape:
            raise ValueError(f"array {name!r}: shape {x.shape} vs {y.shape}")
        if not x.size:
            continue
        diff = np.abs(x - y)
        if elementwise:
            ratio = float(np.max(diff / np.maximum(np.abs(y), TINY)))
        else:
            ratio = float(diff.max() / max(float(np.abs(y).max()), TINY))
        if math.isnan(ratio):
            return math.inf  # a NaN on one side is as different as it gets
        worst = max(worst, ratio)
    return worst


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) \
        else None


def epsilon_after(state: FLState) -> float | None:
    """The "epsilon" the app's evaluate_fn reported with the last committed round, from the
    replayed event log (`round_committed.metrics["evaluate_serverapp"]`); None if absent."""
    if not state.committed:
        return None
    metrics = state.committed[max(state.committed)].metrics.get("evaluate_serverapp")
    return _number(metrics.get("epsilon")) if isinstance(metrics, dict) else None


def round_rows(state: FLState) -> list[dict[str, Any]]:
    """Each committed round: accuracy, loss, epsilon (when reported), term and aggregator."""
    rows = []
    for rnd in sorted(state.committed):
        ev = state.committed[rnd]
        central = ev.metrics.get("evaluate_serverapp")
        central = central if isinstance(central, dict) else {}
        rows.append({"round": rnd, "accuracy": ev.accuracy, "loss": ev.loss,
                     "epsilon": _number(central.get("epsilon")), "term": ev.term,
                     "aggregator": ev.node})
    return rows


def deviation(rows: list[dict[str, Any]], victim: str, kill_aggregator: bool) -> str | None:
    """How a run's commits stray from its scenario, or None: with the victim the aggregator
    (run A), it commits every round before `KILL_ROUND` in one term and one other node every
    round after; with the victim a worker (run B), one other node commits every round in one
    term. A role that moved for another reason (a starved lease on a loaded machine) would
    make both runs lose the same state and agree for the wrong reason."""
    if not rows:
        return "no round was committed"
    before = [r for r in rows if r["round"] < KILL_ROUND]
    after = [r for r in rows if r["round"] >= KILL_ROUND]
    spans = [("every round", rows)] if not kill_aggregator else \
        [(f"rounds before {KILL_ROUND}", before), (f"rounds from {KILL_ROUND}", after)]
    for what, part in spans:
        holders = _unique(f"{r['aggregator']} (term {r['term']})" for r in part)
        if len(holders) > 1:
            return f"{what} were committed by {' -> '.join(holders)}, not in one term"
    if kill_aggregator and before and before[0]["aggregator"] != victim:
        return f"rounds before {KILL_ROUND} were committed by {before[0]['aggregator']}, " \
               f"not by node-1 ({victim})"
    if any(r["aggregator"] == victim for r in (after if kill_aggregator else rows)):
        return f"node-1 ({victim}) committed a round it should not have"
    return None


def _unique(items: Iterable[str]) -> list[str]:
    out: list[str] = []
    for item in items:
        if not out or out[-1] != item:
            out.append(item)
    return out


def compare(a: RunOutcome, b: RunOutcome) -> dict[str, Any]:
    """The figures of a pair of runs (A: aggregator killed; B: worker killed)."""
    out: dict[str, Any] = {"max_rel_diff": None, "max_rel_diff_elementwise": None,
                           "models_comparable": None}
    if a.arrays is not None and b.arrays is not None:
        try:
            out["max_rel_diff"] = max_rel_diff(a.arrays, b.arrays)
            out["max_rel_diff_elementwise"] = max_rel_diff_elementwise(a.arrays, b.arrays)
            out["models_comparable"] = True
        except ValueError as exc:
            out["models_comparable"] = str(exc)
    out["fedadam_ok"] = (out["max_rel_diff"] is not None
                         and out["max_rel_diff"] <= TARGET_MAX_REL_DIFF)
    out["epsilon_killed_aggregator"] = a.epsilon
    out["epsilon_killed_worker"] = b.epsilon
    out["epsilon_equal"] = (None if a.epsilon is None and b.epsilon is None
                            else a.epsilon is not None and b.epsilon is not None
                            and math.isclose(a.epsilon, b.epsilon, rel_tol=1e-12, abs_tol=0.0))
    return out


# -- the runs -------------------------------------------------------------------------------
def one_run(app: Path, rounds: int, nodes: int, kill_aggregator: bool, run_config: str | None,
            progress: Echo) -> RunOutcome:
    """One run of the app with node-1 SIGKILLed mid-round 3, as the aggregator or a worker."""
    label = "killed_aggregator" if kill_aggregator else "killed_worker"
    holder = VICTIM if kill_aggregator else OTHER_HOLDER
    started = time.monotonic()
    c = LocalCluster(n=nodes, rounds=rounds, cluster=f"transp{'a' if kill_aggregator else 'b'}",
                     bootstrap=holder, extra_args=["--app", str(app)],
                     node_args={holder: ["--run-config", run_config]} if run_config else {},
                     node_env={VICTIM: {HOLD_ENV: f"fit:{KILL_ROUND}:{HOLD_S}"}})
    victim = c.nodes[VICTIM].name
    try:
        c.start()
        first_term(c)  # who held the role when is judged from the commits (`deviation`)
        r3 = at(c, RoundStarted, KILL_ROUND)
        time.sleep(max(0.0, r3.ts + KILL_DELAY_S - time.time()))
        c.kill(victim)
        progress(f"  {label}: SIGKILL node-1 ({victim}, "
                 f"{'the aggregator' if kill_aggregator else 'a worker'}) "
                 f"{time.time() - r3.ts:.2f} s into round {KILL_ROUND}")
        c.wait_event(lambda e: isinstance(e, RunCompleted), WAIT_S + 30 * rounds,
                     "the run to complete")
        survivors = [n for n in c.nodes if n.name != victim]
        c.wait_for(lambda: all(n.result() for n in survivors), 60, "every survivor's final model")
        state = c.state()
        finals = {k: v for k, v in c.final_models().items() if k != victim}
        notes = list(check(state, rounds, finals).violations)
        result = survivors[0].result()
        assert result is not None
        with np.load(result["final_model_file"]) as npz:
            arrays = as_arrays(npz)
        rows = round_rows(state)
        return RunOutcome(label, True, round(time.monotonic() - started, 1), arrays, rows,
                          epsilon_after(state), victim, _unique(r["aggregator"] for r in rows),
                          notes, deviation=deviation(rows, victim, kill_aggregator))
    except (RaftflError, OSError, ValueError) as exc:  # ValueError: an unreadable npz
        progress(f"  {label}: FAILED: {exc}\n{c.tail_logs(8)}")
        return RunOutcome(label, False, round(time.monotonic() - started, 1), victim=victim,
                          error=str(exc))
    finally:
        c.close()


def bench_transparency(app: Path, rounds: int, nodes: int, run_config: str | None, out: Path,
                       echo: Echo = print, progress: Echo | None = None
                       ) -> tuple[int, dict[str, Any]]:
    progress = progress or echo
    if rounds <= KILL_ROUND:
        raise RaftflError(f"--rounds must be more than {KILL_ROUND}: node-1 dies in round "
                          f"{KILL_ROUND}")
    # A directory that is no Flower app, or a run config it does not declare: one line now,
    # not two runs that time out.
    fuse_run_config(load_app(app), {}, run_config)
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    name = app.resolve().name
    progress(f"transparency of {app}: {nodes} nodes, {rounds} rounds, node-1 SIGKILLed "
             f"{KILL_DELAY_S} s into round {KILL_ROUND}")
    a = _scenario_run(app, rounds, nodes, True, run_config, progress)
    b = _scenario_run(app, rounds, nodes, False, run_config, progress)
    figures = compare(a, b)
    summary: dict[str, Any] = {
        "bench": "transparency", "app": str(app), "rounds": rounds, "nodes": nodes,
        **figures, "seconds": round(time.monotonic() - started, 1),
        "kill": {"node": "node-1", "round": KILL_ROUND, "delay_s": KILL_DELAY_S},
        "target_max_rel_diff": TARGET_MAX_REL_DIFF, "run_config": run_config,
        "runs": {run.label: _run_json(run) for run in (a, b)}, "machine": machine(),
        "ok": a.valid and b.valid}
    stem = f"transparency-{name}"
    files = [out / f"{stem}.csv", out / f"{stem}-rounds.csv", out / f"{stem}.png"]
    write_csv(files[0], [{k: v for k, v in summary.items() if not isinstance(v, dict)}])
    write_csv(files[1], [{"run": run.label, **row} for run in (a, b) for row in run.rounds])
    _plot(files[2], a, b, name)
    summary["files"] = [str(f) for f in files]
    for line in report(summary, a, b):
        echo(line)
    echo(f"wrote {', '.join(summary['files'])}")
    return (0 if summary["ok"] else 1), summary


def _scenario_run(app: Path, rounds: int, nodes: int, kill_aggregator: bool,
                  run_config: str | None, progress: Echo) -> RunOutcome:
    """One run of the pair, run again (up to `ATTEMPTS` in all) while it completes but strays
    from its scenario."""
    tag = "A (node-1 the aggregator)" if kill_aggregator else "B (node-1 a worker)"
    for attempt in range(1, ATTEMPTS + 1):
        run = one_run(app, rounds, nodes, kill_aggregator, run_config, progress)
        if not run.completed:
            progress(f"  run {tag}: FAILED ({run.error})")
        elif run.deviation:
            progress(f"  run {tag}: strayed from the scenario (attempt {attempt} of "
                     f"{ATTEMPTS}): {run.deviation}")
            continue
        else:
            progress(f"  run {tag}: completed in {run.seconds} s")
        return run
    return run


def _run_json(run: RunOutcome) -> dict[str, Any]:
    return {"completed": run.completed, "seconds": run.seconds, "victim": run.victim,
            "aggregators": run.aggregators, "epsilon": run.epsilon, "rounds": run.rounds,
            "notes": run.notes, "error": run.error, "deviation": run.deviation}


def _fmt(x: float | None, spec: str = ".4g") -> str:
    return "-" if x is None else format(x, spec)


def report(summary: dict[str, Any], a: RunOutcome, b: RunOutcome) -> list[str]:
    """The readable block: both runs, then both figures against their targets."""
    lines = [f"transparency of {summary['app']}: {summary['nodes']} nodes, {summary['rounds']} "
             f"rounds, node-1 SIGKILLed {KILL_DELAY_S} s into round {KILL_ROUND}"]
    for tag, run in (("A", a), ("B", b)):
        role = "the aggregator" if run is a else "a worker"
        if not run.completed:
            lines.append(f"  run {tag} (node-1 {role}): DID NOT COMPLETE: {run.error}")
            continue
        if run.deviation:
            lines.append(f"  run {tag} (node-1 {role}): INVALID, not the scenario: "
                         f"{run.deviation}")
        last = run.rounds[-1] if run.rounds else {}
        lines.append(f"  run {tag} (node-1 {role}): completed in {run.seconds} s; aggregators "
                     f"{' -> '.join(run.aggregators)}; final accuracy "
                     f"{_fmt(last.get('accuracy'), '.3f')}, epsilon {_fmt(run.epsilon, '.6g')}")
        lines += [f"    note: {note}" for note in run.notes]
    diff = summary["max_rel_diff"]
    if diff is None:
        why = summary["models_comparable"] or "a run has no final model"
        lines.append(f"  final models: NOT COMPARED ({why})")
    else:
        lines.append(f"  final models: max relative difference {diff:.3e} (elementwise "
                     f"{summary['max_rel_diff_elementwise']:.3e}); target <= "
                     f"{TARGET_MAX_REL_DIFF:g}: {'met' if summary['fedadam_ok'] else 'MISSED'}")
    if summary["epsilon_equal"] is None:
        lines.append("  epsilon: not reported by the app")
    else:
        lines.append(f"  epsilon after the last round: {_fmt(a.epsilon, '.6g')} (aggregator "
                     f"killed) vs {_fmt(b.epsilon, '.6g')} (worker killed): "
                     f"{'equal' if summary['epsilon_equal'] else 'DIFFERENT'}")
    return lines


def _plot(path: Path, a: RunOutcome, b: RunOutcome, name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with_eps = any(r["epsilon"] is not None for run in (a, b) for r in run.rounds)
    fig, axes = plt.subplots(1, 2 if with_eps else 1, figsize=(9 if with_eps else 6, 3.5),
                             squeeze=False)
    for run, style in ((a, "o-"), (b, "s--")):
        label = ("node-1 killed as aggregator" if run is a else "node-1 killed as worker")
        xs = [r["round"] for r in run.rounds]
        axes[0][0].plot(xs, [math.nan if r["accuracy"] is None else r["accuracy"]
                             for r in run.rounds], style, label=label)
        if with_eps:
            axes[0][1].plot(xs, [math.nan if r["epsilon"] is None else r["epsilon"]
                                 for r in run.rounds], style, label=label)
    axes[0][0].axvline(KILL_ROUND - 0.5, color="red", linestyle=":", label="kill (round 3)")
    axes[0][0].set_xlabel("round")
    axes[0][0].set_ylabel("central accuracy")
    axes[0][0].set_title(f"{name}: accuracy per round")
    axes[0][0].legend(fontsize=7)
    if with_eps:
        axes[0][1].set_xlabel("round")
        axes[0][1].set_ylabel("epsilon reported")
        axes[0][1].set_title("privacy spent")
        axes[0][1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
