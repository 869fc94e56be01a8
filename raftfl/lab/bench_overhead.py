"""`raftfl bench overhead`: the same Flower app, data, rounds and seed under plain Flower and
under raftfl, alternating in one run; the ratio of round wall time and of bytes.

Plain Flower is Flower's Deployment Engine as shipped: `flower-superlink` and one
`flower-supernode` per node (each with its own partition, `--node-config partition-id=i
num-partitions=N`), the run submitted with `flwr run`. Why not the Simulation Engine: in
flwr 1.42.0 it needs Ray (`flwr[simulation]`), which raftfl does not install; and the
Deployment Engine is the process-per-node topology raftfl itself has (every node a process
with its own data, talking over the network), so it is the like-for-like baseline. Every
process gets one torch thread (raftfl's default per node; OMP_NUM_THREADS=1 for Flower's).

`--secure` compares raftfl with itself instead: plain text against mutual TLS and etcd RBAC
(`raftfl demo --secure`'s setup: a throwaway CA, one bundle per node, `rbac.enable`), the same
app, data, seed and rounds, alternating, so the cost of security is measured on one machine
in one sitting (issue 18: at most 10% per round). `--demo-task` trains `raftfl demo`'s task
(16,000 images, 2 local epochs: rounds of seconds, as the demo's) instead of the bench's
small one (rounds well under a second, where fixed per-round costs weigh the most).

Round wall time: the time between the first train instruction of consecutive rounds to
arrive at any client (Flower: a SuperNode's "Receiving: train message"; raftfl: a worker's
"training round R"), each stamped when the line appears, over rounds 2..R (round 1 includes
warm-up). Bytes (root only): every process runs in its own network namespace (the
superlink in one, each supernode or raftfl node in its own), and the host ends of their
veth links count what crossed between "hosts" in the same window, per round.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raftfl.core.errors import RaftflError
from raftfl.core.events import RunCompleted
from raftfl.lab.bench import MODEL_BYTES, plot_bars
from raftfl.lab.bench_report import Column, Echo, LogTail, machine, table, write_csv
from raftfl.lab.demo import DEMO_TASK
from raftfl.lab.faults import Skip, netns_setup, netns_teardown
from raftfl.lab.localcluster import LocalCluster, free_base_port

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "quickstart"
TARGET_RATIO = 1.05
SECURE_TARGET_RATIO = 1.10
RUN_TIMEOUT_S = 900.0
_FLOWER_TRAIN = re.compile(r"Receiving: train message")
RAFTFL_TRAIN = re.compile(r"\] training round (\d+) for term")


def _veth(ctx: dict[str, Any] | None) -> float | None:
    if ctx is None:
        return None
    return float(sum(int(Path(f"/sys/class/net/{link}/statistics/rx_bytes").read_text())
                     for link in ctx["links"]))


def _namespaces(n: int) -> tuple[dict[str, Any] | None, str | None]:
    if os.geteuid() != 0:
        return None, "not root: bytes are not measured (they need network namespaces)"
    try:
        return netns_setup(n, f"10.215.{os.getpid() % 250}"), None
    except Skip as exc:
        return None, f"{exc}: bytes are not measured"


def round_starts(tail: LogTail) -> dict[int, float]:
    """When each round's training was first seen (the nodes' "training round R" lines)."""
    starts: dict[int, float] = {}
    for t, _, line in tail.lines:
        m = RAFTFL_TRAIN.search(line)
        if m:
            starts.setdefault(int(m.group(1)), t)
    return starts


def window(starts: dict[int, float], rounds: int, tail: LogTail) -> dict[str, Any]:
    """Round wall time and bytes per round over rounds 2..R, from the round starts."""
    if any(r not in starts for r in range(2, rounds + 1)):
        raise RaftflError(f"round starts seen: {sorted(starts)}, expected 2..{rounds}")
    periods = [starts[r + 1] - starts[r] for r in range(2, rounds)]
    out: dict[str, Any] = {"round_s": round(statistics.fmean(periods), 3),
                           "round_s_each": [round(p, 3) for p in periods]}
    samples = [(t, v) for t, v in tail.samples if v is not None]
    if samples:
        def at(t: float) -> float:
            return min(samples, key=lambda s: abs(s[0] - t))[1]

        out["bytes_per_round"] = int((at(starts[rounds]) - at(starts[2])) / (rounds - 2))
    return out


def _group_stop(proc: subprocess.Popen[bytes]) -> None:
    """End a process and everything it started in its session (ours: we created it)."""
    if proc.poll() is None:
        for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue
    try:  # children of a finished leader (flwr-serverapp, flwr-clientapp) may remain
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def run_flower(n: int, rounds: int, train_size: int, test_size: int, workdir: Path,
               progress: Echo, task: dict[str, Any] | None = None) -> dict[str, Any]:
    """One run on Flower's Deployment Engine; round starts and bytes."""
    ctx, reason = _namespaces(n + 1)
    ips = ctx["ips"] if ctx else ["127.0.0.1"] * (n + 1)
    wrap = ctx["wrappers"] if ctx else [[] for _ in range(n + 1)]
    base = free_base_port(n + 2)
    link = f"{ips[0]}:{base}"
    bin_dir = str(Path(sys.executable).parent)
    home = workdir / "flwr-home"
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(f'[superlink.bench]\naddress = "{link}"\ninsecure = true\n')
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}", "FLWR_HOME": str(home),
           "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    procs: list[subprocess.Popen[bytes]] = []
    logs: dict[str, Path] = {}

    def spawn(name: str, args: list[str], prefix: list[str]) -> None:
        logs[name] = workdir / f"{name}.log"
        with open(logs[name], "wb") as fh:
            procs.append(subprocess.Popen([*prefix, *args], env=env, stdout=fh,
                                          stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                          start_new_session=True))

    tail = LogTail({}, _FLOWER_TRAIN, sample=lambda: _veth(ctx))
    try:
        spawn("superlink", [f"{bin_dir}/flower-superlink", "--insecure", "--host", ips[0],
                            "--port", str(base), "--disable-runtime-dependency-installation"],
              wrap[0])
        for i in range(n):
            spawn(f"supernode{i}", [f"{bin_dir}/flower-supernode", "--insecure", "--superlink",
                                    link, "--port", str(base + 1 + i), "--node-config",
                                    f"partition-id={i} num-partitions={n}"], wrap[i + 1])
        tail.logs = {k: v for k, v in logs.items() if k.startswith("supernode")}
        tail.start()
        time.sleep(2.0)  # the superlink's HTTP server takes about a second to accept
        config = _run_config({"num-server-rounds": rounds, "train-size": train_size,
                              "test-size": test_size, "dataset": "synthetic", **(task or {})})
        started = time.monotonic()
        result = subprocess.run([f"{bin_dir}/flwr", "run", str(EXAMPLE), "bench", "--stream",
                                 "--run-config", config], env=env, capture_output=True,
                                timeout=RUN_TIMEOUT_S, stdin=subprocess.DEVNULL)
        (workdir / "flwr-run.log").write_bytes(result.stdout + result.stderr)
        if result.returncode != 0 or b"Strategy execution finished" not in \
                result.stdout + result.stderr:
            raise RaftflError(f"flwr run failed (exit {result.returncode}); see "
                              f"{workdir / 'flwr-run.log'}")
        total = time.monotonic() - started
    finally:
        tail.close()
        for proc in reversed(procs):
            _group_stop(proc)
        if ctx:
            netns_teardown(ctx)
    # The k-th train message a SuperNode receives is round k's; a round starts at the first.
    per_node: dict[str, list[float]] = {}
    for t, name, _ in tail.lines:
        per_node.setdefault(name, []).append(t)
    starts = {r: min(ts[r - 1] for ts in per_node.values() if len(ts) >= r)
              for r in range(1, rounds + 1) if any(len(ts) >= r for ts in per_node.values())}
    out = window(starts, rounds, tail)
    out.update(engine="flower", run_s=round(total, 1), bytes_note=reason)
    progress(f"  plain Flower: {out['round_s']:.2f} s per round"
             + (f", {out['bytes_per_round'] / 1e6:.2f} MB per round" if "bytes_per_round" in out
                else ""))
    return out


