"""`python -m raftfl.lab.vworkers`: many edge workers in one process, for `raftfl bench scale`.

Why one process: a thousand real workers would need a thousand Python interpreters (each
~40 MB with Flower imported), which a 2-core laptop cannot host. Each virtual worker here is
a real edge worker (raftfl/node/edge.py: its own node id, its own fleet session, its own
node-API lookups and backoff) answering with the app's real ClientApp through its own
`ClientAppHost`: the Flower Message is decoded and a real reply encoded. Only the process,
and so the GIL and the imported app, is shared.

It records, per instruction answered, one JSON line in `--out`: worker, term, round, kind,
when the ClientApp started and ended and when the server took the reply (wall clock; null
when the answer saying so never came: a reply carries the next poll, fleet.py), so the bench
can tell each worker's first reply in a resumed round and the ClientApps' own time.
SIGTERM (or SIGINT) stops every worker and flushes the file.

Why `--busy`: when a round's instructions arrive, hundreds of threads of one process want
the GIL at once, and CPython hands it over by timed waits: with ~400 contenders the process
spent most of its time in the kernel (85% system CPU) and answered nothing in time. So at
most `--busy` workers run their ClientApp at once (the rest sleep on a semaphore, which
costs nothing), and the GIL is handed over less often (`sys.setswitchinterval`).
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from raftfl.flower.app import load_app, node_config
from raftfl.flower.host import ClientAppHost
from raftfl.node import runapp
from raftfl.node.edge import EdgeOptions, EdgeWorker

STACK_BYTES = 512 << 10  # per thread: a poll thread and a heartbeat thread per worker
FLUSH_EVERY_S = 0.5
SWITCH_INTERVAL_S = 0.02


def worker_name(prefix: str, index: int) -> str:
    """A virtual worker's name; its node id is `runapp.node_id(name)`, as a certificate of
    that CN would be allowed (never a cluster node's: those are named host:port)."""
    return f"{prefix}-{index:05d}"


class Journal:
    """Reply records, appended from every worker thread, flushed to a JSON-lines file."""

    def __init__(self, path: Path):
        self.path = path
        self._rows: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        path.write_text("")

    def add(self, row: dict[str, Any]) -> None:
        with self._lock:
            self._rows.append(row)

    def flush(self) -> None:
        with self._lock:
            rows, self._rows = self._rows, []
        if rows:
            with open(self.path, "a") as fh:
                fh.write("".join(json.dumps(r) + "\n" for r in rows))


class Virtual:
    """One virtual worker: an edge worker whose handle runs the ClientApp and records."""

    def __init__(self, index: int, args: argparse.Namespace, client_app: Any,
                 run_config: dict[str, Any], journal: Journal, opts: EdgeOptions,
                 busy: threading.Semaphore):
        self.name = worker_name(args.prefix, index)
        self.journal = journal
        self.busy = busy
        node_id = runapp.node_id(self.name)
        self.edge = EdgeWorker(node_id, self.name, self.handle, opts,
                               random.Random(args.seed * 1_000_003 + index), self.replied)
        self.host = ClientAppHost(client_app, run_id=args.run, node_id=node_id,
                                  node_config=node_config(None, index, args.workers),
                                  run_config=run_config, admit=self.admit)
        self._stamp: Any = None
        self._row: dict[str, Any] | None = None  # the answer in flight, until the server took it

    def admit(self, stamp: Any, message: Any) -> str | None:
        refused = self.edge.admit(stamp, message)
        self._stamp = (stamp, message.metadata.message_type, refused)
        return refused

    def handle(self, msg_id: str, payload: bytes) -> bytes:
        """The ClientApp, timed; the row is recorded when the server took the reply."""
        self.settle()
        with self.busy:
            began = time.time()
            self._stamp = None
            reply = self.host.handle(msg_id, payload)
            ended = time.time()
        if self._stamp is not None:
            stamp, kind, refused = self._stamp
            self._row = {"worker": self.name, "msg": msg_id, "term": stamp.term,
                         "round": stamp.round, "kind": kind, "refused": refused,
                         "began": round(began, 4), "ended": round(ended, 4)}
        return reply

    def settle(self) -> None:
        """Record the answer in flight without the time the server took it: the reply carried
        the next poll, whose answer never came (its server died or the run ended)."""
        row, self._row = self._row, None
        if row is not None:
            self.journal.add({**row, "sent": None})

    def replied(self, msg_id: str, taken_at: float) -> None:
        """`taken_at`: when the server took the reply, by its clock (the same host's)."""
        row, self._row = self._row, None
        if row is not None and row["msg"] == msg_id:
            row["sent"] = round(taken_at, 4)
            self.journal.add(row)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m raftfl.lab.vworkers",
                                     description="Many edge workers in one process.")
    parser.add_argument("--api", required=True, help="Node API URLs, comma-separated.")
    parser.add_argument("--workers", type=int, required=True)
    parser.add_argument("--first", type=int, default=0, help="The first worker's index.")
    parser.add_argument("--busy", type=int, default=4,
                        help="At most this many ClientApps run at once.")
    parser.add_argument("--app", type=Path, required=True, help="The Flower app directory.")
    parser.add_argument("--run-config", default=None, help="The run's run config overrides.")
    parser.add_argument("--run", type=int, default=1, help="The run the workers serve.")
    parser.add_argument("--out", type=Path, required=True, help="JSON-lines reply records.")
    parser.add_argument("--prefix", default="vw")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ramp-s", type=float, default=1.0,
                        help="Spread the workers' first lookups over this long.")
    args = parser.parse_args(argv)
    if not 1 <= args.workers <= 10_000:
        print("vworkers: --workers must be 1..10000", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    threading.stack_size(STACK_BYTES)
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    busy = threading.Semaphore(max(1, args.busy))
    app = load_app(args.app)
    client_app = app.load_client_app()
    run_config = dict(app.run_config(args.run_config))
    opts = EdgeOptions(apis=tuple(u for u in args.api.split(",") if u))
    journal = Journal(args.out)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    workers = [Virtual(i, args, client_app, run_config, journal, opts, busy)
               for i in range(args.first, args.first + args.workers)]
    rng = random.Random(args.seed)

    def run(worker: Virtual) -> None:
        if not stop.wait(rng.uniform(0, args.ramp_s)):
            worker.edge.run(stop)

    for worker in workers:
        threading.Thread(target=run, args=(worker,), name=worker.name, daemon=True).start()
    print(f"vworkers: {args.workers} workers started", flush=True)
    last_say = time.monotonic()
    while not stop.wait(FLUSH_EVERY_S):
        journal.flush()
        if time.monotonic() - last_say > 10:
            last_say = time.monotonic()
            sessions = sum(w.edge.sessions for w in workers)
            asks = sum(w.edge.asks for w in workers)
            print(f"vworkers: {sessions} sessions started and {asks} node API asks so far, "
                  f"{threading.active_count()} threads", flush=True)
    for worker in workers:
        worker.edge.stop()
        worker.settle()
    journal.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
