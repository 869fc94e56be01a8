"""The aggregator role: campaign, record the election, serve the run's ServerApp, hand over,
step down.

Every write of the role is fenced by the term the `Election` owns. The ServerApp runs in a
thread of its own (raftfl/flower/host.py) and reports back through the `AppRecorder`; all
other state here belongs to the HA loop's thread.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from raftfl.core.decide import Decision, View
from raftfl.core.errors import FencedOut, NodeFatal, RaftflError
from raftfl.core.events import AggregatorElected, Event, Handover, RunStopped, StepDown, describe
from raftfl.core.maintenance import HandoverRequest
from raftfl.core.member_record import MemberInfo
from raftfl.core.records import MalformedRecord
from raftfl.core.specs import ClusterConfig
from raftfl.etcd import checkpoint
from raftfl.etcd.eventlog import EventLog
from raftfl.etcd.store import EtcdNoSpace
from raftfl.node import runapp
from raftfl.node.election import Election
from raftfl.node.models import Models
from raftfl.node.recorder import AppRecorder, resume_point
from raftfl.node.runs import Runs
from raftfl.node.session import Session
from raftfl.node.shell import Shell
from raftfl.node.worker import WorkerRunner

if TYPE_CHECKING:  # Flower is imported when a node first serves, not at start-up
    from raftfl.flower.fleet import FleetServer
    from raftfl.flower.host import ServerAppHost
    from raftfl.flower.screen import ScreenPolicy

log = logging.getLogger(__name__)

MAX_APP_FAILURES = 3  # a ServerApp failing this often in a row, recording nothing: run stopped

SERVE_RETRY_S = 10.0  # a Flower port that stays busy this long: give the role up (exit)
STOP_JOIN_S = 5.0  # how long a stopped run's ServerApp thread gets to end


class AggregatorRole:
    def __init__(self, shell: Shell, election: Election, session: Session, runs: Runs,
                 models: Models, worker: WorkerRunner, config: ClusterConfig):
        self.shell, self.election, self.session = shell, election, session
        self.runs, self.models, self.worker = runs, models, worker
        self.config = config  # as this node read it at start-up
        self._failures = 0  # the ServerApp's failures in a row, with no progress in between
        self.server: ServerAppHost | None = None  # the ServerApp of our term and the active run
        self.recorder: AppRecorder | None = None
        self.fleet: FleetServer | None = None  # our fleet endpoint, while we serve
        self._campaigns: dict[int, tuple[Decision, View]] = {}
        self._predecessor: str | None = None  # the aggregator before our term
        self._handed_over_by: str | None = None  # ...when it handed the role to us (alive)
        self._serve_failing_since: float | None = None

    @property
    def serving_term(self) -> int | None:
        return self.election.term if self.server is not None else None

    @property
    def serving_run(self) -> int | None:
        return self.server.grid.run_id if self.server is not None else None

    def _log(self, run_id: int | None) -> EventLog:
        return self.runs.log(run_id) if run_id is not None else self.runs.join_log()

    # -- election ---------------------------------------------------------------------------
    def campaign(self, d: Decision, view: View, vacancy_seen: float | None) -> bool:
        """Create the role key if it is absent; True once won and recorded."""
        lease = self.session.lease
        if lease is None or not self.session.valid:
            return False
        term = self.election.campaign(lease)
        if term is None:
            return False
        self._campaigns[term] = (d, view)
        h = view.handover
        self._handed_over_by = h.holder if h is not None and h.to == self.shell.name else None
        self.shell.say(f"won the election: term {term}")
        return self.record_election(term, view, vacancy_seen)

    def record_election(self, term: int, view: View, vacancy_seen: float | None) -> bool:
        """Append `aggregator_elected`, fenced; True once recorded.

        Also the repair for a term held without its record (a crash or an outage between
        the create and the append): without it, replay would not accept the term's commits.
        """
        shell, fence = self.shell, self.election.fence
        assert fence is not None and fence.create_revision == term and view.run is not None
        d, at = self._campaigns.pop(term, (None, view))
        me = next((r for r in at.ranking if r.node == shell.name), None)
        try:
            self.runs.log(view.run).append(AggregatorElected(
                node=shell.name, term=term, flower_address=shell.opts.flower_address,
                rank=(d.rank or 0) if d else 0, score=me.score if me else None,
                revision=at.ranked_at or at.revision,
                ranking=[r.to_dict() for r in at.ranking], previous=at.state.aggregator,
                vacant_since=time.time() - (time.monotonic() - vacancy_seen)
                if vacancy_seen else None), fence=fence)
        except FencedOut:
            return False
        try:  # our evidence against our predecessors has served its purpose (the others'
            # is theirs to delete under RBAC: each node clears its own as it publishes anew)
            shell.store.delete_prefix(shell.keys.suspicions_of(shell.name))
            self._clear_handover(term)
        except RaftflError:
            pass
        shell.say(f"elected aggregator, term {term}"
                  + (f" (rank {d.rank}, score {me.score:.2f})" if d and me else "")
                  + f" (run {view.run})")
        shell.wake.set()
        return True

    def _clear_handover(self, term: int) -> None:
        """A handover request of an earlier term has served its purpose (or was overtaken):
        delete it, unless someone wrote a new one meanwhile."""
        store, keys = self.shell.store, self.shell.keys
        kv = store.get(keys.handover)
        if kv is None:
            return
        try:
            stale = HandoverRequest.from_json(kv.value).term < term
        except MalformedRecord:
            stale = True
        if stale:
            store.delete_if_unchanged(keys.handover, kv.mod_revision)

    # -- a planned handover -----------------------------------------------------------------
    def hand_over(self, d: Decision, view: View) -> bool:
        """A planned handover of our term: the round in flight commits, no further round
        starts; then `handover` is recorded and the role key deleted (both fenced on the
        term), so the named node campaigns at once instead of waiting out our lease.
        Returns True once resigned."""
        assert d.term is not None and view.handover is not None
        host, recorder = self.server, self.recorder
        if host is not None and recorder is not None and recorder.term == d.term:
            recorder.hand_over()
            if host.state == "running" and not recorder.halted.is_set():
                return False  # the ServerApp wakes us (on_halt) when it reaches the next round
            if not host.join(timeout=STOP_JOIN_S):
                return False  # still ending: the next cycle looks again
            if host.state == "completed" and recorder.complete():
                self._completed(recorder)
        self.server = self.recorder = None
        if host is not None:
            host.stop()  # its fleet server: the workers move on to the next holder
            self.fleet = None
        h = view.handover
        last = recorder.last_round if recorder is not None else view.state.last_committed_round
        try:
            self._log(view.run).append(Handover(
                node=self.shell.name, term=d.term, to=h.to, round=last, ranked=h.ranked,
                requested_by=h.by), fence=self.election.fence)
        except FencedOut:
            self.election.step_down()
            return False
        if self.election.resign():
            self.shell.say(f"handed term {d.term} over to {h.to} after round {last}: resigned")
        return True

    # -- serving ----------------------------------------------------------------------------
    def serve(self, term: int, run_id: int) -> None:
        """Make sure the user's ServerApp runs for `term`, resuming from the log.

        A ServerApp that ended within the same term (an etcd outage outlasted its retries,
        or it failed) is joined first, and only then is the log re-read, so a round the old
        one committed is never committed again. This node's own ClientApp trains too.
        """
        shell, opts = self.shell, self.shell.opts
        fence = self.election.fence
        assert fence is not None and fence.create_revision == term
        host, recorder = self.server, self.recorder
        if host is not None and recorder is not None and recorder.term == term:
            if host.state == "running":
                return
            if host.state == "completed" and recorder.complete():
                self._completed(recorder)
                return
            if isinstance(recorder.failure, EtcdNoSpace):
                raise recorder.failure  # the loop reports it and steps down
            why = f" ({type(host.error).__name__}: {host.error})" if host.error else ""
            # The same failure again and again, with nothing recorded in between: the app's
            # own, as deterministic as its record (Flower marks such a run failed).
            self._failures = self._failures + 1 if recorder.progress == 0 else 1
            shell.say(f"ServerApp {host.state}{why}; restarting it from the log"
                      if self._failures < MAX_APP_FAILURES else
                      f"ServerApp {host.state}{why} {MAX_APP_FAILURES} times without progress")
            host.stop()
            if not host.join(timeout=opts.round_timeout):
                raise RaftflError("the previous ServerApp thread did not stop")
            self.server = None
            if self._failures >= MAX_APP_FAILURES:
                self._failures = 0
                reason = (f"its ServerApp failed {MAX_APP_FAILURES} times without progress"
                          f"{why}")[:500]
                self.runs.log(run_id).append(RunStopped(node=shell.name, reason=reason))
                shell.say(f"run {run_id} stopped: {reason}")
                return
        events = self.runs.log(run_id)
        state, _ = events.current()
        if state.finished:
            return
        self._predecessor = next((e.node for e in reversed(state.elections) if e.term < term), None)
        if self._predecessor == self._handed_over_by:  # alive, and about to train for us
            self._predecessor = None
        run_app = self.runs.app(run_id)
        try:
            server_app, _ = run_app.apps.result()
        except Exception as exc:  # noqa: BLE001 - the app's fault: skip the run, say why
            reason = f"its app cannot be used: {type(exc).__name__}: {exc}"[:500]
            events.append(RunStopped(node=shell.name, reason=reason))
            shell.say(f"run {run_id} stopped: {reason}")
            return
        spec = run_app.spec
        assert spec is not None
        from raftfl.flower.fleet import FleetServer
        from raftfl.flower.grid import RaftGrid
        from raftfl.flower.host import ServerAppHost
        from raftfl.flower.journal import Exchange, Journal

        try:
            if self.fleet is None or self.fleet.stopped:
                host_ip, _, port = opts.flower_address.rpartition(":")
                self.fleet = FleetServer(host_ip, int(port),
                                         identify=runapp.fleet_identity).start()
            # Our own worker trains too; told only now, its first connection finds the port
            # open (one refused costs it a reconnect wait, and the round waits for it).
            self.worker.follow(opts.flower_address, term)
            keys = shell.keys.run(run_id)
            resume = resume_point(self.models, shell.store, keys, events, state, fence, shell.name)
            self.recorder = AppRecorder(
                store=shell.store, keys=keys, events=events, fence=fence, models=self.models,
                node=shell.name, workers=self._wait_for_workers, on_event=self._on_event,
                on_halt=shell.wake.set, node_name=self._node_name, hold=shell.hooks.hold)
            if resume is not None:
                self.recorder.base = state.committed[resume.next_round - 1].model_sha256 \
                    if resume.next_round > 1 else state.initial_model
                self.recorder.last_round = resume.next_round - 1
            recorder = self.recorder
            journal = Journal(
                {call: Exchange(ex.call, ex.kind, ex.request, ex.answer, ex.term,
                                ex.start_state)
                 for call, ex in state.exchanges.items()},
                load=lambda sha: self.models.load(shell.store, keys, sha),
                record=recorder.exchange)
            grid = RaftGrid(self.fleet, run_id=run_id, term=term, hooks=recorder,
                            resume=resume, screen=self._screen_policy(), journal=journal)
            shell.say(f"serving run {run_id} ({spec.app}) from round "
                      f"{resume.next_round if resume else 0} on {opts.flower_address}"
                      + (f" (model {self.recorder.base[:12]})" if self.recorder.base else ""))
            self.server = ServerAppHost(server_app, grid, spec.run_config).start()
            self._serve_failing_since = None
        except FencedOut:
            self.step_down("fenced out while resuming", run_id)
        except OSError as exc:  # e.g. the Flower port is not free yet
            self.fleet = None
            now = time.monotonic()
            self._serve_failing_since = self._serve_failing_since or now
            if now - self._serve_failing_since > SERVE_RETRY_S:
                self._serve_failing_since = None
                self.election.resign()
                raise NodeFatal(f"cannot serve on {opts.flower_address} for "
                                f"{SERVE_RETRY_S:.0f}s ({exc}): resigned the role") from exc
            shell.say(f"cannot serve yet ({exc}); retrying")

    def _completed(self, recorder: AppRecorder) -> None:
        """After `run_completed`: keep only the final model of the run's checkpoints (none
        for a ServerApp that committed none)."""
        try:
            checkpoint.prune(self.shell.store, recorder.keys, {recorder.base} if recorder.base else set(),
                             recorder.fence)
        except RaftflError as exc:
            log.info("pruning the completed run's checkpoints failed: %s", exc)

    def retire(self) -> None:
        """The ServerApp of a run that is no longer active ends: at once if the run was
        stopped (it records nothing more), and is forgotten if it completed."""
        host, recorder = self.server, self.recorder
        if host is None:
            return
        self.server = self.recorder = None
        if recorder is not None:
            recorder.deposed = True  # its hooks' next write is refused
        if host.state == "running":
            host.stop()  # stops the fleet server too: serve() starts a new one
            self.fleet = None
            self.shell.say(f"run {host.grid.run_id} stopped: ServerApp ended")
            if not host.join(timeout=STOP_JOIN_S):
                log.warning("the stopped run's ServerApp thread is still running")

    def step_down(self, reason: str, run_id: int | None) -> None:
        """Stop serving at once. Fencing already guarantees nothing more commits."""
        server, recorder = self.server, self.recorder
        self.server = None
        self.election.step_down()
        if server is None:
            return
        if recorder is not None:
            recorder.deposed = True
        server.stop()
        self.fleet = None
        self.shell.say(f"stepped down: {reason}")
        if recorder is not None and run_id is not None:
            try:
                self.runs.log(run_id).append(StepDown(node=self.shell.name, term=recorder.term,
                                                      reason=reason))
            except RaftflError:
                pass

    def lease_lost(self) -> None:
        """From the keepalive thread: stop serving before etcd expires the lease. It only
        stops the server (thread-safe) and wakes the loop; the loop steps down."""
        server = self.server
        if server is not None:
            server.stop()
        self.shell.wake.set()

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()

    # -- the recorder's callbacks (in the ServerApp's thread: they only read) ---------------
    def _wait_for_workers(self) -> int:
        """Before each round: every live node's worker (ours too) for up to `client_wait`
        seconds; our predecessor's record outlives it by up to one TTL, so it is not waited
        for. Returns how many are connected."""
        fleet = self.fleet
        if fleet is None:
            return 0
        deadline = time.monotonic() + self.shell.opts.client_wait
        while not fleet.stopped:  # stopped: we stepped down, the hooks' next write fails
            connected = fleet.node_ids()
            handing_over = self.recorder is not None and self.recorder.handing_over
            if not self._missing_workers(set(connected)) or time.monotonic() >= deadline \
                    or handing_over:  # the round will not start: hand over now
                return len(connected)
            time.sleep(0.05)
        return 0

    def _missing_workers(self, connected: set[int]) -> set[str]:
        recorder = self.recorder
        first = recorder is not None and recorder.keys.run_id == 1 and recorder.last_round == 0
        return missing_workers(self.session.members,  # swapped whole, never changed in place
                               connected, initial=self.config.nodes if first else (),
                               predecessor=self._predecessor)

    def _member_by_id(self, node_id: int) -> MemberInfo | None:
        """The live member record of the node whose Flower node id is `node_id`."""
        return next((m for m in list(self.session.members.values())
                     if runapp.node_id(m.node) == node_id), None)

    def _screen_policy(self) -> ScreenPolicy:
        """The update screen's bounds: the cluster's, as its creator fixed them (no node's
        flags can loosen them; the copy this node read at start-up, so a later rewrite of
        the key does not either), each node's own declaration (which can only tighten
        them), and our --max-update-norm."""
        from raftfl.flower.screen import ScreenPolicy

        return ScreenPolicy(self._declared_examples, self.shell.opts.max_update_norm,
                            self.config.max_examples, self.config.outlier_factor)

    def _declared_examples(self, node_id: int) -> int | None:
        """What the worker's node declared for its data (`--max-examples`), if anything."""
        member = self._member_by_id(node_id)
        return member.max_examples if member is not None and member.max_examples else None

    def _node_name(self, node_id: int) -> str | None:
        member = self._member_by_id(node_id)
        return member.node if member is not None else None

    def _on_event(self, event: Event) -> None:
        self.shell.say(describe(event), event=event.type)


def missing_workers(members: Mapping[str, MemberInfo], connected: set[int], *,
                    initial: Iterable[str] = (), predecessor: str | None = None) -> set[str]:
    """The nodes a round still waits for: live members but our predecessor whose worker is
    not `connected` (Flower node ids). `initial`: before the first run's first commit, the
    nodes the cluster was created with: they may still be starting (loading their app's
    libraries before they register), and Flower samples only those connected; each of them
    is waited for until its member record is held too, which carries the examples it
    declared (an update is screened against them)."""
    wanted = {name for name, m in members.items() if not m.finished}
    wanted |= {name for name in initial if name not in members or not members[name].finished}
    wanted.discard(predecessor)
    return {name for name in wanted
            if runapp.node_id(name) not in connected or name not in members}
