"""The aggregator role: resume from the log, then record every step of every round, fenced.

`AppRecorder` implements the Flower edge's `RoundHooks` (raftfl/flower/hooks.py) for one
term. Every write is guarded by the term, so once the role is lost nothing more lands: the
first rejected write answers False and the user's ServerApp is stopped. A planned handover
(`hand_over()`) stops it the same way, between rounds: the round in flight commits, the next
one never starts. What the hooks record
is what `replay` folds: `run_started` with the initial model (round 0), `round_started`,
`fit_results` (with the updates the grid rejected, by node, and why), `checkpoint_saved`,
`round_committed` (model hash, base model hash, metrics).

Every `snapshot_every` events (at the first of its appends at or past each multiple of it,
counted from its first append) and after `run_completed`, it also stores the run's state as
the run's snapshot (raftfl/core/snapshot.py), fenced like its events, so that nodes
(re)starting fold only the events after it: at most `snapshot_every` - 1 of them, up to twice
that after a failover. A state too big for one snapshot is said once, and this term writes
no more of them.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from raftfl.core.errors import FencedOut, RaftflError
from raftfl.core.events import (
    MAX_NAME,
    MAX_REASON,
    MAX_REJECTED,
    CheckpointFallback,
    CheckpointSaved,
    Event,
    FitResults,
    GridExchange,
    RoundCommitted,
    RoundStarted,
    RunCompleted,
    RunStarted,
)
from raftfl.core.keys import RunKeys
from raftfl.core.replay import FLState
from raftfl.core.snapshot import TooBig
from raftfl.etcd import checkpoint, snapshots
from raftfl.etcd.eventlog import EventLog
from raftfl.etcd.retention import Retention
from raftfl.etcd.store import Fence, Store
from raftfl.node.models import Models

log = logging.getLogger(__name__)
T = TypeVar("T")

KEEP_CHECKPOINTS = 3
SNAPSHOT_EVERY = 1000  # events between two snapshots of the run's state
INLINE_ANSWER_BYTES = 64 * 1024  # a recorded grid answer this small is kept in etcd
MAX_CLIENT_METRICS = 32  # per-client metrics are kept in the log for small federations only


def resume_point(models: Models, store: Store, keys: RunKeys, events: EventLog, state: FLState,
                 fence: Fence, node: str) -> Any:
    """Where a new aggregator picks the run up (`flower.grid.Resume`), or None for a fresh
    run. The newest committed model that verifies; an older one (recorded as a fallback)
    if not; round 1 from the recorded initial model if no round was committed."""
    from raftfl.flower.codec import CodecError, arrays_from_bytes
    from raftfl.flower.grid import Resume

    points = [(rnd, c.model_sha256, c.state_sha256) for rnd, c in sorted(state.committed.items(),
                                                                         reverse=True)]
    if state.initial_model:
        points.append((0, state.initial_model, state.initial_state))
    bad: tuple[str, int, str] | None = None
    for rnd, sha, state_sha in points:
        try:
            arrays = arrays_from_bytes(models.load(store, keys, sha))
        except (checkpoint.CorruptCheckpoint, CodecError) as exc:
            log.warning("round %d checkpoint unusable: %s", rnd, exc)
            bad = bad or (sha, rnd, str(exc))
            continue
        if bad:
            events.append(CheckpointFallback(
                node=node, term=fence.create_revision, bad_sha256=bad[0], round=bad[1],
                fallback_round=rnd, fallback_sha256=sha, reason=bad[2][:200]), fence=fence)
        return Resume(rnd + 1, arrays, _app_state(models, store, keys, rnd, state_sha))
    if bad:
        raise RaftflError(f"no usable checkpoint: {bad[2]}")
    return None


def _app_state(models: Models, store: Store, keys: RunKeys, rnd: int, sha: str) -> bytes:
    """The ServerApp's durable state committed with round `rnd` (b"": none, or unusable: the
    app then starts that part afresh, said once here)."""
    if not sha:
        return b""
    try:
        return models.load(store, keys, sha)
    except checkpoint.CorruptCheckpoint as exc:
        log.warning("round %d: the ServerApp's recorded state is unusable, it starts afresh: "
                    "%s", rnd, exc)
        return b""


class AppRecorder:
    """`RoundHooks` for one term, with fenced etcd writes."""

    def __init__(self, *, store: Store, keys: RunKeys, events: EventLog, fence: Fence, node: str,
                 models: Models,
                 workers: Callable[[], int], on_event: Callable[[Event], None],
                 on_halt: Callable[[], None] = lambda: None,
                 node_name: Callable[[int], str | None] = lambda node_id: None,
                 hold: Callable[[str, int], None] = lambda phase, rnd: None):
        self.store, self.keys, self.events, self.fence, self.node = store, keys, events, fence, node
        self.models = models
        self.workers = workers
        self.on_event = on_event
        self.on_halt = on_halt  # wakes the HA loop once a handover has stopped the rounds
        self.node_name = node_name  # a Flower node id -> the node's name, if known
        self.hold = hold  # the lab's fault hooks: pause at a phase of a round
        self.deposed = False
        self.handing_over = False  # a planned handover: start no further round
        self.halted = threading.Event()  # ...and the ServerApp has reached a round boundary
        self.failure: RaftflError | None = None  # why a write failed, other than the fence
        self.retention = Retention(store)
        self.base: str | None = None  # hash of the model the next round starts from
        self.last_round = 0
        self.rounds = 0
        self.progress = 0  # commits and grid calls recorded by this term's ServerApp run
        self.snapshot_every = SNAPSHOT_EVERY
        self._next_snapshot: float | None = None  # the seq from which the next one is due (set
        # by the first append; infinite once the state was too big for one)

    @property
    def term(self) -> int:
        return self.fence.create_revision

    def _append(self, *events: Event) -> bool:
        """Record `events` in one fenced transaction (all or none: one Raft entry)."""
        if self.deposed:
            return False
        try:
            seqs = self.events.append_all(events, fence=self.fence)
        except FencedOut:
            self.deposed = True
            return False
        except RaftflError as exc:  # etcd unreachable or full: this term is over
            log.warning("%s not recorded: %s", ", ".join(e.type for e in events), exc)
            self.failure, self.deposed = exc, True
            return False
        for event in events:
            self.on_event(event)
        due = [self._snapshot_due(seq, event) for seq, event in zip(seqs, events, strict=True)]
        if any(due):
            self._snapshot()
        return True

    def _snapshot_due(self, seq: int, event: Event) -> bool:
        """At or past the next multiple of `snapshot_every` (or at the run's end), unless the
        state was too big for one earlier this term."""
        every = self.snapshot_every
        if self._next_snapshot is None:
            self._next_snapshot = (seq // every + 1) * every
        if self._next_snapshot == math.inf or (seq < self._next_snapshot
                                               and not isinstance(event, RunCompleted)):
            return False
        self._next_snapshot = (seq // every + 1) * every
        return True

    def _snapshot(self) -> None:
        """Store the run's state as its snapshot (housekeeping: a failure only costs readers
        time, never the round)."""
        try:
            state, revision = self.events.current(sweep=True)
            snapshots.save(self.store, self.keys, state, revision, self.fence, self.node)
        except TooBig as exc:
            log.info("run %d: no more snapshots of its state this term: %s", self.keys.run_id, exc)
            self._next_snapshot = math.inf
        except FencedOut:
            self.deposed = True
        except Exception:  # noqa: BLE001 - housekeeping, never fatal
            log.exception("run %d: snapshot not written", self.keys.run_id)

    def hand_over(self) -> None:
        """Start no further round (the one in flight still commits); the ServerApp stops at
        its next `round_started`, or an own-loop one after its next recorded grid call, which
        sets `halted`."""
        self.handing_over = True

    def _halt(self) -> bool:
        if self.handing_over:
            self.halted.set()
            self.on_halt()
        return self.handing_over

    # -- RoundHooks --------------------------------------------------------------------------
    def round_started(self, server_round: int) -> bool:
        if self._halt():
            return False
        self.hold("round_start", server_round)
        clients = self.workers()
        if self._halt():  # asked while waiting for the workers
            return False
        ok = self._append(RoundStarted(node=self.node, term=self.term, round=server_round,
                                       base_model=self.base or "", clients=clients))
        self.hold("fit_start", server_round)
        return ok

    def train_done(self, server_round: int, report: Any) -> None:
        examples = sum(int(_flat(c.get("metrics", {})).get("num-examples", 0) or 0)
                       for c in report.client_metrics)
        self._append(FitResults(node=self.node, term=self.term, round=server_round,
                                results=report.results, failures=report.failures,
                                num_examples=examples, rejected=self._rejected(report)))

    def _rejected(self, report: Any) -> dict[str, str]:
        """The updates the grid refused (`UPDATE_REJECTED` errors): node name -> reason."""
        from raftfl.flower.grid import UPDATE_REJECTED

        out: dict[str, str] = {}
        for error in getattr(report, "errors", []):
            if error.get("code") != UPDATE_REJECTED or len(out) >= MAX_REJECTED:
                continue
            node_id = int(error.get("node_id", 0))
            who = (self.node_name(node_id) or str(node_id))[:MAX_NAME]
            out[who] = str(error.get("reason") or "")[:MAX_REASON]
        return out

    def commit(self, server_round: int, arrays: Any, report: Any, state: bytes = b"") -> bool:
        from raftfl.flower.codec import arrays_to_bytes

        if self.deposed:
            return False
        self.hold("checkpoint", server_round)
        saved = self._saved(f"round {server_round} checkpoint", lambda: self.models.save_all(
            self.store, self.keys, [arrays_to_bytes(arrays), *([state] if state else [])],
            server_round, self.fence))
        if saved is None:
            return False
        manifest, state_sha = saved[0], saved[1].sha256 if state else ""
        if server_round == 0:
            self.rounds = int(getattr(report, "num_rounds", 0) or 0)
            ok = self._append(RunStarted(node=self.node, term=self.term, rounds=self.rounds,
                                         initial_model=manifest.sha256, state_sha256=state_sha))
        else:
            metrics = _round_metrics(report)
            loss, acc = _headline(metrics)
            ok = self._append(
                CheckpointSaved(node=self.node, term=self.term, round=server_round,
                                sha256=manifest.sha256, size=manifest.size,
                                chunks=manifest.chunks),
                RoundCommitted(node=self.node, term=self.term, round=server_round,
                               model_sha256=manifest.sha256, base_model=self.base or "",
                               loss=loss, accuracy=acc,
                               results=report.train.results if report.train else 0,
                               metrics=metrics, state_sha256=state_sha))
        if ok:
            self.progress += 1
            self.base, self.last_round = manifest.sha256, server_round
            self._keep_recent({manifest.sha256, state_sha} - {""})
            try:
                self.retention.after_round(server_round)
            except Exception:  # noqa: BLE001 - housekeeping, never fatal
                log.exception("retention after round %d failed", server_round)
        return ok

    def exchange(self, call: int, kind: str, request: str, answer: bytes, replies: int,
                 start_state: bytes = b"") -> bool:
        """Record grid call `call` of a ServerApp with its own loop (flower/journal.py): the
        answer (and with call 1 the state the app started from) stored as models, their
        hashes in a fenced `grid_exchange`."""
        if self.deposed:
            return False
        saved = self._saved(f"grid call {call}", lambda: (
            self._save_answer(answer, call),
            self._save_answer(start_state, call) if start_state else ""))
        if saved is None:
            return False
        sha, start = saved
        ok = self._append(GridExchange(node=self.node, term=self.term, call=call, kind=kind,
                                       request=request, answer=sha, replies=replies,
                                       start_state=start))
        self.progress += ok
        return ok and not self._halt()  # a planned handover stops the app after a call

    def _saved(self, what: str, save: Callable[[], T]) -> T | None:
        """`save()`'s result, or None when this term's writes are over (fenced out, or etcd
        failing: said once, and the term ends)."""
        try:
            return save()
        except FencedOut:
            self.deposed = True
        except RaftflError as exc:
            log.warning("%s not saved: %s", what, exc)
            self.failure, self.deposed = exc, True
        return None

    def _save_answer(self, blob: bytes, call: int) -> str:
        """A small answer (node ids, the start state) goes into etcd itself: at a run's first
        calls no peer may have registered its model service yet, and a successor must be able
        to replay them; replies carrying models go to the model services."""
        if len(blob) <= INLINE_ANSWER_BYTES:
            return checkpoint.save(self.store, self.keys, blob, call, self.fence).sha256
        return self.models.save(self.store, self.keys, blob, call, self.fence).sha256

    def complete(self) -> bool:
        """Record the end of the run: after this, nobody campaigns again. A ServerApp that
        committed no model (its own loop) completes with none."""
        return self._append(RunCompleted(node=self.node, term=self.term, rounds=self.last_round,
                                         model_sha256=self.base or ""))

    def _keep_recent(self, newest: set[str]) -> None:
        """Prune the run's checkpoints to the last `KEEP_CHECKPOINTS` rounds' models and
        states (and the initial ones until round 1 commits)."""
        state, _ = self.events.current()
        keep = {sha for r, c in state.committed.items()
                if r > state.last_committed_round - KEEP_CHECKPOINTS
                for sha in (c.model_sha256, c.state_sha256) if sha} | newest \
            | {sha for ex in state.exchanges.values()  # replayed by any successor
               for sha in (ex.answer, ex.start_state) if sha}
        if state.initial_model and not state.committed:
            keep |= {state.initial_model, state.initial_state} - {""}
        try:
            checkpoint.prune(self.store, self.keys, keep, self.fence)
        except Exception:  # noqa: BLE001 - pruning is housekeeping, never fatal
            log.exception("checkpoint pruning failed")


def _flat(metrics: dict[str, Any]) -> dict[str, Any]:
    """{record name: {key: value}} -> {key: value} (the first record wins a clash)."""
    out: dict[str, Any] = {}
    for record in metrics.values():
        if isinstance(record, dict):
            for k, v in record.items():
                out.setdefault(k, v)
    return out


def _round_metrics(report: Any) -> dict[str, Any]:
    """What a round measured, for the log: the aggregated train and evaluation metrics, the
    user's `evaluate_fn` result, and (small federations) each client's own metrics."""
    out: dict[str, Any] = {}
    if report.train is not None and report.train.aggregated:
        out["train"] = report.train.aggregated
    if report.evaluate_clientapp:
        out["evaluate_clientapp"] = report.evaluate_clientapp
    if report.evaluate_serverapp:
        out["evaluate_serverapp"] = report.evaluate_serverapp
    clients = (report.train.client_metrics if report.train else []) + report.client_metrics
    if 0 < len(clients) <= MAX_CLIENT_METRICS:
        out["clients"] = [{"node_id": str(c.get("node_id")), **_flat(c.get("metrics", {}))}
                          for c in clients]
    return _finite(out)


def _finite(value: Any) -> Any:
    """JSON has no NaN/inf: such values are recorded as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _headline(metrics: dict[str, Any]) -> tuple[float | None, float | None]:
    """(loss, accuracy) for the one-line summaries: the central evaluation's, else the
    federated evaluation's."""
    for source, loss_key, acc_key in (("evaluate_serverapp", "loss", "accuracy"),
                                      ("evaluate_clientapp", "eval_loss", "eval_acc"),
                                      ("evaluate_clientapp", "loss", "accuracy")):
        record = metrics.get(source) or {}
        if loss_key in record or acc_key in record:
            loss, acc = record.get(loss_key), record.get(acc_key)
            return (float(loss) if isinstance(loss, int | float) else None,
                    float(acc) if isinstance(acc, int | float) else None)
    return None, None
