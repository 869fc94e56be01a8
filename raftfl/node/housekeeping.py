"""The cycle's housekeeping: each `Chore` that `decide()` names (raftfl/core/decide.py), and
the little state the chores keep (the run this node has taken up, when it last checked etcd's
Raft leadership). It runs in the HA loop's thread, as part of `act`.
"""

from __future__ import annotations

import time

from raftfl.core.decide import Chore, View
from raftfl.etcd import checkpoint
from raftfl.etcd.member import EtcdMember
from raftfl.node import lifecycle
from raftfl.node.aggregator import AggregatorRole
from raftfl.node.observer import Observer
from raftfl.node.runs import Runs
from raftfl.node.shell import Shell
from raftfl.node.voters import Voters

LEADER_CHECK_S = 5.0  # how often a serving aggregator makes sure it does not lead etcd


class Housekeeping:
    def __init__(self, shell: Shell, runs: Runs, observer: Observer, aggregator: AggregatorRole,
                 voters: Voters):
        self.shell, self.runs, self.observer = shell, runs, observer
        self.aggregator, self.voters = aggregator, voters
        self.active_run: int | None = None  # the run whose app and log this node has taken up
        self._leader_checked = 0.0

    def leader_check_due(self, member: EtcdMember | None, now: float) -> bool:
        return member is not None and now - self._leader_checked > LEADER_CHECK_S

    def do(self, chore: Chore, view: View, member: EtcdMember | None) -> EtcdMember | None:
        """Carry one chore out; returns an etcd member for the node to adopt (an upgrade's)."""
        match chore:
            case Chore.ACTIVATE_RUN:
                self._activate(view.run, view.revision)
            case Chore.RETIRE_SERVER:
                self.aggregator.retire()
            case Chore.SAVE_FINISHED:
                self._save_finished_runs()
            case Chore.MOVE_LEADER:
                self.move_leader_away(member)
            case Chore.TEND_VOTERS:
                return self.voters.tick(member)
        return None

    def move_leader_away(self, member: EtcdMember | None) -> None:
        self._leader_checked = time.monotonic()
        if member is not None:
            lifecycle.move_leader_away(self.shell.store, member, self.shell.say)

    def _activate(self, run_id: int | None, revision: int) -> None:
        """The active run changed: unpack and import its app, watch its log."""
        self.active_run = run_id
        if run_id is None:
            return
        run_app = self.runs.app(run_id)
        if run_app.flower_app is None:
            self.shell.say(f"run {run_id}: its app cannot be used ({run_app.apps.exception()})")
        else:
            spec = run_app.spec
            assert spec is not None
            self.shell.say(f"run {run_id}: app {spec.app}"
                           + (f", {spec.rounds} rounds" if spec.rounds else ""))
        self.observer.watch_events(run_id, revision)

    def _save_finished_runs(self) -> None:
        """Write each newly completed run's final model to <data-dir>/runs/<id>/ (not with
        --exit-on-complete, which writes the last one's to the data dir as it leaves)."""
        opts, say = self.shell.opts, self.shell.say
        for run_id, state in list(self.runs.finished.items()):
            out = opts.dir / "runs" / str(run_id)
            if state.completed is not None and not opts.exit_on_complete \
                    and not (out / "result.json").exists():
                try:
                    path = self.runs.save_final_model(run_id, state, out, opts.name)
                    say(f"run {run_id} completed: final model "
                        f"{state.completed.model_sha256[:12]} verified, saved to {path}"
                        if path else f"run {run_id} completed (its ServerApp committed no "
                        f"model): result in {out}")
                except checkpoint.CorruptCheckpoint as exc:
                    say(f"run {run_id} completed, but its final model is unusable: {exc}")
            del self.runs.finished[run_id]
