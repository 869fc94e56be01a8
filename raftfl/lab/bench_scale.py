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
* etcd requests per round, exactly: each node counts every etcd request it sends by the
  part of the node that asked (`raftfl_etcd_requests_total{origin, kind}` on its /metrics,
  raftfl/net/origin.py). The `run` origin is the rounds' own work (the ServerApp and its
  round loop, the full nodes' ClientApp side, model replication); its requests over the
  timed rounds, divided by them, are the figure judged flat, and so are the requests of
  the HA cycles that a change in etcd woke (`wake`: each round's events wake every node);
  the rest (the HA cycles the timer starts, leases, probes, watches, the API) is reported
  beside it per second (`etcd_background_per_s`,
  `etcd_background_by_origin_per_s`), and the members' `grpc_server_handled_total` over
  the same window as a cross-check (`etcd_all_requests_per_round`: everything etcd served,
  this bench's own log watch included). Both edges of the window are read on a round's
  start, from every node and member at once, so they fall in the same phase of a round (a
  request of a round's start can still land on either side of an edge: more `--rounds`
  shrink that);
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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.client import HTTPException
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
from raftfl.lab.procs import stop_groups
from raftfl.node.runapp import bundled_app

NODES = 3
PARAMS = 1000
PER_PROCESS = 250  # virtual workers per vworkers process (each process has one GIL)
WARMUP = 1  # round 1 is not timed
TARGET_OVERHEAD_MS = 2.0  # per worker, at 1,000
TARGET_MEM_EXTRA_MB = 200
TARGET_FLAT = 0.10
TARGET_FAILOVER = {"p90": 3.0, "p100": 6.0}
EDGE_POLL_S = 0.005  # how often the log is checked for the round start a window edge waits for
_HANDLED = re.compile(r'^grpc_server_handled_total\{(?P<labels>[^}]*)\} (?P<value>\S+)$', re.M)
_COUNTED = re.compile(r'^raftfl_etcd_requests_total\{(?P<labels>[^}]*)\} (?P<value>\S+)$', re.M)
_LABEL = re.compile(r'(\w+)="([^"]*)"')


def app_dir() -> Path:
    app = bundled_app().parent / "scale"
    if not (app / "pyproject.toml").is_file():
        raise RaftflError(f"the scale example app is missing ({app})")
    return app


def handled(text: str) -> dict[str, float]:
    """gRPC requests an etcd member handled so far, per method, from its /metrics text."""
    out: dict[str, float] = {}
    for m in _HANDLED.finditer(text):
        method = re.search(r'grpc_method="([^"]+)"', m["labels"])
        if method:
            out[method[1]] = out.get(method[1], 0.0) + float(m["value"])
    return out


def counted(text: str) -> dict[tuple[str, str], float] | None:
    """(origin, kind) -> etcd requests a node sent so far, from its /metrics text (None:
    the node does not count them)."""
    out: dict[tuple[str, str], float] = {}
    found = False
    for m in _COUNTED.finditer(text):
        labels = dict(_LABEL.findall(m["labels"]))
        key = (labels.get("origin", "?"), labels.get("kind", "?"))
        out[key] = out.get(key, 0.0) + float(m["value"])
        found = True
    return out if found or "raftfl_etcd_requests" in text else None


@dataclass(frozen=True)
class Counts:
    """Every node's and member's etcd counters, read at once."""

    at: float
    nodes: dict[tuple[str, str], float] | None  # summed over the nodes; None: one did not tell
    members: dict[str, float]  # gRPC method -> requests handled, summed over the members
    run_by_node: dict[str, float] = field(default_factory=dict)  # node -> its `run` requests


def _metrics(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return str(resp.read().decode())
    except OSError:
        return None


def read_counts(c: LocalCluster) -> Counts:
    """The nodes' request counters (their API's /metrics) and the members' gRPC counters,
    all asked at the same moment."""
    nodes = [n.api_url("/metrics") for n in c.nodes]
    members = [f"http://{ep}/metrics" for ep in c.endpoints]
    at = time.time()
    with ThreadPoolExecutor(len(nodes) + len(members)) as pool:
        texts = list(pool.map(_metrics, nodes + members))
    total: dict[tuple[str, str], float] | None = {}
    run_by_node: dict[str, float] = {}
    for node, text in zip(c.nodes, texts[:len(nodes)], strict=True):
        got = counted(text) if text is not None else None
        if got is None or total is None:
            total = None
            continue
        for key, value in got.items():
            total[key] = total.get(key, 0.0) + value
        run_by_node[node.name] = sum(v for (who, _), v in got.items() if who == "run")
    methods: dict[str, float] = {}
    for text in texts[len(nodes):]:
        for method, value in handled(text or "").items():
            methods[method] = methods.get(method, 0.0) + value
    return Counts(at, total, methods, run_by_node)


def etcd_figures(before: Counts, after: Counts, rounds: int) -> dict[str, Any]:
    """Per round and per second over the window between two readings `rounds` rounds apart:
    the `run` origin's requests (exact, the rounds' own), the rest, and the members' view."""
    seconds = max(1e-3, after.at - before.at)
    members = {m: after.members[m] - before.members.get(m, 0.0) for m in sorted(after.members)
               if after.members[m] - before.members.get(m, 0.0) > 0}
    out: dict[str, Any] = {
        "etcd_window_rounds": rounds, "etcd_window_s": round(seconds, 3),
        "etcd_all_requests_per_round": round(sum(members.values()) / rounds, 1),
        "etcd_by_method_per_round": {m: round(v / rounds, 1) for m, v in members.items()},
        "etcd_requests_per_s": round(sum(members.values()) / seconds, 1)}
    if before.nodes is None or after.nodes is None:
        return {**out, "etcd_requests_per_round": None, "etcd_writes_per_round": None,
                "etcd_woken_cycles_per_round": None, "etcd_background_per_s": None}
    delta = {k: v - before.nodes.get(k, 0.0) for k, v in after.nodes.items()}
    run = {kind: v for (who, kind), v in delta.items() if who == "run" and v > 0}
    rest: dict[str, float] = {}
    for (who, _), v in delta.items():
        if who != "run" and v > 0:
            rest[who] = rest.get(who, 0.0) + v
    woken = rest.pop("wake", 0.0)  # HA cycles a change in etcd woke: a round's events' too
    return {**out,
            "etcd_requests_per_round": round(sum(run.values()) / rounds, 2),
            "etcd_woken_cycles_per_round": round(woken / rounds, 2),
            "etcd_writes_per_round": round(run.get("write", 0.0) / rounds, 2),
            "etcd_run_by_kind_per_round": {k: round(v / rounds, 2) for k, v in sorted(run.items())},
            "etcd_run_by_node_per_round": {
                node: round((v - before.run_by_node.get(node, 0.0)) / rounds, 2)
                for node, v in sorted(after.run_by_node.items())},
            "etcd_background_per_s": round(sum(rest.values()) / seconds, 1),
            "etcd_background_by_origin_per_s": {k: round(v / seconds, 1)
                                                for k, v in sorted(rest.items())},
            "etcd_counted_per_s": round(sum(v for v in delta.values() if v > 0) / seconds, 1)}


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
            except (OSError, HTTPException, ValueError, KeyError, TypeError):
                continue  # e.g. the node killed mid-answer


def read_replies(path: Path) -> list[dict[str, Any]]:
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, ValueError):
        return []


def _events(c: LocalCluster, kind: type, term: int | None = None) -> list[Any]:
    return [i.event for i in list(c.log)
            if isinstance(i.event, kind) and (term is None or i.event.term == term)]


def round_start(c: LocalCluster, rnd: int, timeout: float) -> RoundStarted:
    """Round `rnd`'s start, seen within EDGE_POLL_S of the bench's log watch delivering it."""
    def find() -> RoundStarted | None:
        return next((e for e in reversed(_events(c, RoundStarted)) if e.round == rnd), None)

    c.wait_for(lambda: find() is not None, timeout, f"round {rnd}'s start", interval=EDGE_POLL_S)
    found = find()
    assert found is not None
    return found


def round_to_kill(c: LocalCluster, earliest: int, rounds: int) -> int:
    """The round to kill the aggregator in: `earliest`, or the one after the newest started
    round if that committed already (reading the counters took longer than a short round)."""
    started = max((e.round for e in _events(c, RoundStarted)), default=earliest)
    rnd = max(earliest, started)
    if any(e.round == rnd for e in _events(c, RoundCommitted)):
        rnd += 1
    if rnd > rounds:
        raise RaftflError(f"the run's {rounds} rounds ended before the kill: run more rounds")
    return rnd


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
            # The window: from round WARMUP+1's start to round timed_last+1's (the timed
            # rounds), both edges read as the round starts, in the same phase of a round.
            round_start(c, WARMUP + 1, wait)
            before = read_counts(c)
            progress(f"  {workers} workers: warm-up round committed")
            watch.rss.clear()
            watch.lease_left.clear()
            for rnd in range(WARMUP + 1, timed_last + 1):
                ev = c.wait_event(lambda e, r=rnd: isinstance(e, RoundCommitted)
                                  and e.round == r, wait, f"round {rnd}'s commit")
                progress(f"  {workers} workers: round {rnd} committed ({ev.results} results)")
            round_start(c, timed_last + 1, wait)
            after = read_counts(c)
            row.update(etcd_figures(before, after, timed_last - WARMUP))
            if after.nodes is None:
                progress(f"  {workers} workers: a node's /metrics has no "
                         "raftfl_etcd_requests_total: etcd requests per round not measured")
            row["aggregator_rss_mb"] = round(max(watch.rss, default=0.0), 1)
            row["lease_left_min_s"] = min(watch.lease_left, default=None)
            row["keepalive_gap_max_s"] = (None if not watch.lease_left
                                          else round(ttl - min(watch.lease_left), 3))
            row["term_held"] = (watch.terms == {old.term} and not any(
                e.term > old.term for e in _events(c, AggregatorElected)))
            # The kill: early in a round, once its instructions are out; in the next one if
            # the round the window ended on committed while the counters were read.
            kill_round = round_to_kill(c, timed_last + 1, rounds)
            round_start(c, kill_round, wait)
            time.sleep(min(0.2, workers / 5000))  # small federations' rounds take ~0.1 s
            killed_at = _signal_group(c, old.node, signal.SIGKILL)
            watch.close()
            progress(f"  {workers} workers: SIGKILLed the aggregator {old.node} in round "
                     f"{kill_round}")
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
            stop_groups(procs)
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
    for key in ("etcd_writes_per_round", "etcd_requests_per_round",
                "etcd_woken_cycles_per_round"):
        values = [r.get(key) for r in rows]
        if len(rows) < 2:
            continue
        what = f"{key.replace('_', ' ')} flat from {base['workers']} to {big['workers']}"
        if any(v is None for v in values) or not base.get(key):  # a miss, not a silent pass
            out.append({"what": what, "target": "within 10%", "measured": "not measured",
                        "met": False})
            continue
        spread = max(abs(v - base[key]) / base[key] for v in values)
        out.append({"what": what, "target": "within 10%", "measured": f"{100 * spread:.1f}%",
                    "met": spread <= TARGET_FLAT})
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
           Column("etcd_requests_per_round", "etcd req/round", "{:.1f}"),
           Column("etcd_writes_per_round", "etcd writes/round", "{:.1f}"),
           Column("etcd_woken_cycles_per_round", "woken cycles req/round", "{:.1f}"),
           Column("etcd_background_per_s", "rest req/s", "{:.1f}"),
           Column("etcd_all_requests_per_round", "members req/round", "{:.0f}"),
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
    echo("etcd req/round (and writes): the nodes' own count of the requests the rounds made "
         "(origin `run`: ServerApp, round loop, ClientApp side, model replication), per timed "
         "round; woken cycles req/round: the HA cycles a change in etcd woke (a round's "
         "events wake every node once or more), per timed round; rest req/s: every other "
         "origin (timer cycles, leases, probes, watches, API) per second of the window; "
         "members req/round: every request the etcd members handled in "
         "the window (this bench's log watch included), per round, as a cross-check")
    echo(f"{NODES} nodes + N edge workers in vworkers processes of {PER_PROCESS}; load "
         f"average now "
         f"{result['machine']['load_avg_1m']}")
    echo(f"wrote {', '.join(result['files'])}")
    return (0 if all(r.get("ok") for r in rows) else 1), result
