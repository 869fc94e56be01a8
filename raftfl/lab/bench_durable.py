"""`raftfl bench durable`: what each way of resuming a ServerApp costs (README, "Bring your
own Flower app"), measured in-process on real flwr strategies and raftfl's own encodings.

(b) state snapshot, what `strategy.start` apps use: at each commit the strategy's state is
    captured (flower/durable.py) and stored beside the model; a successor restores one blob.
(a) durable execution, what apps with their own loop use: every grid call's replies are
    stored (flower/journal.py); a successor re-runs the ServerApp, which decodes and
    re-aggregates every recorded round before it reaches the live edge.

Per model size, with FedAdam over `workers` replies a round: bytes written per round, the
time to write them, and what a failover after `rounds` rounds costs each design.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAdam

from raftfl.flower import durable
from raftfl.flower.identity import adopt_server_identity
from raftfl.flower.journal import decode_replies, encode_replies
from raftfl.lab.bench import plot_bars
from raftfl.lab.bench_report import Column, Echo, machine, table, write_csv

COLUMNS = [Column("design", "design"), Column("params", "params", "{:,}"),
           Column("bytes_per_round", "stored/round (B)", "{:,}"),
           Column("write_ms", "write ms/round", "{:.1f}"),
           Column("failover_ms", "failover ms", "{:.1f}")]


def _replies(arrays: ArrayRecord, workers: int, rnd: int) -> list[Message]:
    rng = np.random.default_rng(rnd)
    out = []
    for node in range(workers):
        update = ArrayRecord([a + rng.normal(0, 0.01, a.shape).astype(a.dtype)
                              for a in arrays.to_numpy_ndarrays()])
        content = RecordDict({"arrays": update, "metrics": MetricRecord({"num-examples": 100})})
        msg = Message(content, dst_node_id=node + 2, message_type="train")
        out.append(Message(content, reply_to=msg))
    return out


def _strategy() -> FedAdam:
    return FedAdam(fraction_evaluate=0.0)


def _drive(strategy: FedAdam, arrays: ArrayRecord, rnd: int, workers: int,
           replies: list[Message] | None = None) -> ArrayRecord:
    list(strategy.configure_train(rnd, arrays, ConfigRecord(), _Grid(workers)))
    new, _ = strategy.aggregate_train(rnd, replies or _replies(arrays, workers, rnd))
    assert new is not None
    return new


class _Grid:
    """Just enough Grid for `configure_train`: the node ids."""

    def __init__(self, workers: int):
        self.workers = workers

    def get_node_ids(self) -> list[int]:
        return list(range(2, self.workers + 2))

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int,
                       group_id: str, ttl: float | None = None) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)


def measure(params: int, workers: int, rounds: int) -> list[dict[str, Any]]:
    adopt_server_identity(1)
    arrays = ArrayRecord([np.zeros(params, dtype=np.float32)])
    strategy, state = _strategy(), RecordDict()
    journal: list[bytes] = []
    capture_s, journal_s, blob = 0.0, 0.0, b""
    for rnd in range(1, rounds + 1):
        replies = _replies(arrays, workers, rnd)
        arrays = _drive(strategy, arrays, rnd, workers, replies)
        t0 = time.perf_counter()
        blob = durable.capture(strategy, state).blob
        capture_s += time.perf_counter() - t0
        t0 = time.perf_counter()
        journal.append(encode_replies(replies))
        journal_s += time.perf_counter() - t0
    t0 = time.perf_counter()  # (b): one blob into a fresh strategy
    durable.restore(blob, _strategy(), RecordDict())
    restore_s = time.perf_counter() - t0
    t0 = time.perf_counter()  # (a): every recorded round decoded and aggregated again
    again, fresh = ArrayRecord([np.zeros(params, dtype=np.float32)]), _strategy()
    for rnd, answer in enumerate(journal, start=1):
        again = _drive(fresh, again, rnd, workers, decode_replies(answer))
    replay_s = time.perf_counter() - t0
    return [
        {"design": "(b) state snapshot", "params": params, "bytes_per_round": len(blob),
         "write_ms": 1000 * capture_s / rounds, "failover_ms": 1000 * restore_s},
        {"design": "(a) durable execution", "params": params,
         "bytes_per_round": sum(map(len, journal)) // rounds,
         "write_ms": 1000 * journal_s / rounds, "failover_ms": 1000 * replay_s},
    ]


def bench_durable(sizes: list[int], workers: int, rounds: int, out: Path, echo: Echo,
                  progress: Echo) -> tuple[int, dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for params in sizes:
        progress(f"durable: {params:,} parameters, {workers} workers, {rounds} rounds ...")
        rows += measure(params, workers, rounds)
    write_csv(out / "durable.csv", rows)
    plot_bars(out / "durable.png", f"failover cost after {rounds} rounds (FedAdam, {workers} "
              "workers)", [f"{r['design'][:3]} {r['params']:,}" for r in rows],
              [r["failover_ms"] for r in rows], "design, parameters", "ms")
    echo(table(rows, COLUMNS))
    echo(f"(failover: restoring the snapshot (b), or re-running {rounds} recorded rounds (a); "
         f"CSV and PNG in {out})")
    return 0, {"workers": workers, "rounds": rounds, "rows": rows, "machine": machine()}
