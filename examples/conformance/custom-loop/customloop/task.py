"""customloop: the model, the data and the arithmetic, in numpy (no torch: fast to import).

Softmax regression on synthetic data. Everything is a pure function of the run config and
the message: a shard's data is drawn from a generator seeded by (seed, shard), so whichever
node trains shard i on given arrays returns the same arrays, bit for bit. The ServerApp's
result therefore depends only on the rounds it completes, not on which nodes answered.
"""

from __future__ import annotations

import hashlib

import numpy as np

FEATURES = 256
CLASSES = 10


def initial_arrays(seed: int) -> list[np.ndarray]:
    """Weights and bias, small and seeded: the same start wherever the ServerApp runs."""
    rng = np.random.default_rng([seed, 0])
    weights = 0.01 * rng.standard_normal((FEATURES, CLASSES))
    return [weights.astype(np.float32), np.zeros(CLASSES, dtype=np.float32)]


def shard_data(seed: int, shard: int, examples: int) -> tuple[np.ndarray, np.ndarray]:
    """Shard `shard`'s features and labels: a fixed linear teacher plus noise."""
    teacher = np.random.default_rng([seed, 1]).standard_normal((FEATURES, CLASSES))
    rng = np.random.default_rng([seed, 2, shard])
    x = rng.standard_normal((examples, FEATURES))
    y = np.argmax(x @ teacher + 0.5 * rng.standard_normal((examples, CLASSES)), axis=1)
    return x, y


def train(arrays: list[np.ndarray], x: np.ndarray, y: np.ndarray, steps: int,
          lr: float) -> tuple[list[np.ndarray], float]:
    """Full-batch gradient descent on the cross-entropy (float64 inside, float32 out, the
    dtype the arrays came in). Returns the new arrays and the last step's loss."""
    weights, bias = (a.astype(np.float64) for a in arrays)
    onehot = np.eye(CLASSES)[y]
    loss = 0.0
    for _ in range(steps):
        logits = x @ weights + bias
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        probs /= probs.sum(axis=1, keepdims=True)
        loss = float(-np.mean(np.log(probs[np.arange(len(y)), y] + 1e-12)))
        grad = (probs - onehot) / len(y)
        weights -= lr * (x.T @ grad)
        bias -= lr * grad.sum(axis=0)
    return [weights.astype(np.float32), bias.astype(np.float32)], loss


def accuracy(arrays: list[np.ndarray], x: np.ndarray, y: np.ndarray) -> float:
    weights, bias = arrays
    return float(np.mean(np.argmax(x @ weights + bias, axis=1) == y))


def fedavg(results: list[tuple[list[np.ndarray], int]]) -> list[np.ndarray]:
    """FedAvg by hand: the example-weighted mean of the replies' arrays, in the order given
    (the caller sorts by shard, so the float sums are the same in every run)."""
    total = sum(n for _, n in results)
    out = []
    for i in range(len(results[0][0])):
        acc = np.zeros(results[0][0][i].shape, dtype=np.float64)
        for arrays, n in results:
            acc += arrays[i].astype(np.float64) * (n / total)
        out.append(acc.astype(results[0][0][i].dtype))
    return out


def arrays_sha256(arrays: list[np.ndarray]) -> str:
    """sha256 over the arrays in order: for each, its dtype string and shape as text
    (`"<f4 (16, 4)\\n"`), then its C-order bytes. Same arrays, same digest, on any host
    (not raftfl's codec digest, which frames the bytes its own way)."""
    digest = hashlib.sha256()
    for array in arrays:
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype.str} {array.shape}\n".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()
