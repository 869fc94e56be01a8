"""`raftfl bench replay --restart`: a real node restarted into a federation whose run's log
holds N events (1,000,000 by default): the time from its process start until its API says
it has caught up, and until it trains again.

Why: `bench replay` times the rebuild alone, on a synthetic log whose models and aggregator
do not exist. Here everything around it is real: a 3-node `LocalCluster` trains the
quick-start task; after round 2 one worker (never the aggregator) is SIGKILLed, its etcd
member with it; the run's log is grown to N events while the aggregator waits before round
3 (a lab hold: see HOLD_RATE); it then trains on and writes its snapshot on its next append
as it always does; then the stopped node is started again with the same command and data
dir, and its etcd member has the whole growth to catch up on before it answers.

The events added are `node_left` / `node_joined` of the stopped node (replay counts them and
nothing else; no decision reads them), appended at the log's end as the aggregator appends:
create-only, in log order (a reader folds them as they come, never refolds), in transactions
of `TXN_EVENTS`, each fenced by the aggregator's term (the role key's create revision), so
they land only while that term holds. When an append of the aggregator's takes a key first,
the transaction fails as a whole and is retried after it. The aggregator itself is held
between rounds meanwhile (see HOLD_RATE): a burst of appends from elsewhere starves its own.

Timed from the restarted process's start (the `Popen`): its API's first answer to
`GET /node`; `caught up`: the API says it runs, follows the current holder and term, and
knows run 1 up to the round committed before the restart; `round with all`: the first
`round_started` counting every node among its workers (the aggregator's count of connected
workers); `trains`: the first `fit_results` of a round in which every node replied (event
`ts`: the aggregator's clock, same host). Between caught up and trains lies the rest of the
round it missed: Flower samples the nodes connected when a round starts.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from raftfl.core.errors import RaftflError
from raftfl.core.events import FitResults, NodeJoined, NodeLeft, RoundCommitted, RoundStarted
from raftfl.core.keys import Keys, RunKeys, seq_of
from raftfl.etcd import snapshots
from raftfl.etcd.eventlog import EventLog
from raftfl.etcd.store import Store
from raftfl.lab.bench import plot_bars
from raftfl.lab.bench_report import Column, Echo, machine, table, write_csv
from raftfl.lab.faults import at, first_term
from raftfl.lab.localcluster import LocalCluster, NodeProc
from raftfl.lab.testhooks import HOLD_ENV

TARGET_S = 5.0  # the issue's: serves or trains within 5 s
DEFAULT_EVENTS = 1_000_000
TXN_EVENTS = 100  # etcd allows 128 compares and 128 operations per transaction
# The aggregator is held before round RESTART_AFTER + 1 starts (the lab's RAFTFL_TEST_HOLD,
# round_start) while the log grows: its own appends must not race the added ones. Raced, each
# of its attempts (create, read the newest key, create again) lost to the next transaction,
# even with the transactions in bursts and pauses, and after 50 its append failed and the
# run stopped. The hold is sized from a pessimistic rate; the loader is done before it ends.
HOLD_RATE = 5000  # events/s: unraced, the loader ran at 6,500-9,400 on this 2-core machine
HOLD_EXTRA_S = 20.0
NODES = 3
ROUNDS = 100_000  # the run outlives the bench
RESTART_AFTER = 2  # rounds committed before the worker is stopped
POLL_S = 0.05
SNAPSHOT_WAIT_S = 120.0  # after the hold
READY_WAIT_S = 180.0
FIT_WAIT_S = 240.0
PROGRESS_EVERY = 100_000

COLUMNS = [
    Column("events", "events"), Column("added", "added"),
    Column("load_s", "load s", "{:.0f}"), Column("events_per_s", "events/s", "{:.0f}"),
    Column("collisions", "retries"), Column("lost_appends", "agg. appends lost"),
    Column("rounds_during_load", "rounds meanwhile"), Column("snapshot_seq", "snapshot seq"),
    Column("snapshot_kb", "snapshot KB", "{:.0f}"),
    Column("api_s", "API answers s", "{:.2f}"), Column("caught_up_s", "caught up s", "{:.2f}"),
    Column("round_sent_s", "round with all s", "{:.2f}"), Column("trains_s", "trains s", "{:.2f}"),
    Column("fit_round", "round"),
    Column("holder_rss_mb", "holder RSS MB", "{:.0f}"), Column("ok", "ok"),
]


class Filler:
    """The stored form of the events added: alternately `node_left` and `node_joined` of
    `node`, under `term`; `value(seq)` is the one for sequence number `seq` (its id
    derives from it: unique, and no uuid per event)."""

    MARK = "@ID@"

    def __init__(self, node: str, term: int) -> None:
        self.parts = [ev(node=node, term=term, id=self.MARK).to_json().split(self.MARK)
                      for ev in (NodeLeft, NodeJoined)]

    def value(self, seq: int) -> str:
        head, tail = self.parts[seq % 2]
        return f"{head}f{seq:031x}{tail}"


@dataclass(frozen=True)
class Grown:
    last_seq: int
    added: int
    seconds: float
    collisions: int


def last_seq(store: Store, keys: RunKeys) -> int:
    """The newest sequence number of the run's log (0: empty), read linearizably."""
    kvs, _ = store.range(keys.events, limit=1, descending=True, keys_only=True)
    return (seq_of(kvs[0].key) or 0) if kvs else 0


