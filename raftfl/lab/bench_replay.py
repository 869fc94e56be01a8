"""`raftfl bench replay`: the time a (re)starting node takes to rebuild a run's state from
etcd, and what one HA cycle costs once it is built.

Why: a federation that outlives its runs keeps appending events, and every node asks for
the state every HA cycle. A node that (re)starts rebuilds once: from the run's snapshot
(raftfl/core/snapshot.py, written by the aggregator every 1,000 events) and the events
after it, or, without a snapshot, from every event (read, decode, fold); after that,
`EventLog.current()` reads and folds only what is new. This measures both on a real
3-member etcd cluster, for two logs of N events:

* `training`: a long, healthy run (an election every 500 rounds; per round `round_started`,
  `fit_results`, `checkpoint_saved` and a `round_committed` carrying the metrics the recorder
  writes for three clients). The state keeps the newest rounds' records only (core/replay.py's
  WINDOW; about 1.1 KB a round), so its snapshot stays near 100 KB however many rounds.
* `bounded`: the same first 500 rounds, then events that leave the state alone (a round
  retried: `round_started` and `fit_results` with failures; a node leaving and joining
  again).
Either way a restart costs the snapshot and the events after it.

The log is written in its stored form with multi-put transactions (the nodes append one by
one; a bench only needs the keys there). The snapshot is the aggregator's own
(`snapshots.save`, fenced), as of event N - 999: the most a restart reads after a snapshot.
What is timed as the restart is a fresh client's fresh `EventLog.current()`, which is what a
restarted node's `Runs.refresh()` does for the active run; next to it, the same without the
snapshot (none, or one that fails its hash), and the pure decode + `replay` of all N values.
Then a cycle: `current()` with nothing new, and with one new event (the append not timed);
next to it, the fold of the whole log that each cycle cost before the fold was kept, and
the sweep below the newest key that `current()` adds every minute (etcd reads the whole
range to find the keys changed since the last one).
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from raftfl.core.events import (
    AggregatorElected,
    CheckpointSaved,
    Event,
    FitResults,
    NodeJoined,
    NodeLeft,
    RoundCommitted,
    RoundStarted,
    RunStarted,
    decode,
)
from raftfl.core.keys import Keys, RunKeys
from raftfl.core.replay import FLState, Logged, replay
from raftfl.core.snapshot import TooBig
from raftfl.etcd import snapshots
from raftfl.etcd.eventlog import EventLog
from raftfl.etcd.member import find_etcd, loopback_specs, running_members
from raftfl.etcd.store import Fence, Store
from raftfl.lab.bench import plot_bars, serves
from raftfl.lab.bench_report import Column, Echo, machine, table, write_csv
from raftfl.lab.localcluster import free_base_port
from raftfl.node.recorder import SNAPSHOT_EVERY

TARGETS_S = {100_000: 0.5, 1_000_000: 2.0}  # a restart's rebuild from etcd, by log length
SHAPES = ("training", "bounded")
CYCLES = 30
TXN_OPS = 100  # etcd allows 128 operations per transaction
LOAD_THREADS = 4
ROUNDS_PER_TERM = 500
BOUNDED_ROUNDS = 500
TAIL = SNAPSHOT_EVERY - 1  # events after the snapshot: the most a restart reads
NODES = ("10.0.0.1:2380", "10.0.0.2:2380", "10.0.0.3:2380")
T0 = 1.7e9

COLUMNS = [
    Column("shape", "log"),
    Column("events", "events"),
    Column("mb", "MB", "{:.1f}"),
    Column("snapshot_kb", "snapshot KB", "{:.0f}"),
    Column("decode_s", "decode s", "{:.3f}"),
    Column("fold_s", "replay s", "{:.3f}"),
    Column("etcd_rebuild_s", "restart s", "{:.3f}"),
    Column("full_etcd_rebuild_s", "restart, whole log s", "{:.3f}"),
    Column("snapshot_write_ms", "snapshot write ms", "{:.0f}"),
    Column("cycle_idle_ms", "cycle, none new ms", "{:.2f}"),
    Column("cycle_one_ms", "cycle, 1 new ms", "{:.2f}"),
    Column("sweep_ms", "sweep ms", "{:.0f}"),
    Column("full_fold_ms", "old cycle (full fold) ms", "{:.1f}"),
]


def _templates() -> dict[str, dict[str, Any]]:
    """One real event of each type the logs hold, as the dict its stored form encodes."""
    clients = [{"node_id": str(1000 + i), "train_loss": 1.0, "num-examples": 1666,
                "eval_loss": 1.0, "eval_acc": 0.5} for i in range(len(NODES))]
    metrics = {"train": {"train_loss": 1.0, "num-examples": 5000},
               "evaluate_clientapp": {"eval_loss": 1.0, "eval_acc": 0.5},
               "evaluate_serverapp": {"loss": 1.0, "accuracy": 0.5}, "clients": clients}
    base, node = "0" * 64, NODES[0]
    events: list[Event] = [
        AggregatorElected(node=node, term=1, flower_address="10.0.0.1:9092", rank=0, score=1.0,
                          revision=1, ts=T0, ranking=[{"node": x, "score": 1.0} for x in NODES]),
        RunStarted(node=node, term=1, rounds=10**6, initial_model=base, ts=T0),
        RoundStarted(node=node, term=1, round=1, base_model=base, clients=3, ts=T0),
        FitResults(node=node, term=1, round=1, results=3, failures=0, num_examples=5000, ts=T0),
        CheckpointSaved(node=node, term=1, round=1, sha256=base, size=248_024, chunks=1, ts=T0),
        RoundCommitted(node=node, term=1, round=1, model_sha256=base, base_model=base, loss=1.0,
                       accuracy=0.5, results=3, metrics=metrics, ts=T0),
        NodeLeft(node=node, ts=T0), NodeJoined(node=node, ts=T0)]
    return {ev.type: ev.to_dict() for ev in events}


def synthetic_log(n: int, shape: str = "training") -> list[str]:
    """The stored form (`Event.to_json()`) of `n` events of `shape` (the module docstring)."""
    templates = _templates()
    out: list[str] = []
    term, rnd, base, node = 0, 0, "0" * 64, NODES[0]

    def put(kind: str, **fields: Any) -> None:
        stored = {**templates[kind], "id": f"{len(out):032x}", "node": node, "term": term}
        out.append(json.dumps({**stored, **fields}, sort_keys=True))

    while len(out) < n:
        if shape == "bounded" and rnd == BOUNDED_ROUNDS:
            put("round_started", round=rnd + 1, base_model=base)
            put("fit_results", round=rnd + 1, results=0, failures=3, num_examples=0)
            put("node_left", node=NODES[2], term=0)
            put("node_joined", node=NODES[2], term=0)
            continue
        if rnd % ROUNDS_PER_TERM == 0:
            # A term is the revision its role key was created at, never later than the
            # revision its events are created at: here TXN_OPS events per revision, some
            # transactions landing before the ones written just before them (LOAD_THREADS).
            term = max(1, len(out) // TXN_OPS - LOAD_THREADS)
            node = NODES[(rnd // ROUNDS_PER_TERM) % len(NODES)]
            put("aggregator_elected", revision=term)
            if rnd == 0:
                put("run_started", initial_model=base)
        rnd += 1
        sha = f"{rnd:064x}"
        put("round_started", round=rnd, base_model=base)
        put("fit_results", round=rnd)
        put("checkpoint_saved", round=rnd, sha256=sha)
        put("round_committed", round=rnd, model_sha256=sha, base_model=base)
        base = sha
    return out[:n]


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def _load(store: Store, keys: RunKeys, values: list[str], first: int, progress: Echo) -> None:
    """Write `values` as events first+1.. with multi-put transactions, several at a time."""
    tx = store.client.transactions

    def put(start: int) -> int:
        ops = [tx.put(keys.event(first + start + i + 1), v)
               for i, v in enumerate(values[start:start + TXN_OPS])]
        store.call(lambda: store.client.transaction(compare=[], success=ops, failure=[]))
        return first + start + len(ops)

    with ThreadPoolExecutor(LOAD_THREADS) as pool:
        for done in pool.map(put, range(0, len(values), TXN_OPS)):
            if done >= 200_000 and done % 200_000 < TXN_OPS:
                progress(f"  loaded {done} events into etcd")


def _pure(values: list[str], cut: int) -> tuple[float, float, FLState, FLState]:
    """Decode and replay the stored `values` (timed), and the state as of event `cut`."""
    decode_s, decoded = _timed(lambda: [decode(v) for v in values])
    logged = [Logged(i + 1, i // TXN_OPS + 2, ev) for i, ev in enumerate(decoded)]
    fold_s, state = _timed(lambda: replay(logged))
    return decode_s, fold_s, state, replay(logged[:cut])


def _snapshot(store: Store, keys: RunKeys, state: FLState) -> tuple[float | None, float | None, str]:
    """The aggregator's snapshot of `state` (every key the log has now): the time its write
    took in ms and its size in KB (None when it does not fit), and what was written."""
    term = store.create_revision(keys.aggregator, NODES[0])
    assert term is not None
    fence = Fence(keys.aggregator, term)
    try:
        seconds, _ = _timed(lambda: snapshots.save(store, keys, state, store.revision(), fence,
                                                   NODES[0]))
    except TooBig as exc:
        return None, None, f"none ({exc})"
    kv = store.get(keys.snapshot)
    assert kv is not None
    kb = len(kv.value) / 1024
    return seconds * 1e3, kb, f"{kb:.0f} KB as of event {state.last_seq}"


def _restart(endpoints: list[str], keys: RunKeys, expected: FLState) -> tuple[float, EventLog, Store]:
    """A restarted node's rebuild: a fresh client, a fresh log, its first `current()`."""
    store = Store(endpoints, timeout=30.0)
    log = EventLog(store, keys)
    seconds, (state, _) = _timed(log.current)
    if state != expected:
        store.close()
        raise AssertionError("the state rebuilt from etcd differs from the replayed one")
    return seconds, log, store


