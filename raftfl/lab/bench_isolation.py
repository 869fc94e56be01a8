"""`raftfl bench isolation`: what `--isolation process` costs per round, against `thread`.

The same quick-start app, data, rounds and seed on `nodes` local nodes, the two modes
alternating (thread, process, then process, thread, ...) so a drift in the machine's load hits
both. Round wall time as `bench overhead` measures it: between the first "training round R"
line of consecutive rounds, over rounds 2..R. Round 1 is reported apart (`first_round_s`): in
process mode it includes each node's child importing the app (and torch).

What the cost is made of: per instruction, the model and the reply cross a pipe as codec
bytes (the quick-start CNN: 250 kB each way) and are decoded once more; the child lives for
the whole run, so nothing is imported again.
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from raftfl.core.errors import RaftflError
from raftfl.core.events import RunCompleted
from raftfl.lab.bench import plot_bars
from raftfl.lab.bench_overhead import RAFTFL_TRAIN, round_starts, window
from raftfl.lab.bench_report import Column, Echo, LogTail, machine, table, write_csv
from raftfl.lab.localcluster import LocalCluster

MODES = ("thread", "process")
RUN_TIMEOUT_S = 900.0


def run_mode(mode: str, nodes: int, rounds: int, train_size: int, test_size: int,
             workdir: Path, progress: Echo) -> dict[str, Any]:
    """One run of the quick-start app with `--isolation mode`; its round wall times."""
    tail = LogTail({}, RAFTFL_TRAIN)
    started = time.monotonic()
    try:
        with LocalCluster(n=nodes, rounds=rounds, cluster="isolation", train_size=train_size,
                          test_size=test_size, workdir=workdir, keep=True,
                          extra_args=["--isolation", mode]) as c:
            tail.logs = {x.name: x.log_path for x in c.nodes}
            tail.start()
            c.wait_event(lambda e: isinstance(e, RunCompleted), RUN_TIMEOUT_S, "completion")
    finally:
        tail.close()
    starts = round_starts(tail)
    out = window(starts, rounds, tail)
    out.update(mode=mode, first_round_s=round(starts[2] - starts[1], 3),
               run_s=round(time.monotonic() - started, 1))
    progress(f"  {mode}: {out['round_s']:.2f} s per round (first round "
             f"{out['first_round_s']:.2f} s)")
    return out


COLUMNS = [Column("rep", "rep"), Column("mode", "isolation"),
           Column("round_s", "s/round", "{:.3f}"), Column("first_round_s", "round 1 s", "{:.2f}"),
           Column("load", "load 1m", "{:.2f}"), Column("run_s", "run s")]


def bench_isolation(nodes: int, rounds: int, reps: int, train_size: int, test_size: int,
                    out: Path, echo: Echo = print, progress: Echo | None = None
                    ) -> tuple[int, dict[str, Any]]:
    """Alternate `reps` runs per mode; the mean round wall time of each and their difference."""
    progress = progress or echo
    if rounds < 3:
        raise RaftflError("--rounds must be at least 3 (round 1 is warm-up, and a period "
                          "needs two more round starts)")
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    for rep in range(1, reps + 1):
        for mode in MODES if rep % 2 else MODES[::-1]:
            load = os.getloadavg()[0]
            progress(f"[{len(rows) + 1}/{2 * reps}] --isolation {mode}, {nodes} nodes, "
                     f"{rounds} rounds, load {load:.1f}")
            with tempfile.TemporaryDirectory(prefix=f"raftfl-isolation-{mode}-") as tmp:
                try:
                    row = run_mode(mode, nodes, rounds, train_size, test_size, Path(tmp),
                                   progress)
                except RaftflError:
                    kept = out / f"isolation-failed-{mode}-{rep}"
                    shutil.copytree(tmp, kept, dirs_exist_ok=True,
                                    ignore=shutil.ignore_patterns("member*", "*.npz", "etcd*"))
                    progress(f"  {mode} failed: logs kept in {kept}")
                    raise
            row.update(rep=rep, load=round(load, 2))
            rows.append(row)
    mean = {m: statistics.fmean(r["round_s"] for r in rows if r["mode"] == m) for m in MODES}
    first = {m: statistics.fmean(r["first_round_s"] for r in rows if r["mode"] == m)
             for m in MODES}
    cost = mean["process"] - mean["thread"]
    write_csv(out / "isolation.csv", [{k: v for k, v in r.items() if k != "round_s_each"}
                                      for r in rows])
    plot_bars(out / "isolation.png", f"round wall time, {nodes} nodes (rounds 2..{rounds})",
              [f"{r['mode']} {r['rep']}" for r in rows], [r["round_s"] for r in rows],
              "run", "seconds per round")
    summary = {"bench": "isolation", "nodes": nodes, "rounds": rounds, "reps": reps,
               "train_size": train_size, "test_size": test_size, "machine": machine(),
               "round_s": {m: round(v, 3) for m, v in mean.items()},
               "first_round_s": {m: round(v, 3) for m, v in first.items()},
               "cost_per_round_s": round(cost, 3),
               "round_time_ratio": round(mean["process"] / mean["thread"], 3),
               "rows": rows, "files": [str(out / "isolation.csv"), str(out / "isolation.png")]}
    echo(table(rows, COLUMNS))
    echo(f"--isolation process costs {cost:+.3f} s per round ({mean['process']:.2f} s vs "
         f"{mean['thread']:.2f} s in-thread, ratio {summary['round_time_ratio']:.3f}); "
         f"round 1 {first['process']:.2f} s vs {first['thread']:.2f} s (the child's start)")
    echo(f"load average now {summary['machine']['load_avg_1m']}; wrote {out / 'isolation.csv'} "
         f"and {out / 'isolation.png'}")
    return 0, summary
