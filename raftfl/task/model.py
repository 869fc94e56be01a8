"""The Flower PyTorch quick-start CNN plus the helpers federated code needs.

Why this module is shaped the way it is:

* torch is imported lazily inside functions, so ``import raftfl.task.model`` (and
  therefore the CLI) starts fast; only code that really trains pays the
  multi-second torch import.
* Weights travel as ``list[np.ndarray]`` in ``state_dict`` order, which is what
  Flower's NumPy clients exchange, so no adapter layer is needed.
* ``weights_to_bytes`` is a small self-describing, deterministic format so that
  the same weights always hash to the same digest (used to agree on a global
  model through etcd) and so a corrupt blob is always reported as
  ``ValueError`` rather than whatever numpy happens to raise.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import struct
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

    from raftfl.task.data import Dataset

# Blob layout: MAGIC | uint32-LE header length | JSON header | raw LE payload.
MAGIC = b"RAFTFLW1\n"
_LEN = struct.Struct("<I")
# A sane upper bound that stops a corrupt length field from making us parse
# megabytes of garbage as JSON.
_MAX_HEADER_BYTES = 1 << 20
# Only plain numeric kinds: object/void/str dtypes could smuggle pickles or
# have no fixed byte layout.
_ALLOWED_KINDS = frozenset("biuf")

EVAL_BATCH_SIZE = 256
MOMENTUM = 0.9


@functools.lru_cache(maxsize=1)
def _net_class() -> type:
    """Define the CNN class on first use so importing this module stays torch-free."""
    import torch
    from torch import nn

    class Net(nn.Module):
        """Flower quick-start CNN (CIFAR-10, 62,006 parameters)."""

        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(3, 6, 5)
            self.pool = nn.MaxPool2d(2, 2)
            self.conv2 = nn.Conv2d(6, 16, 5)
            self.fc1 = nn.Linear(16 * 5 * 5, 120)
            self.fc2 = nn.Linear(120, 84)
            self.fc3 = nn.Linear(84, 10)
            self.relu = nn.ReLU()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.pool(self.relu(self.conv1(x)))
            x = self.pool(self.relu(self.conv2(x)))
            x = torch.flatten(x, 1)
            x = self.relu(self.fc1(x))
            x = self.relu(self.fc2(x))
            return self.fc3(x)

    return Net


def build_net() -> torch.nn.Module:
    """Return a freshly initialised quick-start CNN (random init from torch's global RNG)."""
    return _net_class()()


def initial_weights(seed: int = 0) -> list[np.ndarray]:
    """Deterministic starting weights, so every node can derive round 0 alone.

    The global RNG is forked, so seeding here does not disturb the caller's
    torch random state.
    """
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = build_net()
    return get_weights(net)


def get_weights(net: torch.nn.Module) -> list[np.ndarray]:
    """Copy the ``state_dict`` out as float arrays; copies so callers never alias live params."""
    return [v.detach().cpu().numpy().copy() for v in net.state_dict().values()]


def set_weights(net: torch.nn.Module, weights: list[np.ndarray]) -> None:
    """Load arrays in ``state_dict`` order; a count/shape mismatch is a ``ValueError``.

    Checking up front gives one clear error instead of torch's long
    ``load_state_dict`` report, and catches weights from a different model.
    """
    import torch

    keys = list(net.state_dict().keys())
    current = net.state_dict()
    if len(weights) != len(keys):
        raise ValueError(f"expected {len(keys)} weight arrays, got {len(weights)}")
    state = {}
    for key, w in zip(keys, weights, strict=True):
        arr = np.asarray(w)
        if tuple(arr.shape) != tuple(current[key].shape):
            raise ValueError(
                f"shape mismatch for {key}: expected {tuple(current[key].shape)}, "
                f"got {tuple(arr.shape)}"
            )
        state[key] = torch.tensor(arr, dtype=current[key].dtype)
    net.load_state_dict(state, strict=True)


def _require_non_empty(data: Dataset, what: str) -> None:
    """Fail loudly: training/evaluating on nothing would silently yield NaN metrics."""
    if len(data) == 0:
        raise ValueError(f"cannot {what} on an empty dataset ({data.name})")


def train(
    weights: list[np.ndarray],
    data: Dataset,
    epochs: int = 1,
    lr: float = 0.01,
    batch_size: int = 32,
    seed: int = 0,
    proximal_mu: float = 0.0,
) -> tuple[list[np.ndarray], dict[str, Any]]:
    """Run local SGD (momentum 0.9) from ``weights`` and return the new weights.

    ``proximal_mu > 0`` adds FedProx's proximal term ``mu/2 * ||w - weights||^2``
    to the loss (the reported ``train_loss`` stays the data loss).

    Batches are sliced from pre-built tensors with a seeded permutation rather
    than a DataLoader: no worker processes on a 2-core box, and the same seed
    gives the same batch order on every run. The thread count is left to the
    caller because it is a process-wide setting.
    """
    import torch

    _require_non_empty(data, "train")
    if epochs < 1 or batch_size < 1:
        raise ValueError("epochs and batch_size must be >= 1")
    net = build_net()
    set_weights(net, weights)
    net.train()
    params = list(net.parameters())
    momentum: list[Any] = [None] * len(params)
    criterion = torch.nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(seed)
    anchor = [p.detach().clone() for p in params] if proximal_mu > 0 else []
    n = len(data)
    total_loss = 0.0
    seen = 0
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            xb, yb = data.x[idx], data.y[idx]
            for p in params:
                p.grad = None
            loss = criterion(net(xb), yb)
            objective = loss
            if anchor:
                objective = loss + proximal_mu / 2 * sum(
                    ((p - a) ** 2).sum() for p, a in zip(params, anchor, strict=True))
            objective.backward()
            _sgd_step(params, momentum, lr)
            total_loss += loss.item() * len(idx)
            seen += len(idx)
    metrics = {"train_loss": total_loss / seen, "num_examples": n}
    return get_weights(net), metrics


def _sgd_step(params: list[Any], momentum: list[Any], lr: float) -> None:
    """One step of SGD with momentum 0.9, as `torch.optim.SGD(momentum=0.9)` takes it (the
    same operations in the same order, so the same bits). Not the optimizer itself: its first
    use imports `torch._dynamo`, 2.8 s of CPU in every process that trains."""
    import torch

    with torch.no_grad():
        for i, p in enumerate(params):
            if momentum[i] is None:
                momentum[i] = torch.clone(p.grad).detach()
            else:
                momentum[i].mul_(MOMENTUM).add_(p.grad)
            p.add_(momentum[i], alpha=-lr)


def evaluate(weights: list[np.ndarray], data: Dataset) -> tuple[float, float]:
    """Return (mean cross-entropy loss, accuracy), batched and without autograd."""
    import torch

    _require_non_empty(data, "evaluate")
    net = build_net()
    set_weights(net, weights)
    net.eval()
    criterion = torch.nn.CrossEntropyLoss(reduction="sum")
    total_loss = 0.0
    correct = 0
    with torch.no_grad():
        for start in range(0, len(data), EVAL_BATCH_SIZE):
            xb = data.x[start : start + EVAL_BATCH_SIZE]
            yb = data.y[start : start + EVAL_BATCH_SIZE]
            logits = net(xb)
            total_loss += criterion(logits, yb).item()
            correct += int((logits.argmax(dim=1) == yb).sum().item())
    n = len(data)
    return total_loss / n, correct / n


def _le_dtype(dtype: np.dtype) -> np.dtype:
    """Little-endian version of ``dtype`` so blobs are identical on any host."""
    if dtype.kind not in _ALLOWED_KINDS:
        raise ValueError(f"unsupported dtype for serialisation: {dtype}")
    return dtype.newbyteorder("<") if dtype.byteorder != "|" else dtype


def weights_to_bytes(weights: list[np.ndarray]) -> bytes:
    """Serialise weights deterministically: same arrays in, same bytes out.

    A JSON header (sorted keys, fixed separators) records dtype and shape per
    array; the payload is the raw little-endian data in order. No pickle, so
    loading an untrusted blob cannot execute code.
    """
    entries = []
    chunks = []
    for w in weights:
        arr = np.asarray(w)
        dt = _le_dtype(arr.dtype)
        entries.append({"dtype": dt.str, "shape": list(arr.shape)})
        chunks.append(np.ascontiguousarray(arr, dtype=dt).tobytes())
    header = json.dumps({"arrays": entries}, sort_keys=True, separators=(",", ":"))
    head = header.encode("utf-8")
    return b"".join([MAGIC, _LEN.pack(len(head)), head, *chunks])


def _parse_header(blob: bytes) -> tuple[list[tuple[np.dtype, tuple[int, ...]]], int]:
    """Validate magic + header; return (dtype, shape) specs and the payload offset."""
    if len(blob) < len(MAGIC) and MAGIC.startswith(blob):
        raise ValueError(f"truncated weights blob: only {len(blob)} bytes")
    if not blob.startswith(MAGIC):
        raise ValueError("not a raftfl weights blob (bad magic)")
    pos = len(MAGIC)
    if len(blob) < pos + _LEN.size:
        raise ValueError("truncated weights blob: missing header length")
    (hlen,) = _LEN.unpack_from(blob, pos)
    pos += _LEN.size
    if hlen > _MAX_HEADER_BYTES or len(blob) < pos + hlen:
        raise ValueError(f"truncated or corrupt weights blob: header length {hlen}")
    try:
        header = json.loads(blob[pos : pos + hlen].decode("utf-8"))
        specs = [_parse_entry(e) for e in header["arrays"]]
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"corrupt weights blob header: {exc}") from exc
    except ValueError:
        raise  # already a clear message from _parse_entry
    except Exception as exc:  # KeyError, TypeError, RecursionError on hostile JSON...
        raise ValueError(f"corrupt weights blob header: {exc!r}") from exc
    return specs, pos + hlen


