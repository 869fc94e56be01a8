"""`raftfl bench scale`: a federation of 10, 100, 1,000 edge workers on a 3-node cluster.

Why: edge workers (raftfl/node/edge.py) keep nothing in etcd and heartbeat only while they
train, so etcd's work per round and the aggregator's per-worker cost should stay flat as the
federation grows, and a failover should bring every worker back within seconds without a
stampede. Per size this runs the `examples/scale` app (1,000 float32 parameters, FedAvg over
every worker) on 3 real nodes plus `raftfl.lab.vworkers` processes hosting the workers (250
each: one GIL does not take a thousand), and measures:

* round overhead: a round's wall time (`round_started` -> `round_committed`) minus the
  ClientApps' own time in it (the slowest worker's), divided by the round's train results;
* the aggregator's memory: its node process's largest resident set during the timed rounds;
* etcd requests per round: `grpc_server_handled_total` summed over the members' /metrics,
  before and after the timed rounds (all methods, and the writes: Txn, Put, DeleteRange),
  less the background: the rate measured over an idle window before the workers start (the
  aggregator serving, its ServerApp waiting) times the timed window's length. The nodes'
  background reads run on timers, so counted whole, requests "per round" would grow with the
  round's length alone; both figures are reported (`etcd_all_requests_per_round`). It is an
  estimate: a node's HA cycle reads etcd when a round's event wakes it or its timer runs out,
  whichever comes first, so long rounds absorb some timer cycles and the estimate then runs
  low; the writes (`etcd_by_method_per_round`'s Txn) are round-driven almost alone;
* the aggregator's lease: its lowest `lease_remaining_s` (GET /node, every 100 ms) and
  whether its term held through the timed rounds (no unintended failover);
* failover: SIGKILL of the aggregator's process group and etcd member early in a round;
  per worker, when the server took its reply in the resumed round (the new term's first
  round), as the 90th and 100th percentile after the kill.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raftfl.core.errors import RaftflError
from raftfl.core.events import (
    AggregatorElected,
    FitResults,
    RoundCommitted,
    RoundStarted,
    RunCompleted,
)
from raftfl.core.invariants import check
from raftfl.lab.bench_recovery import _signal_group
from raftfl.lab.bench_report import Column, Echo, machine, percentile, table, write_csv
from raftfl.lab.faults import first_term
from raftfl.lab.localcluster import LocalCluster
from raftfl.node.runapp import bundled_app

NODES = 3
PARAMS = 1000
PER_PROCESS = 250  # virtual workers per vworkers process (each process has one GIL)
WARMUP = 1  # round 1 is not timed
TARGET_OVERHEAD_MS = 2.0  # per worker, at 1,000
TARGET_MEM_EXTRA_MB = 200
TARGET_FLAT = 0.10
TARGET_FAILOVER = {"p90": 3.0, "p100": 6.0}
IDLE_WINDOW_S = 5.0  # etcd's background requests are measured over this long, before the rounds
_HANDLED = re.compile(r'^grpc_server_handled_total\{(?P<labels>[^}]*)\} (?P<value>\S+)$', re.M)
_WRITES = ("Txn", "Put", "DeleteRange")


def app_dir() -> Path:
    app = bundled_app().parent / "scale"
    if not (app / "pyproject.toml").is_file():
        raise RaftflError(f"the scale example app is missing ({app})")
    return app


def etcd_requests(endpoints: list[str]) -> dict[str, float]:
    """gRPC requests handled so far, per method, summed over the members that answer."""
    out: dict[str, float] = {}
    for endpoint in endpoints:
        try:
            with urllib.request.urlopen(f"http://{endpoint}/metrics", timeout=5) as resp:
                text = resp.read().decode()
        except OSError:
            continue
        for m in _HANDLED.finditer(text):
            method = re.search(r'grpc_method="([^"]+)"', m["labels"])
            if method:
                out[method[1]] = out.get(method[1], 0.0) + float(m["value"])
    return out


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


@dataclass
class Watch:
    """Samples, every 100 ms, the aggregator's node API (term, lease left) and its RSS."""

    api: str
    pid: int
    lease_left: list[float] = field(default_factory=list)
    terms: set[int] = field(default_factory=set)
    rss: list[float] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> Watch:
        threading.Thread(target=self._run, name="scale-watch", daemon=True).start()
        return self

    def close(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            if (mb := rss_mb(self.pid)) is not None:
                self.rss.append(mb)
            try:
                with urllib.request.urlopen(self.api, timeout=1) as resp:
                    body = json.loads(resp.read())
                self.lease_left.append(float(body["lease_remaining_s"]))
                if body.get("term"):
                    self.terms.add(int(body["term"]))
            except (OSError, ValueError, KeyError, TypeError):
                continue


def read_replies(path: Path) -> list[dict[str, Any]]:
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, ValueError):
        return []


