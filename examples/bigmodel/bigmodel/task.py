"""A linear model y = x W of `model-mb` megabytes and the synthetic data it learns.

Every node draws its batches from the same hidden W* (seeded), so FedAvg converges and the
loss printed each round shows the model is really trained, while each round costs little
compute: the point of this app is the size of what moves, not the arithmetic.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord


def shape(run_config: dict[str, Any]) -> tuple[int, int]:
    inputs = int(run_config["inputs"])
    outputs = max(1, int(float(run_config["model-mb"]) * 2**20 / 4 / inputs))
    return inputs, outputs


def initial_arrays(run_config: dict[str, Any]) -> ArrayRecord:
    return ArrayRecord({"w": Array(np.zeros(shape(run_config), dtype=np.float32))})


def batch(run_config: dict[str, Any], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A batch from the shared hidden model (only its first column block varies, to keep
    drawing it cheap)."""
    inputs, outputs = shape(run_config)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((int(run_config["batch-size"]), inputs), dtype=np.float32)
    hidden = np.random.default_rng(0).standard_normal((inputs, min(outputs, 8)),
                                                      dtype=np.float32) / np.sqrt(inputs)
    y = np.zeros((x.shape[0], outputs), dtype=np.float32)
    y[:, :hidden.shape[1]] = x @ hidden
    return x, y


def step(arrays: ArrayRecord, x: np.ndarray, y: np.ndarray, lr: float) -> tuple[ArrayRecord, float]:
    w = arrays["w"].numpy()
    err = x @ w - y
    loss = float(np.mean(err[:, :8] ** 2))
    w = w - (lr / len(x)) * (x.T @ err)
    return ArrayRecord({"w": Array(np.ascontiguousarray(w, dtype=np.float32))}), loss
