"""What the aggregator's round loop (start.py) reports to whoever records the run.

The Flower edge defines the hooks and the reports; the node implements them with fenced etcd
writes (raftfl/node/recorder.py); the grid carries them to the loop (grid.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from flwr.app import ArrayRecord


@dataclass(frozen=True)
class TrainReport:
    attempt: int  # 1.. TRAIN_ATTEMPTS (start.py)
    sent: int  # instructions sent
    results: int  # replies with content
    failures: int  # sent - results: error replies and replies that never came
    client_metrics: list[dict[str, Any]]  # per result: {"node_id", "metrics": {record: {k: v}}}
    aggregated: dict[str, Any] | None  # the strategy's aggregated train MetricRecord
    errors: list[dict[str, Any]] = field(default_factory=list)  # {"code", "reason", "node_id"}


@dataclass(frozen=True)
class RoundReport:
    sha256: str  # of the arrays committed (codec.arrays_sha256)
    train: TrainReport | None  # None for round 0
    evaluate_clientapp: dict[str, Any] | None = None  # aggregated federated evaluation
    evaluate_results: int = 0
    evaluate_failures: int = 0
    evaluate_serverapp: dict[str, Any] | None = None  # evaluate_fn's MetricRecord
    client_metrics: list[dict[str, Any]] = field(default_factory=list)  # evaluation replies
    num_rounds: int = 0  # the rounds the ServerApp asked for (reported with round 0)


class RoundHooks(Protocol):
    """What the aggregator records at each step (implemented with fenced etcd writes).

    Called from the ServerApp's thread. A hook may raise to abort the run (the ServerApp fails);
    returning False means "this node was deposed" and raises `AggregatorStopped`."""

    def round_started(self, server_round: int) -> bool: ...

    def train_done(self, server_round: int, report: TrainReport) -> None: ...

    def commit(self, server_round: int, arrays: ArrayRecord, report: RoundReport,
               state: bytes = b"") -> bool: ...
    # `state`: the ServerApp's durable state at this commit (flower/durable.py), b"" if none