def _cycles(log: EventLog, state: FLState) -> tuple[list[float], list[float], float]:
    """Cycles with nothing new and with one new event, and one sweep (every SWEEP_S)."""
    sweep_s, _ = _timed(lambda: log.current(sweep=True))
    idle = [_timed(log.current)[0] for _ in range(CYCLES)]
    one = []
    for i in range(CYCLES):
        log.append(RoundStarted(node=NODES[0], term=state.max_term, round=state.next_round,
                                base_model="0" * 64, clients=3 + i))
        one.append(_timed(log.current)[0])
    return idle, one, sweep_s


def measure(n: int, shape: str, store: Store, progress: Echo) -> dict[str, Any]:
    """One row: the rebuild and cycle costs for a log of `n` events of `shape`."""
    values = synthetic_log(n, shape)
    mb = sum(map(len, values)) / 1e6
    keys = Keys(f"replay-{shape}-{n}").run(1)
    cut = max(n - TAIL, 1)
    decode_s, fold_s, state, at_cut = _pure(values, cut)
    progress(f"{shape} log, {n} events ({mb:.0f} MB): decode {decode_s:.3f} s, replay "
             f"{fold_s:.3f} s ({state.last_committed_round} rounds committed)")
    _load(store, keys, values[:cut], 0, progress)
    write_ms, kb, written = _snapshot(store, keys, at_cut)
    _load(store, keys, values[cut:], cut, progress)
    rebuild_s, log, fresh = _restart(store.endpoints, keys, state)
    full_s = None
    try:
        if write_ms is not None:
            store.delete(keys.snapshot)
            full_s, _, full = _restart(store.endpoints, keys, state)
            full.close()
        idle, one, sweep_s = _cycles(log, state)
    finally:
        fresh.close()
    progress(f"{shape} log, {n} events: snapshot {written}; restart {rebuild_s:.3f} s"
             + (f" ({full_s:.3f} s from the whole log)" if full_s is not None else "")
             + f"; a cycle {statistics.median(idle) * 1e3:.2f} ms with nothing new, "
             f"{statistics.median(one) * 1e3:.2f} ms with one new event, a sweep "
             f"{sweep_s * 1e3:.0f} ms")
    return {"shape": shape, "events": n, "mb": round(mb, 2), "snapshot": written,
            "snapshot_kb": None if kb is None else round(kb, 1),
            "decode_s": round(decode_s, 4), "fold_s": round(fold_s, 4),
            "rebuild_s": round(decode_s + fold_s, 4), "etcd_rebuild_s": round(rebuild_s, 4),
            "full_etcd_rebuild_s": round(rebuild_s if full_s is None else full_s, 4),
            "snapshot_write_ms": None if write_ms is None else round(write_ms, 1),
            "cycle_idle_ms": round(statistics.median(idle) * 1e3, 3),
            "cycle_one_ms": round(statistics.median(one) * 1e3, 3),
            "sweep_ms": round(sweep_s * 1e3, 1),
            "full_fold_ms": round(fold_s * 1e3, 1)}


