"""Retention: compaction plus defragmentation keep etcd's database bounded over a long run.

Why: every round stores a 248 KB checkpoint and prunes an older one, and latency samples and
member records are rewritten every second or so. etcd keeps every overwritten or deleted
value in its MVCC history until it is compacted, and its file only shrinks when it is
defragmented. With only hourly auto-compaction, hundreds of rounds pile up; past its
`quota-backend-bytes` etcd raises the NOSPACE alarm and refuses every write.

`Retention.after_round(round)` (the aggregator calls it after each commit; it acts every
`every` rounds):
1. compacts to the revision it recorded on its previous run, `every` rounds ago, so a reader
   lagging less than that loses nothing (and a watch lagging more gets a `Resync`); while
   NOSPACE is raised, to the current revision;
2. defragments, one member at a time, each member whose file is mostly free pages (or every
   member while NOSPACE is raised); a member serves nothing while it defragments;
3. disarms a NOSPACE alarm afterwards: etcd raises it again on the next write that still does
   not fit, so disarming is never unsafe.
The event log itself is never touched: its keys are live, and compaction keeps live keys.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from raftfl.etcd.store import EtcdUnavailable, MemberStatus, Store

log = logging.getLogger(__name__)

EVERY_ROUNDS = 10
FREE_RATIO = 2.0  # defragment when the file is at least twice its live data ...
MIN_FREE_BYTES = 8 * 1024 * 1024  # ... and that frees at least this much


@dataclass
class RetentionReport:
    compacted_to: int | None
    defragmented: list[str] = field(default_factory=list)  # member endpoints
    db_sizes: dict[str, int] = field(default_factory=dict)  # endpoint -> file size, afterwards
    disarmed: bool = False


def needs_defrag(status: MemberStatus, ratio: float = FREE_RATIO,
                 min_free: int = MIN_FREE_BYTES) -> bool:
    """Pure: is enough of this member's file free pages to be worth rewriting?"""
    in_use = status.db_size_in_use
    if in_use is None:  # an etcd that does not report it: judge by the size alone
        return status.db_size >= 4 * min_free
    free = status.db_size - in_use
    return free >= min_free and status.db_size >= ratio * in_use


class Retention:
    def __init__(self, store: Store, every: int = EVERY_ROUNDS, free_ratio: float = FREE_RATIO,
                 min_free_bytes: int = MIN_FREE_BYTES, defrag_timeout: float = 60.0):
        if every < 1:
            raise ValueError("every must be >= 1")
        self.store = store
        self.every = every
        self.free_ratio = free_ratio
        self.min_free_bytes = min_free_bytes
        self.defrag_timeout = defrag_timeout
        self._mark: int | None = None  # the revision at the previous run

    def after_round(self, round_: int) -> RetentionReport | None:
        """Run every `every` rounds; None on the other rounds."""
        return self.run() if round_ % self.every == 0 else None

    def run(self) -> RetentionReport:
        now = self.store.revision()
        nospace = any(kind == "NOSPACE" for _, kind in self.store.alarms())
        # Out of space, nothing can be written anyway: free all the history there is.
        target = now if nospace else self._mark
        report = RetentionReport(compacted_to=target)
        if target is not None:
            self.store.compact(target)
        self._mark = now
        for endpoint in self._endpoints():
            try:
                status = Store.member_status(endpoint)
                if nospace or needs_defrag(status, self.free_ratio, self.min_free_bytes):
                    Store.defragment(endpoint, self.defrag_timeout)
                    report.defragmented.append(endpoint)
                    status = Store.member_status(endpoint)
                report.db_sizes[endpoint] = status.db_size
            except Exception as exc:  # noqa: BLE001 - a member down or busy: the next run retries
                log.info("retention skipped member %s: %s", endpoint, exc)
        if nospace:
            self.store.disarm_alarms()
            report.disarmed = True
        log.info("retention: compacted to %s, defragmented %d members, db sizes %s",
                 report.compacted_to, len(report.defragmented),
                 {ep: f"{size / 2**20:.1f} MiB" for ep, size in report.db_sizes.items()})
        return report

    def _endpoints(self) -> list[str]:
        try:
            members = self.store.members()
        except EtcdUnavailable:
            return []
        return [m.client_urls[0].split("//", 1)[-1] for m in members if m.client_urls]