def grow(store: Store, keys: Keys, run_keys: RunKeys, total: int, term: int, filler: Filler,
         progress: Echo = lambda _: None) -> Grown:
    """Append filler events at the log's end until its newest sequence number is `total`.

    Each transaction requires the role key's create revision to be `term` and each of its
    keys to be new; a key another writer took first fails it as a whole, and it is retried
    after that writer's. RaftflError once `term` no longer holds the role."""
    tx = store.client.transactions
    start, collisions, added = time.monotonic(), 0, 0
    seq = last_seq(store, run_keys)
    reported = seq // PROGRESS_EVERY
    while seq < total:
        seqs = range(seq + 1, min(seq + TXN_EVENTS, total) + 1)
        compare = [tx.create(keys.aggregator) == term,
                   *(tx.create(run_keys.event(s)) == 0 for s in seqs)]
        success = [tx.put(run_keys.event(s), filler.value(s)) for s in seqs]
        ok, failure = store.call(lambda c=compare, s=success: store.client.transaction(
            compare=c, success=s, failure=[tx.get(keys.aggregator)]))
        if ok:
            seq, added = seqs[-1], added + len(seqs)
        else:
            guard = failure[0] if failure else []
            if not guard or guard[0][1].create_revision != term:
                raise RaftflError(f"term {term} no longer holds the role: {added} events added")
            collisions += 1
            seq = last_seq(store, run_keys)  # another writer's key (or our own, retried)
        if seq // PROGRESS_EVERY > reported:
            reported = seq // PROGRESS_EVERY
            progress(f"  log at {seq} events ({added / (time.monotonic() - start):.0f} added/s)")
    return Grown(seq, added, time.monotonic() - start, collisions)


def node_state(node: NodeProc, timeout: float = 1.0) -> dict[str, Any] | None:
    """The node's `GET /node`, or None while its API does not answer."""
    try:
        with urllib.request.urlopen(node.api_url("/node"), timeout=timeout) as resp:
            return json.loads(resp.read())
    except (OSError, ValueError):
        return None


def caught_up(body: dict[str, Any], holder: str, term: int, run: int, round_: int) -> bool:
    """The API's view is the federation's: it runs, follows `holder` in `term`, and knows
    `run` up to round `round_`."""
    return (body.get("state") == "running" and body.get("role") == "worker"
            and body.get("holder") == holder and body.get("term") == term
            and body.get("run") == run and (body.get("last_round") or 0) >= round_)


