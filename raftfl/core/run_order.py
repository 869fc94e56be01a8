"""Which run a federation trains now, and what state each run is in: pure functions.

Runs are served one at a time, in id order: the active run is the lowest id that is neither
completed nor stopped. Completion and stopping are final (both are events in the run's own
log), so every node, from the same logs, picks the same run.
"""

from __future__ import annotations

from collections.abc import Mapping

from raftfl.core.replay import FLState

STATES = ("queued", "running", "completed", "stopped")


def active(states: Mapping[int, FLState]) -> int | None:
    """The run to train now: the lowest id not finished (None: every run is finished)."""
    return min((rid for rid, st in states.items() if not st.finished), default=None)


def run_state(run_id: int, state: FLState, active_id: int | None) -> str:
    """One of STATES. A run that was completed and then also stopped stays completed."""
    if state.completed is not None:
        return "completed"
    if state.stopped is not None:
        return "stopped"
    return "running" if run_id == active_id else "queued"