def _run_config(values: dict[str, Any]) -> str:
    """`--run-config`'s "key=value ..." (strings quoted, as Flower's parser wants them)."""
    return " ".join(f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in values.items())


def run_raftfl(n: int, rounds: int, train_size: int, test_size: int, workdir: Path,
               progress: Echo, secure: bool = False, task: dict[str, Any] | None = None
               ) -> dict[str, Any]:
    """One run on raftfl (n nodes, the built-in quick-start app); round starts and bytes.
    `secure`: every node with a bundle of a throwaway CA (--certs), etcd RBAC on; `task`:
    run config keys over the sizes (the run's submitter, node 0, passes them)."""
    ctx, reason = _namespaces(n)
    tail = LogTail({}, RAFTFL_TRAIN, sample=lambda: _veth(ctx))
    started = time.monotonic()
    try:
        with LocalCluster(n=n, rounds=rounds, cluster="overhead", train_size=train_size,
                          test_size=test_size, workdir=workdir, keep=True, secure=secure,
                          node_args={0: ["--run-config", _run_config(task)]} if task else {},
                          ips=ctx["ips"] if ctx else None,
                          wrappers=ctx["wrappers"] if ctx else None) as c:
            tail.logs = {x.name: x.log_path for x in c.nodes}
            tail.start()
            c.wait_event(lambda e: isinstance(e, RunCompleted), RUN_TIMEOUT_S, "completion")
    finally:
        tail.close()
        if ctx:
            netns_teardown(ctx)
    out = window(round_starts(tail), rounds, tail)
    engine = SECURED if secure else "raftfl"
    out.update(engine=engine, run_s=round(time.monotonic() - started, 1), bytes_note=reason)
    progress(f"  {engine}: {out['round_s']:.2f} s per round "
             f"({', '.join(f'{p:.2f}' for p in out['round_s_each'])})"
             + (f", {out['bytes_per_round'] / 1e6:.2f} MB per round" if "bytes_per_round" in out
                else ""))
    return out


