"""Model and data for the app: raftfl's quick-start CNN and its offline datasets.

Flower's quickstart-pytorch downloads CIFAR-10 through flwr-datasets; this app reuses
`raftfl.task` instead, so it runs offline: deterministic synthetic CIFAR-shaped data (or a local
CIFAR-10 copy), partitioned by each node from a shared seed. Arrays travel as an ArrayRecord
keyed by the network's state_dict names, so `ArrayRecord.to_torch_state_dict()` loads anywhere.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord

from raftfl.task import data, model


@functools.cache
def _state_keys() -> tuple[str, ...]:
    return tuple(model.build_net().state_dict().keys())


def to_arrays(weights: list[np.ndarray]) -> ArrayRecord:
    return ArrayRecord({key: Array(np.ascontiguousarray(w))
                        for key, w in zip(_state_keys(), weights, strict=True)})


def initial_arrays(seed: int = 0) -> ArrayRecord:
    """The same starting model on every node (seeded)."""
    return to_arrays(model.initial_weights(seed))


@functools.lru_cache(maxsize=2)
def _dataset(kind: str, train_size: int, test_size: int, seed: int) -> tuple[Any, Any]:
    return data.load_dataset(kind, n_train=train_size, n_test=test_size, seed=seed)


def _whole(run_config: dict[str, Any]) -> tuple[Any, Any]:
    return _dataset(str(run_config["dataset"]), int(run_config["train-size"]),
                    int(run_config["test-size"]), int(run_config["data-seed"]))


def load_data(partition_id: int, num_partitions: int,
              run_config: dict[str, Any]) -> tuple[Any, Any]:
    """This partition's (train, test) shards."""
    train, test = _whole(run_config)
    seed = int(run_config["data-seed"])
    train_idx = data.partition(len(train), num_partitions, partition_id,
                               str(run_config["partitioning"]),
                               alpha=float(run_config["dirichlet-alpha"]),
                               labels=train.y.numpy(), seed=seed)
    test_idx = data.partition(len(test), num_partitions, partition_id, "iid", seed=seed)
    return data.subset(train, train_idx), data.subset(test, test_idx)


def load_centralized_testset(run_config: dict[str, Any]) -> Any:
    return _whole(run_config)[1]


def train(arrays: ArrayRecord, trainset: Any, *, epochs: int, lr: float, batch_size: int,
          proximal_mu: float, seed: int) -> tuple[ArrayRecord, float]:
    weights, metrics = model.train(arrays.to_numpy_ndarrays(), trainset, epochs=epochs, lr=lr,
                                   batch_size=batch_size, seed=seed, proximal_mu=proximal_mu)
    return to_arrays(weights), float(metrics["train_loss"])


def test(arrays: ArrayRecord, testset: Any) -> tuple[float, float]:
    """(loss, accuracy)."""
    return model.evaluate(arrays.to_numpy_ndarrays(), testset)
