"""`raftfl.start`: the one line a user changes in a ServerApp.

    result = strategy.start(grid=grid, initial_arrays=arrays, num_rounds=n, evaluate_fn=f, ...)
becomes
    result = raftfl.start(strategy, grid=grid, initial_arrays=arrays, num_rounds=n, evaluate_fn=f, ...)

Under plain Flower (any Grid but a `RaftGrid`) it is exactly `strategy.start(...)`.

Under a `RaftGrid` it runs Flower's own round loop (train, federated evaluation, central
`evaluate_fn`, as in `Strategy.start` of flwr 1.42.0) through the strategy's public methods
only, but resumable: it starts at the grid's resume round from the grid's resume arrays, so
`configure_train` and `evaluate_fn` see GLOBAL round numbers, and it reports every step to the
grid's `RoundHooks` (hooks.py), which record it (fenced) in etcd:

* a fresh run commits round 0 (the initial arrays and `evaluate_fn(0, ...)`), so a successor
  resumes round 1 from the same initial model;
* `round_started(r)` before each training attempt; False means deposed: stop;
* `train_done(r, TrainReport)` after each training attempt, failures counted (error replies,
  updates the grid rejected among them, and replies that never came);
* a round whose training got no result at all is retried with the same arrays, up to
  `TRAIN_ATTEMPTS` times (raftfl's rule; Flower would move on with unchanged arrays);
* an aggregate that is not finite in the model's dtype is never committed: the strategy
  aggregates again without the largest updates (`_aggregate_finite`), and the ones left out
  are reported as refused;
* `commit(r, arrays, RoundReport)` once the round's evaluation is done; False means deposed.

An unmodified ServerApp needs no raftfl line: a node that hosts apps calls
`route_strategy_start()`, after which `strategy.start(grid=...)` (Flower's own, inherited by
every flwr 1.42 strategy from `Strategy`) runs this same loop when its grid is a `RaftGrid`,
and Flower's loop on any other grid.

What is resumed: the round number, the arrays, and the ServerApp's durable state (durable.py):
every commit carries the strategy's own state (FedAdam's moments, FedAvgM's momentum, a DP
wrapper's clipping norm, an accountant's `state_dict()`, the sampling RNGs) and the app's
`context.state`, and a successor restores them into its freshly built strategy before its
first round. What is not: state durable.py cannot capture (named once, at the first commit)
and the `Result` metrics of rounds run by earlier aggregators (they are in the event log).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.exception import InconsistentMessageReplies
from flwr.serverapp.strategy import Result, Strategy

from raftfl.flower import durable
from raftfl.flower.codec import arrays_sha256
from raftfl.flower.grid import AggregatorStopped, RaftGrid, rejected
from raftfl.flower.hooks import RoundReport, TrainReport
from raftfl.flower.screen import aggregate_fault, update_norm

log = logging.getLogger(__name__)

TRAIN_ATTEMPTS = 3
RETRY_WAIT_S = 1.0
MAX_LEFT_OUT = 8  # re-aggregations a non-finite aggregate may cost in one attempt

EvaluateFn = Callable[[int, ArrayRecord], MetricRecord | None]


class NoTrainResults(RuntimeError):
    """Every training attempt of a round came back without a single result."""


def start(strategy: Strategy, grid: Grid, initial_arrays: ArrayRecord, num_rounds: int = 3,
          timeout: float = 3600, train_config: ConfigRecord | None = None,
          evaluate_config: ConfigRecord | None = None,
          evaluate_fn: EvaluateFn | None = None) -> Result:
    """`strategy.start(...)`, resumable and recorded when `grid` is a `RaftGrid`."""
    if not isinstance(grid, RaftGrid):
        return strategy.start(grid=grid, initial_arrays=initial_arrays, num_rounds=num_rounds,
                              timeout=timeout, train_config=train_config,
                              evaluate_config=evaluate_config, evaluate_fn=evaluate_fn)
    grid.journal = None  # the round loop resumes from its commits, not by replaying calls
    loop = _RoundLoop(strategy, grid, timeout, train_config or ConfigRecord(),
                      evaluate_config or ConfigRecord(), evaluate_fn)
    return loop.run(initial_arrays, num_rounds)


_FLOWER_START = Strategy.start


def _start_on_any_grid(self: Strategy, grid: Grid, initial_arrays: ArrayRecord,
                       num_rounds: int = 3, timeout: float = 3600,
                       train_config: ConfigRecord | None = None,
                       evaluate_config: ConfigRecord | None = None,
                       evaluate_fn: EvaluateFn | None = None) -> Result:
    """`Strategy.start` with Flower's signature: raftfl's resumable loop on a `RaftGrid`."""
    if not isinstance(grid, RaftGrid):
        return _FLOWER_START(self, grid, initial_arrays, num_rounds, timeout, train_config,
                             evaluate_config, evaluate_fn)
    return start(self, grid, initial_arrays, num_rounds, timeout, train_config, evaluate_config,
                 evaluate_fn)


def route_strategy_start() -> None:
    """Make `strategy.start(...)`, as Flower's examples and `flwr new` write it, resumable in
    this process (idempotent). It replaces the one method every strategy inherits."""
    Strategy.start = _start_on_any_grid  # type: ignore[method-assign]


def _plain(record: MetricRecord | None) -> dict[str, Any] | None:
    return None if record is None else dict(record.items())


def _client_metrics(replies: list[Message]) -> list[dict[str, Any]]:
    return [{"node_id": msg.metadata.src_node_id,
             "metrics": {name: dict(rec.items())
                         for name, rec in msg.content.metric_records.items()}}
            for msg in replies]


def _errors(replies: list[Message]) -> list[dict[str, Any]]:
    return [{"code": msg.error.code, "reason": msg.error.reason,
             "node_id": msg.metadata.src_node_id} for msg in replies if msg.has_error()]


class _RoundLoop:
    def __init__(self, strategy: Strategy, grid: RaftGrid, timeout: float,
                 train_config: ConfigRecord, evaluate_config: ConfigRecord,
                 evaluate_fn: EvaluateFn | None):
        self.strategy = strategy
        self.grid = grid
        self.hooks = grid.hooks
        self.timeout = timeout
        self.train_config = train_config
        self.evaluate_config = evaluate_config
        self.evaluate_fn = evaluate_fn
        self.result = Result()
        self.warned_lost = False

    def run(self, initial_arrays: ArrayRecord, num_rounds: int) -> Result:
        name = type(self.strategy).__name__
        resume = self.grid.resume
        if resume is None:
            log.info("raftfl: starting %s, rounds 1..%d (term %d)", name, num_rounds,
                     self.grid.term)
            self.strategy.summary()
            arrays = initial_arrays
            central = self._evaluate_central(0, arrays)
            self._commit(0, arrays, RoundReport(arrays_sha256(arrays), None,
                                                evaluate_serverapp=_plain(central),
                                                num_rounds=num_rounds))
            first = 1
        else:
            arrays, first = resume.arrays, resume.next_round
            log.info("raftfl: resuming %s at round %d of %d (term %d)%s", name, first,
                     num_rounds, self.grid.term, self._restore(resume.state))
            self.strategy.summary()
        self.result.arrays = arrays
        t0 = time.monotonic()
        for server_round in range(first, num_rounds + 1):
            arrays = self._round(server_round, num_rounds, arrays)
            self.result.arrays = arrays
        log.info("raftfl: %s finished rounds %d..%d in %.2f s", name, first, num_rounds,
                 time.monotonic() - t0)
        return self.result

    def _round(self, server_round: int, num_rounds: int, arrays: ArrayRecord) -> ArrayRecord:
        log.info("[ROUND %d/%d]", server_round, num_rounds)
        self.grid.set_round(server_round, arrays_sha256(arrays))
        new_arrays, train = self._train(server_round, arrays)
        arrays = arrays if new_arrays is None else new_arrays

        self.grid.set_round(server_round, arrays_sha256(arrays))  # evaluate carries the new model
        messages = list(self.strategy.configure_evaluate(server_round, arrays,
                                                         self.evaluate_config, self.grid))
        replies = self._send(messages)
        valid = [msg for msg in replies if not msg.has_error()]
        federated = self.strategy.aggregate_evaluate(server_round, replies) if valid else None
        if federated is not None:
            self.result.evaluate_metrics_clientapp[server_round] = federated
        central = self._evaluate_central(server_round, arrays)

        report = RoundReport(arrays_sha256(arrays), train, _plain(federated), len(valid),
                             len(messages) - len(valid), _plain(central), _client_metrics(valid))
        self._commit(server_round, arrays, report)
        log.info("round %d committed: %d train results, %d failures; evaluate %s",
                 server_round, train.results, train.failures, report.evaluate_serverapp)
        return arrays

    def _train(self, server_round: int,
               arrays: ArrayRecord) -> tuple[ArrayRecord | None, TrainReport]:
        for attempt in range(1, TRAIN_ATTEMPTS + 1):
            if not self.hooks.round_started(server_round):
                raise AggregatorStopped(f"round {server_round}: this node was deposed")
            messages = list(self.strategy.configure_train(server_round, arrays,
                                                          self.train_config, self.grid))
            replies = self._send(messages)
            new_arrays, metrics = None, None
            if any(not msg.has_error() for msg in replies):
                new_arrays, metrics, replies = self._aggregate_finite(server_round, arrays,
                                                                      replies)
            valid = [msg for msg in replies if not msg.has_error()]
            report = TrainReport(attempt, len(messages), len(valid), len(messages) - len(valid),
                                 _client_metrics(valid), _plain(metrics), _errors(replies))
            self.hooks.train_done(server_round, report)
            if new_arrays is not None or not messages:  # no instructions: training is off
                if metrics is not None:
                    self.result.train_metrics_clientapp[server_round] = metrics
                return new_arrays, report
            log.warning("round %d: no train results (%d sent, attempt %d of %d)", server_round,
                        len(messages), attempt, TRAIN_ATTEMPTS)
            if attempt < TRAIN_ATTEMPTS:
                time.sleep(RETRY_WAIT_S)
        raise NoTrainResults(f"round {server_round}: no train results in {TRAIN_ATTEMPTS} "
                             "attempts")

    def _aggregate_finite(self, server_round: int, sent: ArrayRecord, replies: list[Message]
                          ) -> tuple[ArrayRecord | None, MetricRecord | None, list[Message]]:
        """The strategy's aggregate, only if finite in the sent model's dtype
        (screen.aggregate_fault): else re-aggregated leaving out the largest updates, one more
        each time, up to half the results (at most MAX_LEFT_OUT), with the strategy's state
        rewound before each try (it may have folded the bad aggregate into its moments or its
        privacy accountant). The replies come back with those left out as refused; when no
        try is finite, every result is refused and the attempt has none."""
        snapshot = self._snapshot()
        new, metrics = self._aggregate_train(server_round, replies)
        fault = None if new is None else aggregate_fault(sent, new)
        if fault is None:
            return new, metrics, replies
        valid = [i for i, msg in enumerate(replies) if not msg.has_error()]
        norms = {i: update_norm(sent, replies[i].content) for i in valid}
        suspects = sorted(valid, key=lambda i: -norms[i])[:min(len(valid) // 2, MAX_LEFT_OUT)]

        def without(left_out: list[int]) -> list[Message]:
            return [rejected(msg, f"the aggregate is non-finite with this update (norm "
                                  f"{norms[i]:.4g}): {fault}") if i in left_out else msg
                    for i, msg in enumerate(replies)]

        for n in range(1, len(suspects) + 1):
            self._rewind(snapshot)
            kept = without(suspects[:n])
            new, metrics = self._aggregate_train(server_round, kept)
            if new is not None and aggregate_fault(sent, new) is None:
                log.warning("round %d: %s; re-aggregated without node(s) %s", server_round,
                            fault, ", ".join(str(replies[i].metadata.src_node_id)
                                             for i in suspects[:n]))
                return new, metrics, kept
        self._rewind(snapshot)
        log.warning("round %d: %s, even without the %d largest updates: no results in this "
                    "attempt", server_round, fault, len(suspects))
        return None, None, without(valid)

    def _snapshot(self) -> bytes | None:
        """The strategy's state (durable.py) before it aggregates, to rewind to."""
        try:
            return durable.capture(self.strategy, None).blob
        except durable.DurableStateError:
            return None

    def _rewind(self, snapshot: bytes | None) -> None:
        if snapshot is None:
            log.warning("raftfl: the strategy's state could not be captured: it is not "
                        "rewound before aggregating again")
            return
        try:
            durable.restore(snapshot, self.strategy, None)
        except durable.DurableStateError as exc:
            log.warning("raftfl: the strategy's state is not rewound: %s", exc)

    def _aggregate_train(self, server_round: int, replies: list[Message]
                         ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The strategy's aggregate; replies it cannot combine (e.g. a worker's ConfigRecord-only
        reply to a plain FedAvg) count as a training attempt without results, not a crash."""
        try:
            return self.strategy.aggregate_train(server_round, replies)
        except InconsistentMessageReplies as exc:
            log.warning("round %d: the strategy refused the replies: %s", server_round, exc)
            return None, None

    def _send(self, messages: list[Message]) -> list[Message]:
        if not messages:
            return []
        return list(self.grid.send_and_receive(messages, timeout=self.timeout))

    def _evaluate_central(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        if self.evaluate_fn is None:
            return None
        metrics = self.evaluate_fn(server_round, arrays)
        if metrics is not None:
            self.result.evaluate_metrics_serverapp[server_round] = metrics
        return metrics

    def _restore(self, blob: bytes) -> str:
        """The strategy's and the app's state as committed with the round we resume after."""
        if not blob:
            return ", without a recorded ServerApp state"
        try:
            durable.restore(blob, self.strategy, self.grid.app_state)
        except durable.DurableStateError as exc:
            log.warning("raftfl: the ServerApp's recorded state is not restored, it starts "
                        "afresh: %s", exc)
            return ", ServerApp state NOT restored"
        return f", ServerApp state restored ({len(blob)} bytes)"

    def _commit(self, server_round: int, arrays: ArrayRecord, report: RoundReport) -> None:
        try:
            captured = durable.capture(self.strategy, self.grid.app_state)
        except durable.DurableStateError as exc:  # a state too big to record
            log.warning("raftfl: round %d: the ServerApp's state is not recorded: %s",
                        server_round, exc)
            captured = durable.Captured(b"", ())
        if captured.lost and not self.warned_lost:
            self.warned_lost = True
            log.warning("raftfl: a failover will lose what cannot be recorded of the ServerApp's "
                        "state: %s", ", ".join(captured.lost))
        if not self.hooks.commit(server_round, arrays, report, captured.blob):
            raise AggregatorStopped(f"round {server_round}: commit refused, this node was "
                                    "deposed")