def wait(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (value := predicate()) is not None and value is not False:
            return value
        time.sleep(POLL_S)
    raise RaftflError(f"timed out after {timeout:.0f} s waiting for {what}")


class Fits:
    """The run's `round_started` and `fit_results` from a revision on (a tail: not the whole
    log)."""

    def __init__(self, store: Store, keys: RunKeys, revision: int) -> None:
        self.seen: list[FitResults] = []
        self.started: list[RoundStarted] = []
        self.stop = threading.Event()
        log = EventLog(store, keys)

        def tail() -> None:
            for item in log.tail(revision + 1, self.stop):
                if isinstance(item.event, FitResults):
                    self.seen.append(item.event)
                elif isinstance(item.event, RoundStarted):
                    self.started.append(item.event)

        threading.Thread(target=tail, name="fits", daemon=True).start()

    def full(self, n: int) -> FitResults | None:
        """The first round's fit results with `n` replies."""
        return next((f for f in self.seen if f.results >= n), None)

    def sent(self, n: int) -> RoundStarted | None:
        """The first round started with `n` workers connected (the aggregator's count)."""
        return next((r for r in self.started if r.clients >= n), None)


def _rss_mb(c: LocalCluster, name: str) -> float | None:
    try:
        return psutil.Process(c.by_name(name).pid).memory_info().rss / 2**20
    except (psutil.Error, AssertionError):
        return None


def hold_s(events: int) -> float:
    """How long the aggregator waits before round RESTART_AFTER + 1 while `events` are added."""
    return events / HOLD_RATE + HOLD_EXTRA_S


def measure(events: int, progress: Echo) -> dict[str, Any]:
    hold = {HOLD_ENV: f"round_start:{RESTART_AFTER + 1}:{hold_s(events):.0f}"}
    with LocalCluster(n=NODES, rounds=ROUNDS, cluster="restart", train_size=2000,
                      test_size=500, exit_on_complete=False,
                      node_env=dict.fromkeys(range(NODES), hold)) as c:
        el = first_term(c)
        at(c, RoundCommitted, RESTART_AFTER, el.term)
        c._stop.set()  # the collector: it would decode and keep every added event here too
        store, keys, run_keys = c.store(), c.keys, c.run_keys
        # Neither the aggregator nor etcd's Raft leader: killing the leader's member costs an
        # etcd election, which can outlast the aggregator's lease (measured: it stepped down
        # and took its term up again, and its recorder's snapshot schedule started over).
        leader = c.etcd_leader()
        victim = next(n for n in c.nodes if n.name not in (el.node, leader))
        c.kill(victim.name)
        progress(f"round {RESTART_AFTER} committed by term {el.term} ({el.node}); killed "
                 f"{victim.name}; growing run 1's log to {events} events")
        grown = grow(store, keys, run_keys, events, el.term, Filler(victim.name, el.term),
                     progress)
        progress(f"log at {grown.last_seq} events: {grown.added} added in {grown.seconds:.0f} s "
                 f"({grown.collisions} transactions retried after the aggregator's appends)")

        def snapshot() -> Any:
            loaded = snapshots.load(store, run_keys)
            return loaded if loaded is not None and loaded[0].seq > grown.last_seq else None

        snap, state = wait(snapshot, hold_s(events) + SNAPSHOT_WAIT_S,
                           "the aggregator's snapshot")
        snap_kb = len(store.get(run_keys.snapshot).value) / 1024  # type: ignore[union-attr]
        holder = c.holder()
        if holder is None or holder[1] != el.term:
            raise RaftflError(f"term {el.term} ended while the log grew (holder now {holder})")
        fits = Fits(store, run_keys, store.revision())
        known = state.last_committed_round
        progress(f"snapshot at seq {snap.seq} ({snap_kb:.0f} KB, round {known} committed); "
                 f"restarting {victim.name}")
        t0 = time.time()
        c.start_node(victim)
        del c.kills[victim.name]
        def answered() -> float | None:
            return time.time() if node_state(victim, 0.5) is not None else None

        def current() -> tuple[float, dict[str, Any]] | None:
            body = node_state(victim)
            ok = body is not None and caught_up(body, el.node, el.term, 1, known)
            return (time.time(), body) if ok and body is not None else None

        try:
            api_s = wait(answered, READY_WAIT_S, "the API's first answer") - t0
            ready_at, body = wait(current, READY_WAIT_S, "the restarted node to catch up")
            fit = wait(lambda: fits.full(NODES), FIT_WAIT_S, "a round all nodes replied to")
        finally:
            fits.stop.set()
        caught_s, trains_s = ready_at - t0, fit.ts - t0
        sent = fits.sent(NODES)
        holder, final = c.holder(), EventLog(store, run_keys).state()[0]
        # The aggregator's own appends must all have landed beside the added events.
        lost = c.by_name(el.node).log_path.read_text(errors="replace").count(" not recorded: ")
        ok = (holder is not None and holder[1] == el.term and not lost
              and not final.duplicate_commits and not final.chain_breaks
              and not final.stale_commits)
        progress(f"restarted {victim.name}: API {api_s:.2f} s, caught up {caught_s:.2f} s "
                 f"(round {body.get('last_round')}), trains {trains_s:.2f} s (round "
                 f"{fit.round}, {fit.results} replies)")
        return {"events": grown.last_seq, "added": grown.added, "load_s": round(grown.seconds, 1),
                "events_per_s": round(grown.added / grown.seconds) if grown.seconds else None,
                "collisions": grown.collisions, "lost_appends": lost,
                "rounds_during_load": known - RESTART_AFTER, "snapshot_seq": snap.seq,
                "snapshot_kb": round(snap_kb, 1), "api_s": round(api_s, 3),
                "caught_up_s": round(caught_s, 3), "trains_s": round(trains_s, 3),
                "fit_round": fit.round, "round_sent_s": round(sent.ts - t0, 3) if sent else None,
                "holder_rss_mb": _rss_mb(c, el.node),
                "serves_met": caught_s <= TARGET_S, "trains_met": trains_s <= TARGET_S, "ok": ok}


def bench_restart(counts: list[int], out: Path, echo: Echo = print,
                  progress: Echo | None = None) -> tuple[int, dict[str, Any]]:
    progress = progress or echo
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for n in counts:
        try:
            rows.append(measure(n, progress))
        except RaftflError as exc:
            progress(f"{n} events: {exc}")
            rows.append({"events": n, "ok": False, "error": str(exc)})
    write_csv(out / "replay_restart.csv", rows)
    done = [r for r in rows if "caught_up_s" in r]
    plot_bars(out / "replay_restart.png", "a node restarted into a long log: seconds from its "
              "process start", [f"{r['events']} {what}" for r in done for what in
                                ("caught up", "trains")],
              [r[k] for r in done for k in ("caught_up_s", "trains_s")], "log, events", "seconds")
    summary = {"bench": "replay", "restart": True, "target_s": TARGET_S, "machine": machine(),
               "rows": rows, "files": [str(out / "replay_restart.csv"),
                                       str(out / "replay_restart.png")]}
    echo(table(rows, COLUMNS))
    for r in done:
        echo(f"{r['events']} events: caught up in {r['caught_up_s']:.2f} s, trains in "
             f"{r['trains_s']:.2f} s (target <= {TARGET_S:.0f} s: serves "
             f"{'met' if r['serves_met'] else 'MISSED'}, trains "
             f"{'met' if r['trains_met'] else 'MISSED'})")
    echo(f"load average {summary['machine']['load_avg_1m']}; wrote {out / 'replay_restart.csv'} "
         f"and {out / 'replay_restart.png'}")
    return (0 if rows and all(r["ok"] for r in rows) else 1), summary
