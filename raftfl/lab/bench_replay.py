"""`raftfl bench replay`: the time to rebuild the FL state from N events, and what one HA
cycle costs once it is built.

Why: a federation that outlives its runs keeps appending events, and every node asks for
the state every HA cycle. A node that (re)starts rebuilds once (read, decode, fold every
event); after that, `EventLog.current()` reads and folds only what is new. This measures
both on a real 3-member etcd cluster, with a log shaped like real training (an election
every 500 rounds; per round `round_started`, `fit_results`, `checkpoint_saved` and a
`round_committed` carrying the metrics the recorder writes for three clients):

* rebuild: decode + `replay` of N stored values (pure), and the first `current()` of a
  fresh `EventLog` (etcd range read + decode + fold);
* a cycle: `current()` with nothing new, and with one new event (the append not timed);
  next to it, the fold of the whole log that each cycle cost before the fold was kept.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from raftfl.core.events import (
    AggregatorElected,
    CheckpointSaved,
    Event,
    FitResults,
    RoundCommitted,
    RoundStarted,
    RunStarted,
    decode,
)
from raftfl.core.keys import Keys
from raftfl.core.replay import Logged, replay
from raftfl.etcd.eventlog import EventLog
from raftfl.etcd.member import find_etcd, loopback_specs, running_members
from raftfl.etcd.store import Store
from raftfl.lab.bench import plot_bars, serves
from raftfl.lab.bench_report import Column, Echo, machine, table, write_csv
from raftfl.lab.localcluster import free_base_port

TARGET_REBUILD_S = 1.0
CYCLES = 30
TXN_OPS = 100  # etcd allows 128 operations per transaction
ROUNDS_PER_TERM = 500
NODES = ("10.0.0.1:2380", "10.0.0.2:2380", "10.0.0.3:2380")

COLUMNS = [
    Column("events", "events"),
    Column("mb", "MB", "{:.1f}"),
    Column("decode_s", "decode s", "{:.3f}"),
    Column("fold_s", "replay s", "{:.3f}"),
    Column("rebuild_s", "decode+replay s", "{:.3f}"),
    Column("etcd_rebuild_s", "first current() s", "{:.3f}"),
    Column("cycle_idle_ms", "cycle, none new ms", "{:.2f}"),
    Column("cycle_one_ms", "cycle, 1 new ms", "{:.2f}"),
    Column("full_fold_ms", "old cycle (full fold) ms", "{:.1f}"),
]


def synthetic_log(n: int, t0: float = 1.7e9) -> list[Event]:
    """`n` events of a long, healthy federation (see the module docstring)."""
    out: list[Event] = []
    term, rnd, base = 0, 0, "0" * 64
    while len(out) < n:
        if rnd % ROUNDS_PER_TERM == 0:
            # A term is the revision its role key was created at: never later than the
            # revision its events are created at (here, TXN_OPS events per revision).
            term = len(out) // TXN_OPS + 1
            node = NODES[(rnd // ROUNDS_PER_TERM) % len(NODES)]
            out.append(AggregatorElected(node=node, term=term, flower_address="10.0.0.1:9092",
                                         rank=0, score=1.0, revision=term, ts=t0,
                                         ranking=[{"node": x, "score": 1.0} for x in NODES]))
            if rnd == 0:
                out.append(RunStarted(node=node, term=term, rounds=10**6, initial_model=base,
                                      ts=t0))
        rnd += 1
        sha = f"{rnd:064x}"
        clients = [{"node_id": str(1000 + i), "train_loss": 1.0, "num-examples": 1666,
                    "eval_loss": 1.0, "eval_acc": 0.5} for i in range(len(NODES))]
        metrics = {"train": {"train_loss": 1.0, "num-examples": 5000},
                   "evaluate_clientapp": {"eval_loss": 1.0, "eval_acc": 0.5},
                   "evaluate_serverapp": {"loss": 1.0, "accuracy": 0.5}, "clients": clients}
        out += [RoundStarted(node=node, term=term, round=rnd, base_model=base, clients=3, ts=t0),
                FitResults(node=node, term=term, round=rnd, results=3, failures=0,
                           num_examples=5000, ts=t0),
                CheckpointSaved(node=node, term=term, round=rnd, sha256=sha, size=248_024,
                                chunks=1, ts=t0),
                RoundCommitted(node=node, term=term, round=rnd, model_sha256=sha, base_model=base,
                               loss=1.0, accuracy=0.5, results=3, metrics=metrics, ts=t0)]
        base = sha
    return out[:n]


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def _load(store: Store, keys: Keys, values: list[str], progress: Echo) -> None:
    """Write the log with multi-put transactions (the nodes append one by one; a bench
    only needs the keys there)."""
    tx = store.client.transactions
    for start in range(0, len(values), TXN_OPS):
        ops = [tx.put(keys.event(start + i + 1), v)
               for i, v in enumerate(values[start:start + TXN_OPS])]
        store.call(lambda ops=ops: store.client.transaction(compare=[], success=ops, failure=[]))
        done = start + len(ops)
        if done % 20_000 < TXN_OPS or done == len(values):
            progress(f"  loaded {done}/{len(values)} events into etcd")


def measure(n: int, store: Store, progress: Echo) -> dict[str, Any]:
    """One row: the rebuild and cycle costs for a log of `n` events."""
    events = synthetic_log(n)
    values = [ev.to_json() for ev in events]
    keys = Keys(f"replay{n}").run(1)
    decode_s, decoded = _timed(lambda: [decode(v) for v in values])
    logged = [Logged(i + 1, i // TXN_OPS + 2, ev) for i, ev in enumerate(decoded)]
    fold_s, state = _timed(lambda: replay(logged))
    progress(f"{n} events: decode {decode_s:.3f} s, replay {fold_s:.3f} s "
             f"({state.last_committed_round} rounds committed)")
    _load(store, keys, values, progress)
    log = EventLog(store, keys)
    etcd_rebuild_s, (built, _) = _timed(log.current)
    if built.commit_order != state.commit_order:
        raise AssertionError("the state read back from etcd differs from the replayed one")
    idle = [_timed(log.current)[0] for _ in range(CYCLES)]
    one = []
    for i in range(CYCLES):
        rnd = state.last_committed_round + 1
        log.append(RoundStarted(node=NODES[0], term=state.max_term, round=rnd,
                                base_model="0" * 64, clients=3 + i))
        one.append(_timed(log.current)[0])
    progress(f"{n} events: first current() {etcd_rebuild_s:.3f} s; a cycle "
             f"{statistics.median(idle) * 1e3:.2f} ms with nothing new, "
             f"{statistics.median(one) * 1e3:.2f} ms with one new event")
    store.delete_prefix(keys.root)
    return {"events": n, "mb": round(sum(map(len, values)) / 1e6, 2),
            "decode_s": round(decode_s, 4), "fold_s": round(fold_s, 4),
            "rebuild_s": round(decode_s + fold_s, 4), "etcd_rebuild_s": round(etcd_rebuild_s, 4),
            "cycle_idle_ms": round(statistics.median(idle) * 1e3, 3),
            "cycle_one_ms": round(statistics.median(one) * 1e3, 3),
            "full_fold_ms": round(fold_s * 1e3, 1)}


def bench_replay(counts: list[int], out: Path, echo: Echo = print,
                 progress: Echo | None = None) -> tuple[int, dict[str, Any]]:
    progress = progress or echo
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="raftfl-bench-") as tmp:
        specs = loopback_specs(Path(tmp), "replay", 3, free_base_port(6))
        with running_members(specs, find_etcd(), serves) as members:
            store = Store([m.spec.client_endpoint for m in members], timeout=30.0)
            try:
                for n in counts:
                    rows.append(measure(n, store, progress))
            finally:
                store.close()
    write_csv(out / "replay.csv", rows)
    plot_bars(out / "replay.png", "rebuild from N events (decode + replay)",
              [r["events"] for r in rows], [r["rebuild_s"] for r in rows], "events", "seconds",
              hline=TARGET_REBUILD_S)
    largest = max(rows, key=lambda r: r["events"])
    met = largest["rebuild_s"] < TARGET_REBUILD_S
    summary = {"bench": "replay", "machine": machine(), "rows": rows,
               "target": {"rebuild_s_below": TARGET_REBUILD_S, "at_events": largest["events"],
                          "rebuild_s": largest["rebuild_s"],
                          "etcd_rebuild_s": largest["etcd_rebuild_s"], "met": met},
               "files": [str(out / "replay.csv"), str(out / "replay.png")]}
    echo(table(rows, COLUMNS))
    echo(f"rebuild from {largest['events']} events: {largest['rebuild_s']:.3f} s decode+replay, "
         f"{largest['etcd_rebuild_s']:.3f} s from etcd (target < {TARGET_REBUILD_S:.0f} s: "
         f"{'met' if met else 'MISSED'}); load average {summary['machine']['load_avg_1m']}")
    echo(f"wrote {out / 'replay.csv'} and {out / 'replay.png'}")
    return 0, summary