def _events(c: LocalCluster, kind: type, term: int | None = None) -> list[Any]:
    return [i.event for i in list(c.log)
            if isinstance(i.event, kind) and (term is None or i.event.term == term)]


def round_overheads(c: LocalCluster, term: int, rounds: range,
                    replies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per timed round: wall time, the slowest ClientApp's time, results, overhead."""
    out = []
    for rnd in rounds:
        started = [e for e in _events(c, RoundStarted, term) if e.round == rnd]
        committed = [e for e in _events(c, RoundCommitted, term) if e.round == rnd]
        fits = [e for e in _events(c, FitResults, term) if e.round == rnd]
        if not started or not committed:
            continue
        wall = committed[0].ts - started[-1].ts
        apps = [r["ended"] - r["began"] for r in replies
                if r["term"] == term and r["round"] == rnd and r["kind"] == "train"]
        results = fits[-1].results if fits else 0
        overhead = wall - max(apps, default=0.0)
        out.append({"round": rnd, "wall_s": round(wall, 3),
                    "clientapp_max_s": round(max(apps, default=0.0), 4),
                    "results": results, "overhead_s": round(overhead, 3),
                    "overhead_ms_per_worker": round(1000 * overhead / max(1, results), 3)})
    return out


def one_size(workers: int, rounds: int, out: Path, progress: Echo, seed: int = 0,
             ttl: int = 3) -> dict[str, Any]:
    """One federation of `workers` edge workers: its figures and whether it held."""
    timed_last = rounds - 3  # rounds 2..timed_last are timed; the kill lands in the next one
    if timed_last < WARMUP + 1:
        raise RaftflError("bench scale needs at least 5 rounds")
    row: dict[str, Any] = {"workers": workers, "rounds": rounds}
    app = app_dir()
    run_config = (f"num-server-rounds={rounds} params={PARAMS} "
                  f"min-nodes={workers + NODES - 1}")
    replies_path = out / f"scale-{workers}-replies.jsonl"
    with LocalCluster(n=NODES, rounds=rounds, cluster=f"scale{workers}", lease_ttl=ttl,
                      extra_args=["--app", str(app), "--run-config", run_config,
                                  "--round-timeout", "600"]) as c:
        procs: list[subprocess.Popen[bytes]] = []
        watch: Watch | None = None
        try:
            old = first_term(c)
            # The idle window: the aggregator serves run 1 (its ServerApp waits for the edge
            # workers, who are not started yet): the etcd requests the nodes make per second
            # whatever the rounds do (leases, HA cycles, probes, leadership checks).
            idle_before, i0 = etcd_requests(c.endpoints), time.monotonic()
            time.sleep(IDLE_WINDOW_S)
            idle_after, i1 = etcd_requests(c.endpoints), time.monotonic()
            idle_s = max(1e-3, i1 - i0)
            background = (sum(idle_after.values()) - sum(idle_before.values())) / idle_s
            background_writes = sum(idle_after.get(m, 0) - idle_before.get(m, 0)
                                    for m in _WRITES) / idle_s
            row["etcd_background_per_s"] = round(background, 1)
            row["etcd_background_writes_per_s"] = round(background_writes, 1)
            for first in range(0, workers, PER_PROCESS):
                vlog = open(out / f"scale-{workers}-vworkers-{first}.log", "wb")  # noqa: SIM115
                procs.append(subprocess.Popen(
                    [sys.executable, "-m", "raftfl.lab.vworkers", "--first", str(first),
                     "--workers", str(min(PER_PROCESS, workers - first)),
                     "--api", ",".join(n.api_url() for n in c.nodes), "--app", str(app),
                     "--run-config", run_config, "--out", f"{replies_path}.{first}",
                     "--seed", str(seed), "--ramp-s", str(min(5.0, 0.5 + workers / 500))],
                    stdout=vlog, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    start_new_session=True))
                vlog.close()
            agg = c.by_name(old.node)
            watch = Watch(agg.api_url("/node"), agg.pid).start()
            wait = 120 + workers * 0.3
            c.wait_event(lambda e: isinstance(e, RoundCommitted) and e.round == WARMUP,
                         wait, "the warm-up round")
            progress(f"  {workers} workers: warm-up round committed")
            before, t0 = etcd_requests(c.endpoints), time.time()
            watch.rss.clear()
            watch.lease_left.clear()
            for rnd in range(WARMUP + 1, timed_last + 1):
                ev = c.wait_event(lambda e, r=rnd: isinstance(e, RoundCommitted)
                                  and e.round == r, wait, f"round {rnd}'s commit")
                progress(f"  {workers} workers: round {rnd} committed ({ev.results} results)")
            after, t1 = etcd_requests(c.endpoints), time.time()
            timed = timed_last - WARMUP
            total = sum(after.values()) - sum(before.values())
            writes = sum(after.get(m, 0) - before.get(m, 0) for m in _WRITES)
            # Per round: what the rounds caused, the background rate over the timed window
            # taken off (rounds that last longer see more of it, not more work per round).
            row["etcd_all_requests_per_round"] = round(total / timed, 1)
            row["etcd_requests_per_round"] = round(
                (total - background * (t1 - t0)) / timed, 1)
            row["etcd_writes_per_round"] = round(
                (writes - background_writes * (t1 - t0)) / timed, 1)
            row["etcd_by_method_per_round"] = {
                m: round((after[m] - before.get(m, 0)) / timed, 1) for m in sorted(after)
                if after[m] - before.get(m, 0) > 0}
            row["etcd_requests_per_s"] = round(
                (sum(after.values()) - sum(before.values())) / max(1e-3, t1 - t0), 1)
            row["aggregator_rss_mb"] = round(max(watch.rss, default=0.0), 1)
            row["lease_left_min_s"] = min(watch.lease_left, default=None)
            row["keepalive_gap_max_s"] = (None if not watch.lease_left
                                          else round(ttl - min(watch.lease_left), 3))
            row["term_held"] = (watch.terms == {old.term} and not any(
                e.term > old.term for e in _events(c, AggregatorElected)))
            # The kill: early in the next round, once its instructions are out.
            c.wait_event(lambda e: isinstance(e, RoundStarted) and e.round == timed_last + 1,
                         wait, "the round to kill in")
            time.sleep(min(0.2, workers / 5000))  # small federations' rounds take ~0.1 s
            killed_at = _signal_group(c, old.node, signal.SIGKILL)
            watch.close()
            progress(f"  {workers} workers: SIGKILLed the aggregator {old.node} in round "
                     f"{timed_last + 1}")
            new_start = c.wait_event(lambda e: isinstance(e, RoundStarted) and e.term > old.term,
                                     wait, "the resumed round")
            elected = c.wait_event(lambda e: isinstance(e, AggregatorElected)
                                   and e.term > old.term, wait, "the successor's election")
            c.wait_event(lambda e: isinstance(e, RoundCommitted) and e.term > old.term, wait,
                         "the resumed round's commit")
            row["elected_s"] = round(elected.ts - killed_at, 3)
            row["resumed_round_started_s"] = round(new_start.ts - killed_at, 3)
            c.wait_event(lambda e: isinstance(e, RunCompleted), wait, "completion")
            time.sleep(2 * 0.5)  # the last replies' records are flushed every 0.5 s
            replies = [r for first in range(0, workers, PER_PROCESS)
                       for r in read_replies(Path(f"{replies_path}.{first}"))]
            rows = round_overheads(c, old.term, range(WARMUP + 1, timed_last + 1), replies)
            write_csv(out / f"scale-{workers}-rounds.csv", rows)
            per_worker = [r["overhead_ms_per_worker"] for r in rows]
            row["round_wall_s"] = round(sum(r["wall_s"] for r in rows) / max(1, len(rows)), 3)
            row["overhead_ms_per_worker"] = (round(sum(per_worker) / len(per_worker), 3)
                                             if per_worker else None)
            row["mem_limit_mb"] = round(3 * PARAMS * 4 * workers / 2**20 + TARGET_MEM_EXTRA_MB, 1)
            back = {}
            for r in replies:
                if (r["term"] == new_start.term and r["round"] == new_start.round
                        and r["kind"] == "train" and not r["refused"]
                        and r.get("sent") is not None):
                    back.setdefault(r["worker"], r["sent"] - killed_at)
            row["resumed_round"] = new_start.round
            row["workers_back"] = len(back)
            row["failover_p90_s"] = (round(percentile(list(back.values()), 90), 3)
                                     if back else None)
            row["failover_p100_s"] = (round(max(back.values()), 3)
                                      if len(back) == workers else None)
            # The first rounds may start before the last workers connect (the app waits for as
            # many as the resumed round will: all but the killed node's, and its rounds take
            # 0.1 s at 10 workers against the workers' 1 s ramp): from the first round all
            # workers answered, every round before the kill must have all of them.
            every = {rnd: {r["worker"] for r in replies if r["term"] == old.term
                           and r["round"] == rnd and r["kind"] == "train"
                           and not r["refused"]}
                     for rnd in range(WARMUP + 1, timed_last + 1)}
            full = [rnd for rnd, answered in every.items() if len(answered) == workers]
            row["every_worker_every_round"] = bool(full) and all(
                len(every[rnd]) == workers for rnd in every if rnd >= full[0])
            survivors = [n for n in c.nodes if n.name != old.node]
            c.wait_for(lambda: all(n.result() for n in survivors), 120, "every final model")
            verdict = check(c.state(), rounds, {k: v for k, v in c.final_models().items()
                                                if k != old.node})
            row["violations"] = "; ".join(verdict.violations)
            row["ok"] = (verdict.ok and row["every_worker_every_round"]
                         and len(back) == workers and row["term_held"])
        except RaftflError as exc:
            row.update(ok=False, violations=str(exc))
            progress(f"  {workers} workers FAILED: {exc}\n{c.tail_logs(8)}")
        finally:
            if watch is not None:
                watch.close()
            for vw in procs:
                if vw.poll() is None:
                    os.killpg(vw.pid, signal.SIGTERM)
            for vw in procs:
                try:
                    vw.wait(15)
                except subprocess.TimeoutExpired:
                    os.killpg(vw.pid, signal.SIGKILL)
                    vw.wait()
    return row


def targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Issue 21's targets, as far as these sizes judge them."""
    out: list[dict[str, Any]] = []
    big = max(rows, key=lambda r: r["workers"])
    if big["workers"] >= 1000:
        got = big.get("overhead_ms_per_worker")
        out.append({"what": f"round overhead per worker at {big['workers']}", "target": "<= 2 ms",
                    "measured": got, "met": got is not None and got <= TARGET_OVERHEAD_MS})
    for r in rows:
        got = r.get("aggregator_rss_mb")
        out.append({"what": f"aggregator memory at {r['workers']} workers (MB)",
                    "target": f"<= {r['mem_limit_mb']}" if r.get("mem_limit_mb") else "-",
                    "measured": got,
                    "met": got is not None and r.get("mem_limit_mb") is not None
                    and got <= r["mem_limit_mb"]})
        for q, limit in TARGET_FAILOVER.items():
            got = r.get(f"failover_{q}_s")
            out.append({"what": f"failover {q} at {r['workers']} workers (s)",
                        "target": f"<= {limit}", "measured": got,
                        "met": got is not None and got <= limit})
    base = min(rows, key=lambda r: r["workers"])
    for key in ("etcd_writes_per_round", "etcd_requests_per_round"):
        values = [r.get(key) for r in rows]
        if len(rows) > 1 and all(v is not None for v in values) and base.get(key):
            spread = max(abs(v - base[key]) / base[key] for v in values)
            out.append({"what": f"{key.replace('_', ' ')} flat from {base['workers']} to "
                                f"{big['workers']}", "target": "within 10%",
                        "measured": f"{100 * spread:.1f}%", "met": spread <= TARGET_FLAT})
    return out


def plot(path: Path, rows: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [r["workers"] for r in rows]

    def ys(key: str) -> list[float]:  # a figure not measured is left out, not drawn as 0
        return [float("nan") if r.get(key) is None else r[key] for r in rows]

    panels = [("overhead_ms_per_worker", "round overhead per worker (ms)", TARGET_OVERHEAD_MS),
              ("aggregator_rss_mb", "aggregator RSS (MB)", None),
              ("etcd_requests_per_round", "etcd requests per round", None),
              ("failover_p90_s", "SIGKILL -> 90% / 100% replied (s)", TARGET_FAILOVER["p90"])]
    fig, axes = plt.subplots(1, 4, figsize=(14, 3.5))
    for ax, (key, title, target) in zip(axes, panels, strict=True):
        ax.plot(xs, ys(key), marker="o", label=key)
        if key == "failover_p90_s":
            ax.plot(xs, ys("failover_p100_s"), marker="s",
                    label="p100")
            ax.axhline(TARGET_FAILOVER["p100"], color="orange", linestyle=":")
        if key == "etcd_requests_per_round":
            ax.plot(xs, ys("etcd_writes_per_round"), marker="s",
                    label="writes")
        if key == "aggregator_rss_mb":
            ax.plot(xs, ys("mem_limit_mb"), color="red",
                    linestyle="--", label="limit")
        if target is not None:
            ax.axhline(target, color="red", linestyle="--")
        ax.set_xscale("log")
        ax.set_xlabel("workers")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


COLUMNS = [Column("workers", "workers"), Column("ok", "ok"),
           Column("round_wall_s", "round s", "{:.2f}"),
           Column("overhead_ms_per_worker", "overhead ms/worker", "{:.2f}"),
           Column("aggregator_rss_mb", "agg RSS MB", "{:.0f}"),
           Column("mem_limit_mb", "RSS limit", "{:.0f}"),
           Column("etcd_requests_per_round", "etcd req/round", "{:.0f}"),
           Column("etcd_writes_per_round", "etcd writes/round", "{:.1f}"),
           Column("etcd_all_requests_per_round", "etcd req/round incl. bg", "{:.0f}"),
           Column("etcd_background_per_s", "etcd bg req/s", "{:.1f}"),
           Column("failover_p90_s", "failover p90 s", "{:.2f}"),
           Column("failover_p100_s", "failover p100 s", "{:.2f}"),
           Column("workers_back", "back"),
           Column("keepalive_gap_max_s", "keepalive gap s", "{:.2f}"),
           Column("term_held", "term held")]


def bench_scale(sizes: list[int], rounds: int, out: Path, echo: Echo = print,
                progress: Echo | None = None, seed: int = 0) -> tuple[int, dict[str, Any]]:
    progress = progress or echo
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    started = time.monotonic()
    for i, workers in enumerate(sizes, 1):
        load = os.getloadavg()[0]
        progress(f"[{i}/{len(sizes)}] {workers} workers, {rounds} rounds (load {load:.1f})")
        row = one_size(workers, rounds, out, progress, seed)
        row["load_avg_1m"] = round(load, 2)
        rows.append(row)
        progress(f"[{i}/{len(sizes)}] {workers} workers: "
                 + ("ok" if row.get("ok") else f"FAILED ({row.get('violations')})")
                 + f"; {time.monotonic() - started:.0f} s")
    write_csv(out / "scale.csv", rows)
    plot(out / "scale.png", rows)
    judged = targets(rows)
    result = {"bench": "scale", "sizes": sizes, "rounds": rounds, "machine": machine(),
              "rows": rows, "targets": judged,
              "files": [str(out / "scale.csv"), str(out / "scale.png")]}
    echo(table(rows, COLUMNS))
    for t in judged:
        echo(f"{t['what']}: {t['measured']} (target {t['target']}: "
             f"{'met' if t['met'] else 'MISSED'})")
    echo("etcd req/round: the requests the rounds caused (all, less the background rate "
         "measured idle before the rounds, times the rounds' length)")
    echo(f"{NODES} nodes + N edge workers in vworkers processes of {PER_PROCESS}; load "
         f"average now "
         f"{result['machine']['load_avg_1m']}")
    echo(f"wrote {', '.join(result['files'])}")
    return (0 if all(r.get("ok") for r in rows) else 1), result
