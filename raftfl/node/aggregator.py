"""The aggregator role: resume from the log, then record every step of every round, fenced.

`RoundRecorder` is what the Flower strategy calls (see `flower_adapter.RoundHooks`). All its
writes are guarded by the term, so once the role is lost nothing more lands; the first
rejected write marks the recorder deposed and Flower is told to stop.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from raftfl.core.errors import FencedOut, RaftflError
from raftfl.core.events import (
    CheckpointFallback,
    CheckpointSaved,
    FitResults,
    RoundCommitted,
    RoundStarted,
    RunCompleted,
)
from raftfl.core.keys import Keys
from raftfl.core.replay import FLState
from raftfl.etcd import checkpoint
from raftfl.etcd.eventlog import EventLog
from raftfl.etcd.store import Fence, Store
from raftfl.lab.testhooks import hold
from raftfl.task.data import Dataset

log = logging.getLogger(__name__)

KEEP_CHECKPOINTS = 3


@dataclass
class Resume:
    round: int  # the round to run next
    weights: list[np.ndarray]
    sha256: str


def resume_point(store: Store, keys: Keys, events: EventLog, state: FLState, fence: Fence,
                 node: str, initial: Callable[[], list[np.ndarray]]) -> Resume:
    """The last committed model that verifies; older ones (recorded as a fallback) if not."""
    from raftfl.task.model import weights_from_bytes, weights_sha256

    bad: tuple[str, int, str] | None = None
    for rnd in sorted(state.committed, reverse=True):
        sha = state.committed[rnd].model_sha256
        try:
            weights = weights_from_bytes(checkpoint.load(store, keys, sha))
        except (checkpoint.CorruptCheckpoint, ValueError) as exc:
            log.warning("round %d checkpoint unusable: %s", rnd, exc)
            bad = bad or (sha, rnd, str(exc))
            continue
        if bad:
            _record_fallback(events, fence, node, bad, rnd, sha)
        return Resume(rnd + 1, weights, sha)
    weights = initial()
    sha = weights_sha256(weights)
    if bad:
        _record_fallback(events, fence, node, bad, 0, sha)
    return Resume(1, weights, sha)


def _record_fallback(events: EventLog, fence: Fence, node: str, bad: tuple[str, int, str],
                     fallback_round: int, fallback_sha: str) -> None:
    events.append(CheckpointFallback(
        node=node, term=fence.create_revision, bad_sha256=bad[0], round=bad[1],
        fallback_round=fallback_round, fallback_sha256=fallback_sha, reason=bad[2][:200]),
        fence=fence)


class RoundRecorder:
    """Implements `RoundHooks` for one term."""

    def __init__(self, *, store: Store, keys: Keys, events: EventLog, fence: Fence, node: str,
                 rounds: int, resume: Resume, test_set: Dataset,
                 expected_workers: Callable[[], int], client_wait_s: float,
                 no_worker_wait_s: float, on_round: Callable[[str, dict[str, Any]], None]):
        self.store, self.keys, self.events, self.fence = store, keys, events, fence
        self.node, self.rounds = node, rounds
        self.round, self.weights, self.base = resume.round, resume.weights, resume.sha256
        self.test_set = test_set
        self.expected_workers = expected_workers
        self.client_wait_s = client_wait_s
        self.no_worker_wait_s = no_worker_wait_s
        self.on_round = on_round
        self.deposed = False
        self.done = resume.round > rounds

    @property
    def term(self) -> int:
        return self.fence.create_revision

    def _append(self, event: Any) -> None:
        try:
            self.events.append(event, fence=self.fence)
        except FencedOut:
            self.deposed = True
            raise

    def start_round(self, num_available: Callable[[], int]) -> dict[str, Any] | None:
        try:
            return self._start_round(num_available)
        except RaftflError as exc:  # fenced out, or etcd unreachable: this term is over
            log.warning("round %d not started: %s", self.round, exc)
            self.deposed = True
            return None

    def commit(self, weights: list[np.ndarray] | None, results: int, failures: int,
               num_examples: int) -> list[np.ndarray] | None:
        try:
            return self._commit(weights, results, failures, num_examples)
        except RaftflError as exc:
            log.warning("round %d not committed: %s", self.round, exc)
            self.deposed = True
            return None

    def _start_round(self, num_available: Callable[[], int]) -> dict[str, Any] | None:
        if self.deposed or self.done:
            return None
        if not self._wait_for_workers(num_available):
            return None
        hold("round_start", self.round)
        clients = num_available()
        self._append(RoundStarted(node=self.node, term=self.term, round=self.round,
                                  base_model=self.base, clients=clients))
        hold("fit_start", self.round)
        self.on_round("started", {"round": self.round, "clients": clients})
        return {"round": self.round, "term": self.term, "base_model": self.base}

    def _wait_for_workers(self, num_available: Callable[[], int]) -> bool:
        """All live workers for up to `client_wait_s`; at least one for `no_worker_wait_s`."""
        start = time.monotonic()
        note = start
        while not self.deposed:
            have, want = num_available(), self.expected_workers()
            waited = time.monotonic() - start
            if have >= max(1, want) or (have >= 1 and waited >= self.client_wait_s):
                return True
            if waited >= self.no_worker_wait_s:
                log.error("no worker connected within %.0fs", self.no_worker_wait_s)
                return False
            if time.monotonic() - note >= 5:
                note = time.monotonic()
                self.on_round("waiting", {"round": self.round, "connected": have, "expected": want})
            time.sleep(0.05)
        return False

    def _commit(self, weights: list[np.ndarray] | None, results: int, failures: int,
                num_examples: int) -> list[np.ndarray] | None:
        """Count, checkpoint, commit. No result at all: the round is retried."""
        if self.deposed or self.done:
            return None
        from raftfl.task.model import evaluate, weights_to_bytes

        self._append(FitResults(node=self.node, term=self.term, round=self.round,
                                results=results, failures=failures, num_examples=num_examples))
        if weights is None or results == 0:
            self.on_round("retry", {"round": self.round, "failures": failures})
            return None
        hold("checkpoint", self.round)
        weights = [np.asarray(w, dtype=np.float32) for w in weights]
        blob = weights_to_bytes(weights)
        loss, acc = evaluate(weights, self.test_set)
        manifest = checkpoint.save(self.store, self.keys, blob, self.round, self.fence)
        self._append(CheckpointSaved(node=self.node, term=self.term, round=self.round,
                                     sha256=manifest.sha256, size=manifest.size,
                                     chunks=manifest.chunks))
        self._append(RoundCommitted(node=self.node, term=self.term, round=self.round,
                                    model_sha256=manifest.sha256, base_model=self.base,
                                    loss=round(loss, 6), accuracy=round(acc, 6), results=results))
        self.on_round("committed", {"round": self.round, "accuracy": acc, "loss": loss,
                                    "results": results, "failures": failures})
        self._keep_recent(manifest.sha256)
        self.round, self.weights, self.base = self.round + 1, weights, manifest.sha256
        if self.round > self.rounds:
            self.complete()
        return weights

    def complete(self) -> None:
        """Record the end of the run: after this, nobody campaigns again."""
        self._append(RunCompleted(node=self.node, term=self.term, rounds=self.rounds,
                                  model_sha256=self.base))
        self.done = True
        self.on_round("completed", {"rounds": self.rounds, "model": self.base})

    def _keep_recent(self, newest: str) -> None:
        state, _ = self.events.current()
        keep = {c.model_sha256 for r, c in state.committed.items()
                if r > state.last_committed_round - KEEP_CHECKPOINTS} | {newest}
        try:
            checkpoint.prune(self.store, self.keys, keep, self.fence)
        except Exception:  # noqa: BLE001 - pruning is housekeeping, never fatal
            log.exception("checkpoint pruning failed")

