"""Every run's `RunStats` (raftfl/ops/runstats.py), kept current from etcd.

A scrape must not replay a long run's whole log, and a run's log only grows (appends are
create-only), so each update reads only the keys after the newest one read before, and a
finished run is not read again. A key written below that (by hand) is not picked up: the
metrics may miss it, the CLI's `history` does not.
"""

from __future__ import annotations

import threading
from typing import Any

from raftfl.core.keys import Keys, seq_of
from raftfl.etcd import run_store
from raftfl.etcd.eventlog import EventLog
from raftfl.etcd.store import Store
from raftfl.ops.runstats import RunStats, Totals, totals


class Ledger:
    def __init__(self, store: Store, keys: Keys, lease_ttl: float):
        self.store, self.keys, self.lease_ttl = store, keys, lease_ttl
        self._stats: dict[int, RunStats] = {}
        self._next: dict[int, int] = {}  # run -> the first sequence number not read yet
        self._lock = threading.Lock()

    def totals(self) -> Totals:
        with self._lock:
            self._update()
            return totals(self._stats.values())

    def failovers(self, run: int | None) -> tuple[int | None, list[dict[str, Any]]]:
        """Run `run`'s (default: the newest run's) failover timeline; NoSuchRun if absent."""
        with self._lock:
            self._update()
            if run is None:
                run = max(self._stats, default=None)
            elif run not in self._stats:
                run_store.spec(self.store, self.keys, run)  # raises NoSuchRun (one line)
            stats = self._stats.get(run) if run is not None else None
            return run, [fo.to_dict() for fo in stats.failovers] if stats else []

    def _update(self) -> None:
        # Read at the revision the member we talk to has applied: pinned reads are
        # serializable, so a scrape costs no ReadIndex round (16 nodes scraped at once: 176).
        revision = self.store.revision(serializable=True)
        for run in run_store.ids(self.store, self.keys, after=max(self._stats, default=0),
                                 revision=revision):
            self._stats[run] = RunStats(self.lease_ttl)
        for run, stats in self._stats.items():
            if stats.state.finished:
                continue
            read = EventLog(self.store, self.keys.run(run)).read(revision=revision,
                                                                 from_seq=self._next.get(run))
            stats.add(read.events)
            seqs = [item.seq for item in read.events]
            seqs += [s for key, _ in read.skipped if (s := seq_of(key)) is not None]
            self._next[run] = max([self._next.get(run, 0), *(s + 1 for s in seqs)])
