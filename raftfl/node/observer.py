"""The observer: everything a cycle needs, read at one revision into a frozen `View`.

It reads and remembers (when a vacancy or a malformed key was first seen, the ranking at a
vacancy's revision); it acts on nothing. Its watch threads only queue changes and wake the
loop; `HolderProbe` probes the holder's host in a thread of its own.

In a secured cluster it also says, once each, what is forged: a role claim that is not signed
by the node it names, or names another node than its term's election record (a member that
overwrites the key with a claim of its own), and any event written to a run's log that the
node does not read otherwise (a finished run's): its guard watch queues the run, and the cycle
reads that log, which skips and says each forged event (raftfl/etcd/eventlog.py).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from raftfl.core.decide import View
from raftfl.core.evidence import gone
from raftfl.core.keys import MAX_RUN_ID
from raftfl.core.maintenance import HandoverRequest, Pause
from raftfl.core.ranking import Ranked, candidates, rank
from raftfl.core.records import SKIPS, MalformedRecord
from raftfl.core.replay import FLState
from raftfl.core.role import MalformedRole, RoleHolder
from raftfl.core.specs import ClusterConfig
from raftfl.etcd import signers
from raftfl.etcd.context import read_members, read_samples, read_suspecting
from raftfl.etcd.eventlog import EventLog
from raftfl.etcd.store import KV, Change, Compacted, Resync
from raftfl.net.origin import origin
from raftfl.node.holder_probe import HolderProbe
from raftfl.node.runs import Runs
from raftfl.node.shell import Shell

log = logging.getLogger(__name__)

GUARDED_LOGS = 8  # finished runs' logs the guard keeps folded (written to lately)


class Observer:
    def __init__(self, shell: Shell, runs: Runs, config: ClusterConfig):
        self.shell, self.runs, self.config = shell, runs, config
        self.role_changes: queue.Queue[Change | Resync] = queue.Queue()  # from the role watch
        self.vacancy_rev: int | None = None  # delete revision of the role key (from the watch)
        self.vacancy_seen: float | None = None
        self._malformed_seen: float | None = None
        self.ranked: tuple[tuple[Ranked, ...], int, float | None] | None = None
        self.holder_probe = HolderProbe(shell.opts.timings.evidence_s, shell.wake.set)
        self._events_watch: tuple[int, threading.Event] | None = None  # (run, its stop)
        # Since when the role's answers are known current (monotonic: a linearizable read, or
        # the read before a serializable one whose revision moved), the newest revision a
        # cycle read, and when it was read.
        self.recheck_s = shell.opts.timings.lease_ttl
        self._current_at, self._last_rev, self._settled_before = float("-inf"), 0, False
        self._read_at = float("-inf")
        self._said_forged = 0  # the mod revision of the last forged role key said
        self.guarded: queue.Queue[int] = queue.Queue()  # runs whose logs were written to
        self._guard_logs: dict[int, EventLog] = {}

    @property
    def malformed_seen(self) -> float | None:
        return self._malformed_seen

    def observe(self, leader_heard_at: float = float("-inf")) -> View:
        """Read everything a cycle needs at one revision (the vacancy's, for the ranking).
        `leader_heard_at`: when our lease's last refresh, made through the same etcd client,
        was sent (monotonic)."""
        opts = self.shell.opts
        self._drain_role_changes()
        role, rev = self._role(leader_heard_at)
        runs = self.runs.refresh(rev)
        state = runs.state
        role = self._forged(role, state)
        self._guard(runs.active)
        now = time.monotonic()
        if role is None and runs.active is not None:  # no run, no election: nor a rank clock
            self.vacancy_seen = self.vacancy_seen or now
        elif role is None:
            self.vacancy_seen = None
        else:
            self.vacancy_seen, self.vacancy_rev = None, None
        self._malformed_seen = (self._malformed_seen or now) \
            if isinstance(role, MalformedRole) else None
        at_run: dict[str, Any] = {"run": runs.active, "elected_before": runs.elected_before,
                                  "finished_runs": tuple(self.runs.finished), **self._control(rev)}
        if at_run["paused_since"] is not None:  # the rank clock starts when failover resumes
            self.vacancy_seen = None
        if isinstance(role, RoleHolder) and role.node != opts.name and runs.active:
            return replace(self._observe_holder(rev, role, state), **at_run)
        self.holder_probe.follow(None)
        if role is not None or runs.active is None or opts.nofailover:
            return View(rev, role, state, **at_run)
        at = self.vacancy_rev or rev
        ranking, ranked_at, max_rtt = self._ranking(at, state)
        if not ranking and at != rev:
            # Nobody had a member record at the vacancy: every lease expired with the role's
            # (after a quorum loss the Raft leader revokes them all). Ranking there would wait
            # forever; rank the members that have republished since, as a poller would.
            ranking, ranked_at, max_rtt = self._ranking(rev, state)
        measured = True
        if not state.elections and not runs.elected_before and opts.bootstrap == "auto":
            measured = self._peers_measured(rev)
            if not measured:  # the rank clock starts once everyone can rank the same way
                self.vacancy_seen = None
        return View(rev, role, state, ranking, ranked_at, self.vacancy_rev, measured, max_rtt,
                    **at_run)

    def _role(self, leader_heard_at: float) -> tuple[RoleHolder | MalformedRole | None, int]:
        """The role key, and the revision this cycle reads everything else at.

        A linearizable read costs a ReadIndex: a heartbeat round from the Raft leader to
        every follower (350 bytes at 3 members), and every cycle of every node made one (1
        of an idle 3-node cluster's 6 kB/s; more in rounds, whose events wake every loop).
        The role's changes already arrive through the role watch, from the same member, so
        the key is read serializably from that member; linearizably only where
        the answer is acted on or may be stale: the role vacant or malformed (a campaign, a
        deletion), its holder failing our probes (a suspicion, a takeover), an answer older
        than the last cycle's (the client failed over to a member behind), and when the
        member has applied nothing new for `recheck_s` (a member cut off from its peers
        answers, and its watches stay silent, forever). Two things show that the member was
        not cut off, and each defers the recheck: its revision moved since our previous read
        (it applied an entry the leader committed since then; at 16 nodes a recheck every
        lease TTL regardless was 5 of the 13 ReadIndex rounds a second), or our lease was
        refreshed through it since (a follower forwards a keepalive to the Raft leader, and
        a cut-off leader stops answering them; with members that applied nothing for a TTL
        in long rounds, the rechecks were still 47 ReadIndex rounds a 16-node round).
        """
        store, key = self.shell.store, self.shell.keys.aggregator
        now = time.monotonic()
        current_at = max(self._current_at, leader_heard_at)
        if self._settled_before and now - current_at < self.recheck_s:
            role, rev = self._read_role(store.range(key, serializable=True))
            if rev >= self._last_rev and self._settled(role):
                if rev > self._last_rev:  # it heard from the leader after our previous read
                    self._current_at = self._read_at
                self._last_rev, self._read_at = rev, now
                return role, rev
        role, rev = self._read_role(store.range(key))
        self._current_at, self._last_rev, self._read_at = now, rev, now
        self._settled_before = self._settled(role)  # if not, the next cycle reads exactly at once
        return role, rev

    def _read_role(self, read: tuple[list[KV], int]
                   ) -> tuple[RoleHolder | MalformedRole | None, int]:
        kvs, rev = read
        kv = next((k for k in kvs if k.key == self.shell.keys.aggregator), None)
        return (signers.read_role(self.shell.store, self.shell.keys, kv) if kv else None), rev

    def _forged(self, role: RoleHolder | MalformedRole | None, state: FLState
                ) -> RoleHolder | MalformedRole | None:
        """In a secured cluster, a claim naming another node than its term's election record
        is forged too (a member overwrote the key with a claim of its own); each forged key
        is said once."""
        if isinstance(role, RoleHolder) and signers.signer() is not None:
            won = state.holder(role.term)
            if won is not None and won != role.node:
                role = MalformedRole(f"forged: term {role.term} was won by {won}, the key "
                                     f"names {role.node}", role.term, role.lease,
                                     role.mod_revision)
        if isinstance(role, MalformedRole) and role.reason.startswith("forged") \
                and role.mod_revision != self._said_forged:
            self._said_forged = role.mod_revision
            log.warning("ignoring the aggregator role key written at revision %d: %s",
                        role.mod_revision, role.reason)
        return role

    def _guard(self, active: int | None) -> None:
        """Read the logs of the runs the guard watch saw written to, but the active one's
        (read anyway): a forged event there is skipped and said like any other."""
        while True:
            try:
                run = self.guarded.get_nowait()
            except queue.Empty:
                return
            if run == active:
                continue
            if run not in self._guard_logs and len(self._guard_logs) >= GUARDED_LOGS:
                del self._guard_logs[next(iter(self._guard_logs))]
            events = self._guard_logs.setdefault(
                run, EventLog(self.shell.store, self.shell.keys.run(run)))
            events.current(sweep=True)

    def _settled(self, role: RoleHolder | MalformedRole | None) -> bool:
        """A held role nobody is about to act on: a serializable answer will do."""
        if not isinstance(role, RoleHolder):
            return False
        ev = self.holder_probe.latest
        return role.node == self.shell.opts.name or ev is None or ev.term != role.term \
            or not ev.failed

    def _control(self, revision: int) -> dict[str, Any]:
        """The operator's requests at `revision` (View fields); a malformed one is skipped
        with one warning, as if absent."""
        keys = self.shell.keys
        kvs, _ = self.shell.store.range(keys.control, revision=revision)
        out: dict[str, Any] = {"handover": None, "handover_revision": 0, "paused_since": None}
        for kv in kvs:
            try:
                if kv.key == keys.handover:
                    out["handover"] = HandoverRequest.from_json(kv.value)
                    out["handover_revision"] = kv.mod_revision
                elif kv.key == keys.paused:
                    Pause.from_json(kv.value)
                    out["paused_since"] = kv.create_revision
            except MalformedRecord as exc:
                SKIPS.skip("control record", kv.key, str(exc))
        return out

    def _observe_holder(self, rev: int, role: RoleHolder, state: FLState) -> View:
        """Another node holds the role: probe its host, and read who else suspects it."""
        store, keys = self.shell.store, self.shell.keys
        if self.holder_probe.following != role.term:
            self.holder_probe.follow(role.term, role.node, self._endpoints_of(role))
        ev = self.holder_probe.latest
        if ev is None or ev.term != role.term or not gone(ev, time.monotonic(),
                                                          self.shell.opts.timings.evidence_s):
            return View(rev, role, state)
        suspecting = read_suspecting(store, keys, role.term, rev)
        members = frozenset(read_members(store, keys, rev))
        return View(rev, role, state, holder_gone=True, suspected_by=suspecting,
                    live_members=members)

    def _endpoints_of(self, role: RoleHolder) -> tuple[tuple[str, int], ...]:
        """The holder's Flower endpoint and, when it runs one of our members, its etcd one."""
        store = self.shell.store
        out: list[tuple[str, int]] = []
        if role.flower_address and ":" in role.flower_address:
            host, _, port = role.flower_address.rpartition(":")
            out.append((host, int(port)))
        record = read_members(store, self.shell.keys).get(role.node)
        if record is not None:
            etcd_clients = {url.split("//", 1)[-1] for m in store.members()
                            for url in m.client_urls}
            if f"{record.ip}:{record.client_port}" in etcd_clients:
                out.append((record.ip, record.client_port))
        return tuple(out)

    def _drain_role_changes(self) -> None:
        while True:
            try:
                change = self.role_changes.get_nowait()
            except queue.Empty:
                return
            if isinstance(change, Resync):  # history compacted: the delete revision is lost
                self.vacancy_rev = None
            elif change.value is None:  # deleted at this revision: a vacancy everyone ranks at
                if change.revision != self.vacancy_rev:
                    self.vacancy_rev = change.revision
                    self.vacancy_seen = self.vacancy_seen or time.monotonic()
                    self.shell.say(f"aggregator role vacant at revision {change.revision}")
            else:
                self.vacancy_rev, self.vacancy_seen = None, None

    def _ranking(self, revision: int, state: FLState
                 ) -> tuple[tuple[Ranked, ...], int, float | None]:
        """Every node's ranking of the candidates at `revision` (cached: it never changes),
        and the largest mean RTT in it (which paces the rank steps)."""
        if self.ranked is not None and self.ranked[1] == revision:
            return self.ranked
        store, keys = self.shell.store, self.shell.keys
        last = next((e for e in reversed(state.elections) if e.term <= revision), None)
        try:
            members = read_members(store, keys, revision)
            samples = read_samples(store, keys, revision)
            suspected = last is not None and bool(read_suspecting(store, keys, last.term,
                                                                  revision))
        except Compacted:
            log.warning("revision %d compacted; ranking at the current revision", revision)
            members, samples = read_members(store, keys), read_samples(store, keys)
            suspected = False
        previous = last.node if last else None
        if suspected:  # its role was freed on evidence that it is gone: not a candidate
            members.pop(previous, None)  # type: ignore[arg-type]
        ranking = tuple(rank(candidates(members, samples), self.config.ranking_weights, previous))
        max_rtt = max((r.rtt_ms for r in ranking if r.rtt_ms is not None), default=None)
        self.ranked = (ranking, revision, max_rtt)
        return self.ranked

    def _peers_measured(self, revision: int) -> bool:
        """With -a auto, the first election waits until every expected node has samples."""
        store, keys = self.shell.store, self.shell.keys
        members = read_members(store, keys, revision)
        sampled = {s.node for s in read_samples(store, keys, revision)}
        expected = set(self.config.nodes) | {self.shell.name}
        return expected <= (set(members) & sampled)

    # -- watches: they hand changes over (a queue) and wake the loop; they decide nothing ---
    def watch(self) -> None:
        shell = self.shell
        _, rev = shell.store.range(shell.keys.aggregator, keys_only=True)

        def role() -> None:
            for change in shell.store.watch(shell.keys.aggregator, rev + 1, shell.stop):
                if isinstance(change, Resync) or change.key == shell.keys.aggregator:
                    self.role_changes.put(change)
                    shell.wake.set()

        def control() -> None:  # a handover request or a pause: decide again now
            for _ in shell.store.watch(shell.keys.control, rev + 1, shell.stop):
                shell.wake.set()

        def guard() -> None:  # an event written to any run's log: its run, to be read
            prefix = shell.keys.runs
            for change in shell.store.watch(prefix, rev + 1, shell.stop):
                if isinstance(change, Resync) or change.value is None:
                    continue
                run, _, rest = change.key.removeprefix(prefix).partition("/")
                if rest.startswith("events/") and run.isdigit() and 0 < int(run) <= MAX_RUN_ID:
                    self.guarded.put(int(run))
                    shell.wake.set()

        self._thread(role, "role")
        self._thread(control, "control")
        if signers.signer() is not None:
            self._thread(guard, "guard")

    def watch_events(self, run_id: int, revision: int) -> None:
        """Wake the loop on each new event of the active run (a new watch when it changes)."""
        if self._events_watch is not None:
            if self._events_watch[0] == run_id:
                return
            self._events_watch[1].set()
        stop = threading.Event()
        self._events_watch = (run_id, stop)
        events_log = self.runs.log(run_id)

        def events() -> None:
            for _ in events_log.tail(revision + 1, stop):
                if self.shell.stop.is_set():
                    return
                self.shell.wake.set()

        self._thread(events, f"events-{run_id}")

    def _thread(self, fn: Callable[[], None], name: str) -> None:
        def run() -> None:
            origin("watch")
            try:
                fn()
            except Exception:  # noqa: BLE001
                if not self.shell.stop.is_set():
                    log.exception("%s watcher failed; the loop keeps polling", name)

        threading.Thread(target=run, name=name, daemon=True).start()

    def stop(self) -> None:
        if self._events_watch is not None:
            self._events_watch[1].set()
        self.holder_probe.stop()