def _parse_entry(entry: dict[str, Any]) -> tuple[np.dtype, tuple[int, ...]]:
    """Turn one header entry into a checked (dtype, shape)."""
    shape = entry["shape"]
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise ValueError(f"corrupt weights blob: bad shape {shape!r}")
    dtype_str = entry["dtype"]
    if not isinstance(dtype_str, str):
        raise ValueError(f"corrupt weights blob: bad dtype {dtype_str!r}")
    try:
        dtype = np.dtype(dtype_str)
    except Exception as exc:  # numpy raises TypeError/ValueError/SyntaxError here
        raise ValueError(f"corrupt weights blob: bad dtype {dtype_str!r}") from exc
    if dtype.kind not in _ALLOWED_KINDS or dtype.str != dtype_str:
        raise ValueError(f"corrupt weights blob: unsupported dtype {dtype_str!r}")
    return dtype, tuple(shape)


def weights_from_bytes(blob: bytes) -> list[np.ndarray]:
    """Inverse of ``weights_to_bytes``; any malformed input raises ``ValueError``.

    Sizes are checked against the header before slicing, and the arrays are
    copied into native byte order so callers may modify them in place.
    """
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        raise ValueError(f"expected bytes, got {type(blob).__name__}")
    blob = bytes(blob)
    specs, pos = _parse_header(blob)
    out = []
    for dtype, shape in specs:
        nbytes = math.prod(shape) * dtype.itemsize
        if len(blob) < pos + nbytes:
            raise ValueError(f"truncated weights blob: need {pos + nbytes} bytes, have {len(blob)}")
        arr = np.frombuffer(blob, dtype=dtype, count=math.prod(shape), offset=pos)
        out.append(arr.reshape(shape).astype(dtype.newbyteorder("="), copy=True))
        pos += nbytes
    if pos != len(blob):
        raise ValueError(f"corrupt weights blob: {len(blob) - pos} trailing bytes")
    return out


def weights_sha256(weights: list[np.ndarray]) -> str:
    """Content hash of the canonical encoding, so nodes can compare models cheaply."""
    return hashlib.sha256(weights_to_bytes(weights)).hexdigest()
