"""`raftfl.start` under plain Flower is exactly `strategy.start`."""

from __future__ import annotations

from typing import Any

from flwr.app import ArrayRecord, ConfigRecord

import raftfl


class _Strategy:
    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def start(self, **kwargs: Any) -> str:
        self.calls.append(kwargs)
        return "flower's result"


def test_any_other_grid_calls_strategy_start_with_the_same_arguments() -> None:
    strategy, grid, arrays = _Strategy(), object(), ArrayRecord()
    train_config = ConfigRecord({"lr": 0.1})

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> None:
        return None

    result = raftfl.start(strategy, grid=grid, initial_arrays=arrays, num_rounds=4,  # type: ignore[arg-type]
                          train_config=train_config, evaluate_fn=evaluate_fn)
    assert result == "flower's result"
    assert strategy.calls == [{"grid": grid, "initial_arrays": arrays, "num_rounds": 4,
                               "timeout": 3600, "train_config": train_config,
                               "evaluate_config": None, "evaluate_fn": evaluate_fn}]