SECURED = "raftfl-secure"


@dataclass(frozen=True)
class Comparison:
    """Which two engines a run alternates, and what the second may cost over the first."""

    base: str
    subject: str
    target: float
    label: str  # "<subject> / <base>" in words

    def run(self, engine: str, n: int, rounds: int, train_size: int, test_size: int,
            workdir: Path, progress: Echo, task: dict[str, Any] | None) -> dict[str, Any]:
        if engine == "flower":
            return run_flower(n, rounds, train_size, test_size, workdir, progress, task)
        return run_raftfl(n, rounds, train_size, test_size, workdir, progress,
                          secure=engine == SECURED, task=task)


VS_FLOWER = Comparison("flower", "raftfl", TARGET_RATIO, "raftfl / plain Flower")
VS_PLAIN_TEXT = Comparison("raftfl", SECURED, SECURE_TARGET_RATIO,
                           "raftfl mutual TLS + RBAC / plain text")


COLUMNS = [Column("rep", "rep"), Column("engine", "engine"), Column("round_s", "s/round", "{:.3f}"),
           Column("mb_per_round", "MB/round (veth)", "{:.2f}"),
           Column("copies_per_round", "model copies/round", "{:.1f}"), Column("run_s", "run s")]


def bench_overhead(nodes: int, rounds: int, reps: int, train_size: int, test_size: int,
                   out: Path, echo: Echo = print, progress: Echo | None = None,
                   secure: bool = False, demo_task: bool = False) -> tuple[int, dict[str, Any]]:
    """`secure`: raftfl with mutual TLS and RBAC against raftfl in plain text, instead of
    raftfl against plain Flower; `demo_task`: `raftfl demo`'s task (DEMO_TASK)."""
    progress = progress or echo
    cmp = VS_PLAIN_TEXT if secure else VS_FLOWER
    task = dict(DEMO_TASK) if demo_task else None
    if rounds < 3:
        raise RaftflError("--rounds must be at least 3 (round 1 is warm-up, and a period "
                          "needs two more round starts)")
    if not secure and shutil.which("flower-superlink", path=str(Path(sys.executable).parent)) \
            is None:
        raise RaftflError("flower-superlink is not installed next to this Python")
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    for rep in range(1, reps + 1):
        order = (cmp.base, cmp.subject) if rep % 2 else (cmp.subject, cmp.base)
        for engine in order:
            progress(f"[{len(rows) + 1}/{2 * reps}] {engine}, {nodes} nodes, {rounds} rounds, "
                     f"load {os.getloadavg()[0]:.1f}")
            with tempfile.TemporaryDirectory(prefix=f"raftfl-overhead-{engine}-") as tmp:
                try:
                    row = cmp.run(engine, nodes, rounds, train_size, test_size, Path(tmp),
                                  progress, task)
                except RaftflError:
                    kept = out / f"overhead-failed-{engine}-{rep}"
                    shutil.copytree(tmp, kept, dirs_exist_ok=True,
                                    ignore=shutil.ignore_patterns("member*", "*.npz", "etcd*"))
                    progress(f"  {engine} failed: logs kept in {kept}")
                    raise
            row["rep"] = rep
            if "bytes_per_round" in row:
                row["mb_per_round"] = round(row["bytes_per_round"] / 1e6, 3)
                row["copies_per_round"] = round(row["bytes_per_round"] / MODEL_BYTES, 2)
            rows.append(row)
    by = {e: [r for r in rows if r["engine"] == e] for e in (cmp.base, cmp.subject)}
    mean = {e: statistics.fmean(r["round_s"] for r in rs) for e, rs in by.items()}
    ratio = mean[cmp.subject] / mean[cmp.base]
    byte_rows = {e: [r["bytes_per_round"] for r in rs if "bytes_per_round" in r]
                 for e, rs in by.items()}
    bytes_ratio = (statistics.fmean(byte_rows[cmp.subject]) / statistics.fmean(byte_rows[cmp.base])
                   if all(byte_rows.values()) else None)
    write_csv(out / "overhead.csv", [{k: v for k, v in r.items() if k != "round_s_each"}
                                     for r in rows])
    plot_bars(out / "overhead.png", f"round wall time, {nodes} nodes (rounds 2..{rounds})",
              [f"{r['engine']} {r['rep']}" for r in rows], [r["round_s"] for r in rows],
              "run", "seconds per round")
    met = ratio <= cmp.target
    summary = {"bench": "overhead", "nodes": nodes, "rounds": rounds, "reps": reps,
               "train_size": train_size, "test_size": test_size, "task": task,
               "machine": machine(),
               "baseline": "raftfl in plain text (the same app, data, seed and rounds)"
                           if secure else
                           "Flower Deployment Engine (flower-superlink + flower-supernode, "
                           "flwr run); the Simulation Engine needs Ray, not installed",
               "compared": f"{cmp.subject} / {cmp.base}",
               "round_s": {e: round(v, 3) for e, v in mean.items()},
               "round_s_each": {e: [p for r in rs for p in r["round_s_each"]]
                                for e, rs in by.items()},
               "round_time_ratio": round(ratio, 3),
               "bytes_ratio": None if bytes_ratio is None else round(bytes_ratio, 3),
               "target": {"round_time_ratio_at_most": cmp.target, "met": met},
               "rows": rows, "files": [str(out / "overhead.csv"), str(out / "overhead.png")]}
    echo(table(rows, COLUMNS))
    echo(f"round wall time {cmp.label} = {ratio:.3f} ({mean[cmp.subject]:.2f} s vs "
         f"{mean[cmp.base]:.2f} s per round; target <= {cmp.target}: "
         f"{'met' if met else 'MISSED'})"
         + (f"; bytes {cmp.label} = {bytes_ratio:.2f}" if bytes_ratio else ""))
    echo(f"baseline: {summary['baseline']}; load average now {summary['machine']['load_avg_1m']}")
    for note in {r["bytes_note"] for r in rows if r.get("bytes_note")}:
        echo(note)
    echo(f"wrote {out / 'overhead.csv'} and {out / 'overhead.png'}")
    return 0, summary
