"""Benchmarks: etcd's database size over a long run with and without retention, and what the
other benchmarks share (the model's size, a bar plot, a member health check). Recovery,
traffic, overhead and replay have modules of their own (`bench_*.py`).

Figures are printed and written as CSV and PNG; nothing here asserts a speed.
"""

from __future__ import annotations

import csv
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raftfl.core.events import (
    AggregatorElected,
    CheckpointSaved,
    FitResults,
    RoundCommitted,
    RoundStarted,
    RunStarted,
)
from raftfl.core.keys import Keys
from raftfl.core.latency import Sample
from raftfl.core.member_record import MemberInfo
from raftfl.etcd import checkpoint
from raftfl.etcd.eventlog import EventLog
from raftfl.etcd.member import find_etcd, loopback_specs, running_members
from raftfl.etcd.retention import Retention
from raftfl.etcd.store import Store
from raftfl.lab.localcluster import free_base_port
from raftfl.node.recorder import KEEP_CHECKPOINTS
from raftfl.node.session import SAMPLES_KEPT

MODEL_BYTES = 248_024  # 62,006 float32 parameters


def plot_bars(path: Path, title: str, xs: list[Any], ys: list[float], xlabel: str, ylabel: str,
          hline: float | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar([str(x) for x in xs], ys)
    ax.tick_params(axis="x", labelrotation=30 if len(xs) > 6 else 0, labelsize=7)
    if hline is not None:
        ax.axhline(hline, color="red", linestyle="--", label=f"target {hline:.1f}")
        ax.legend()
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# -- retention ------------------------------------------------------------------------------
NODES = 3
SAMPLES_PER_ROUND = 2  # per node: rounds take 0.7-1.6 s here, samples come once a second


@dataclass
class SizeRow:
    variant: str
    round: int
    db_size_max: int  # bytes, the largest member file
    db_in_use_max: int
    compacted_to: int | None
    defragmented: int


def serves(endpoint: str) -> bool:
    """True when the member at `endpoint` answers a read (for `running_members`)."""
    store = Store([endpoint], timeout=1.0, retry_for=0.5)
    try:
        store.get("/raftfl-bench/health")
        return True
    finally:
        store.close()


def measure_sizes(rounds: int, every: int | None, model_bytes: int, workdir: Path,
                  progress: Any = None) -> tuple[list[SizeRow], list[int]]:
    """Write `rounds` rounds' worth of raftfl's etcd traffic (events, a fresh checkpoint with
    pruning, latency samples, member records; no training) through the real store on a real
    3-member cluster, with `Retention` every `every` rounds (None: without). Returns the db
    size after each round and the rounds the event log still replays as committed."""
    specs = loopback_specs(workdir, "bench", NODES, free_base_port(2 * NODES))
    rows: list[SizeRow] = []
    variant = f"retention every {every} rounds" if every else "no retention"
    with running_members(specs, find_etcd(), serves) as members:
        endpoints = [m.spec.client_endpoint for m in members]
        store = Store(endpoints)
        try:
            keys = Keys("bench").run(1)
            log = EventLog(store, keys)
            keeper = Retention(store, every) if every else None
            term = store.revision()
            node = specs[0].name
            log.append(AggregatorElected(node=node, term=term, flower_address="127.0.0.1:1", rank=0,
                                         score=0.0, revision=term, ranking=[]))
            log.append(RunStarted(node=node, term=term, rounds=rounds, initial_model="0" * 64))
            base, kept, seqs = "0" * 64, [], dict.fromkeys((s.name for s in specs), 0)
            for rnd in range(1, rounds + 1):
                log.append(RoundStarted(node=node, term=term, round=rnd, base_model=base, clients=2))
                log.append(FitResults(node=node, term=term, round=rnd, results=2, failures=0,
                                      num_examples=5000))
                manifest = checkpoint.save(store, keys, os.urandom(model_bytes), rnd, None)
                log.append(CheckpointSaved(node=node, term=term, round=rnd, sha256=manifest.sha256,
                                           size=manifest.size, chunks=manifest.chunks))
                log.append(RoundCommitted(node=node, term=term, round=rnd, model_sha256=manifest.sha256,
                                          base_model=base, loss=1.0, accuracy=0.5, results=2))
                base, kept = manifest.sha256, [*kept, manifest.sha256][-KEEP_CHECKPOINTS:]
                checkpoint.prune(store, keys, set(kept), None)
                for spec in specs:
                    for _ in range(SAMPLES_PER_ROUND):
                        seqs[spec.name] += 1
                        seq = seqs[spec.name]
                        sample = Sample(spec.name, seq, time.time(), {p.name: 0.2 for p in specs
                                                                      if p is not spec}, "tcp")
                        store.put(keys.latency_sample(spec.name, seq), sample.to_json())
                        if seq > SAMPLES_KEPT:
                            store.delete(keys.latency_sample(spec.name, seq - SAMPLES_KEPT))
                    store.put(keys.member(spec.name), MemberInfo(
                        node=spec.name, ip=spec.ip, client_port=spec.client_port,
                        flower_address="127.0.0.1:1", cpu_free=0.5, mem_free_mb=1000.0).to_json())
                report = keeper.after_round(rnd) if keeper else None
                statuses = [Store.member_status(ep) for ep in endpoints]
                rows.append(SizeRow(variant, rnd, max(st.db_size for st in statuses),
                                    max(st.db_size_in_use or 0 for st in statuses),
                                    report.compacted_to if report else None,
                                    len(report.defragmented) if report else 0))
                if progress and (rnd % 50 == 0 or rnd == rounds):
                    progress(f"  {variant}: round {rnd}/{rounds}, db {rows[-1].db_size_max / 2**20:.1f} MiB")
            state, _ = log.state()
            return rows, list(state.committed_rounds)
        finally:
            store.close()


def _slope_mib_per_100(rows: list[SizeRow]) -> float:
    """Least-squares growth of the db size over the second half of the run."""
    half = rows[len(rows) // 2:]
    if len(half) < 2:
        return 0.0
    xs = [r.round for r in half]
    ys = [r.db_size_max / 2**20 for r in half]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return 100 * sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den if den else 0.0


def retention(rounds: int, every: int, model_bytes: int, baseline: bool, out: Path,
              echo: Any = print) -> int:
    """etcd db size per round, with retention (and, with `baseline`, without it)."""
    out.mkdir(parents=True, exist_ok=True)
    series: dict[str, list[SizeRow]] = {}
    ok = True
    for variant_every in ([every, None] if baseline else [every]):
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="raftfl-bench-") as tmp:
            rows, committed = measure_sizes(rounds, variant_every, model_bytes, Path(tmp), echo)
        name = rows[0].variant
        series[name] = rows
        intact = committed == list(range(1, rounds + 1))
        ok = ok and intact
        sizes = [r.db_size_max for r in rows]
        echo(f"{name}: db size after round {rounds}: {sizes[-1] / 2**20:.1f} MiB, largest "
             f"{max(sizes) / 2**20:.1f} MiB; second-half growth {_slope_mib_per_100(rows):+.2f} "
             f"MiB per 100 rounds; event log {'intact' if intact else 'DAMAGED'} "
             f"({time.monotonic() - started:.0f} s)")
    with open(out / "retention.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["variant", "round", "db_size_max", "db_in_use_max", "compacted_to", "defragmented"])
        for rows in series.values():
            w.writerows([r.variant, r.round, r.db_size_max, r.db_in_use_max, r.compacted_to,
                         r.defragmented] for r in rows)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, rows in series.items():
        ax.plot([r.round for r in rows], [r.db_size_max / 2**20 for r in rows], label=name)
    ax.set_xlabel("round")
    ax.set_ylabel("largest member db file (MiB)")
    ax.set_title(f"etcd db size, {NODES} members, {model_bytes / 1e3:.0f} kB model")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "retention.png", dpi=100)
    plt.close(fig)
    echo(f"wrote {out / 'retention.csv'} and {out / 'retention.png'}")
    return 0 if ok else 1