def _row(n: int, shape: str, progress: Echo) -> dict[str, Any]:
    """`measure` on a cluster of its own: one row's million keys neither slow the next row
    nor need deleting (one request deleting them outlasts any timeout)."""
    with tempfile.TemporaryDirectory(prefix="raftfl-bench-") as tmp:
        specs = loopback_specs(Path(tmp), "replay", 3, free_base_port(6))
        with running_members(specs, find_etcd(), serves) as members:
            store = Store([m.spec.client_endpoint for m in members], timeout=30.0)
            try:
                return measure(n, shape, store, progress)
            finally:
                store.close()


def _verdicts(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The restart targets (TARGETS_S), per log shape and length measured."""
    return [{"shape": r["shape"], "events": r["events"], "target_s": TARGETS_S[r["events"]],
             "etcd_rebuild_s": r["etcd_rebuild_s"], "snapshot": r["snapshot"],
             "met": r["etcd_rebuild_s"] < TARGETS_S[r["events"]]}
            for r in rows if r["events"] in TARGETS_S]


def bench_replay(counts: list[int], out: Path, echo: Echo = print,
                 progress: Echo | None = None) -> tuple[int, dict[str, Any]]:
    progress = progress or echo
    out.mkdir(parents=True, exist_ok=True)
    rows = [_row(n, shape, progress) for n in counts for shape in SHAPES]
    write_csv(out / "replay.csv", rows)
    plot_bars(out / "replay.png", "a restarted node's rebuild from etcd",
              [f"{r['shape']} {r['events']}" for r in rows], [r["etcd_rebuild_s"] for r in rows],
              "log, events", "seconds")
    verdicts = _verdicts(rows)
    summary = {"bench": "replay", "machine": machine(), "rows": rows, "targets": verdicts,
               "files": [str(out / "replay.csv"), str(out / "replay.png")]}
    echo(table(rows, COLUMNS))
    for v in verdicts:
        echo(f"{v['shape']} log, {v['events']} events: restart {v['etcd_rebuild_s']:.3f} s "
             f"(target < {v['target_s']} s: {'met' if v['met'] else 'MISSED'}); snapshot "
             f"{v['snapshot']}")
    echo(f"load average {summary['machine']['load_avg_1m']}; wrote {out / 'replay.csv'} and "
         f"{out / 'replay.png'}")
    return 0, summary
