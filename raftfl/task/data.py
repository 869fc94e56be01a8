"""Datasets for raftfl: real CIFAR-10 when it is on disk, a synthetic stand-in otherwise.

Why a synthetic dataset: CI and developer machines may have no internet, yet
the federated pipeline still has to be exercised end to end with a model that
visibly learns. ``synthetic_cifar`` is CIFAR-shaped, about as hard as CIFAR-10 for the
quick-start CNN (so its curves say something about real training), generated in seconds
without any download, and bit-identical in every process for a given seed,
so separately started clients agree on the data without exchanging it.

torch/torchvision are imported lazily so importing this module stays cheap.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

NUM_CLASSES = 10
IMAGE_SHAPE = (3, 32, 32)
DEFAULT_ROOT = "~/.cache/raftfl/data"
# torchvision's extracted CIFAR-10 layout under the root.
CIFAR10_DIR = "cifar-10-batches-py"
CIFAR10_FILES = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch")
KINDS = ("cifar10", "synthetic", "auto")

# Synthetic generator knobs, tuned so the quick-start CNN learns it about as CIFAR-10 goes:
# with 50,000 images over 3 FedAvg nodes, 1 local epoch, test accuracy ~0.2 after round 1,
# ~0.45 after round 3, still rising after round 10 (tests/unit/test_model_data.py asserts the
# band on a reduced size). A class is several looks (_MODES templates, as "car" is many cars);
# each sample is a shifted, maybe mirrored crop of one, colour-mixed, overlaid with another
# class's template and noise.
_PAD = 6
_CANVAS = IMAGE_SHAPE[1] + 2 * _PAD
_MODES = 6
_NOISE_STD = 1.6
_MIX_MAX = 1.0  # a distractor can be as strong as the object
_COLOUR_JITTER = 0.4  # per-sample 3x3 colour mixing around the identity
_CHUNK = 4096  # samples rendered at once: bounds the peak memory of a 50,000-image set


class DatasetUnavailable(RuntimeError):
    """CIFAR-10 was asked for but is not on disk (or its files are corrupt)."""


@dataclass(frozen=True, eq=False)
class Dataset:
    """Pre-built tensors, so training slices batches instead of running a DataLoader.

    ``eq=False`` because element-wise tensor equality has no single truth
    value; tensors are left out of the repr to keep logs readable.
    """

    x: torch.Tensor = field(repr=False)  # (N, 3, 32, 32) float32, normalised to ~[-1, 1]
    y: torch.Tensor = field(repr=False)  # (N,) int64 class labels
    name: str

    def __len__(self) -> int:
        return int(self.y.shape[0])


def _grid() -> tuple[np.ndarray, np.ndarray]:
    """Canvas coordinates in units of one 32-pixel image width."""
    coords = (np.arange(_CANVAS, dtype=np.float32) - _PAD) / IMAGE_SHAPE[1]
    return np.meshgrid(coords, coords, indexing="ij")


def _template(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """One smooth colour template: low-frequency waves plus a coloured blob.

    Low frequencies survive the quick-start CNN's 5x5 convs and pooling; the blob's
    position and colour give it a local feature to find.
    """
    t = np.zeros((3, _CANVAS, _CANVAS), dtype=np.float32)
    for _ in range(3):
        freq = rng.uniform(0.5, 2.5)
        theta = rng.uniform(0.0, np.pi)
        phase = rng.uniform(0.0, 2 * np.pi)
        colour = rng.normal(0.0, 1.0, size=3).astype(np.float32)
        wave = np.sin(2 * np.pi * freq * (xx * np.cos(theta) + yy * np.sin(theta)) + phase)
        t += colour[:, None, None] * wave[None]
    cy, cx = rng.uniform(0.2, 0.8, size=2)
    sigma = rng.uniform(0.08, 0.15)
    blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))
    t += rng.normal(0.0, 2.0, size=3).astype(np.float32)[:, None, None] * blob[None]
    t -= t.mean()
    t /= t.std() + 1e-6
    return t * 0.5


def _class_templates(rng: np.random.Generator) -> np.ndarray:
    """_MODES templates per class, class c's at rows c*_MODES .. c*_MODES + _MODES - 1."""
    yy, xx = _grid()
    return np.stack([_template(rng, yy, xx) for _ in range(NUM_CLASSES * _MODES)])


def _render(
    templates: np.ndarray, n: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``n`` samples, _CHUNK at a time (the same draws for the same ``n`` and seed)."""
    h, w = IMAGE_SHAPE[1:]
    labels = rng.integers(0, NUM_CLASSES, size=n)
    windows = np.lib.stride_tricks.sliding_window_view(templates, (h, w), axis=(2, 3))
    chan = np.arange(3)[None, :]
    x = np.empty((n, *IMAGE_SHAPE), dtype=np.float32)
    for lo in range(0, n, _CHUNK):
        y = labels[lo:lo + _CHUNK]
        k = len(y)

        def crop(cls: np.ndarray, k: int = k) -> np.ndarray:
            look = cls * _MODES + rng.integers(0, _MODES, size=k)
            dy = rng.integers(0, 2 * _PAD + 1, size=k)[:, None]
            dx = rng.integers(0, 2 * _PAD + 1, size=k)[:, None]
            return windows[look[:, None], chan, dy, dx]

        obj = crop(y)
        flip = rng.random(k) < 0.5
        obj[flip] = obj[flip][..., ::-1]
        colour = (np.eye(3, dtype=np.float32)
                  + rng.normal(0.0, _COLOUR_JITTER, size=(k, 3, 3)).astype(np.float32))
        obj = np.einsum("nij,njhw->nihw", colour, obj)
        obj *= rng.uniform(0.6, 1.4, size=(k, 1, 1, 1)).astype(np.float32)  # contrast
        obj += rng.normal(0.0, 0.2, size=(k, 3, 1, 1)).astype(np.float32)  # brightness
        other = (y + rng.integers(1, NUM_CLASSES, size=k)) % NUM_CLASSES
        distractor = crop(other)
        distractor *= rng.uniform(0.0, _MIX_MAX, size=(k, 1, 1, 1)).astype(np.float32)
        obj += distractor
        # Uniform noise of _NOISE_STD: five times faster to draw than Gaussian, as hard here.
        out = x[lo:lo + k]
        rng.random(out=out, dtype=np.float32)
        out -= np.float32(0.5)
        out *= np.float32(_NOISE_STD * 12**0.5)
        out += obj
    return x, labels.astype(np.int64)


def _to_dataset(x: np.ndarray, y: np.ndarray, name: str) -> Dataset:
    """Wrap numpy arrays as a Dataset of contiguous torch tensors."""
    import torch

    return Dataset(
        x=torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)),
        y=torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64)),
        name=name,
    )


def synthetic_cifar(
    n_train: int = 5000, n_test: int = 1000, seed: int = 0
) -> tuple[Dataset, Dataset]:
    """Deterministic, learnable CIFAR-shaped (train, test) data.

    Templates, train and test each get their own spawned RNG stream, so the
    test set does not change when ``n_train`` does.
    """
    if n_train < 0 or n_test < 0:
        raise ValueError("n_train and n_test must be >= 0")
    streams = np.random.SeedSequence(seed).spawn(3)
    t_rng, tr_rng, te_rng = (np.random.default_rng(s) for s in streams)
    templates = _class_templates(t_rng)
    train = _to_dataset(*_render(templates, n_train, tr_rng), name="synthetic")
    test = _to_dataset(*_render(templates, n_test, te_rng), name="synthetic")
    return train, test


def _subsample_index(n_total: int, n_keep: int | None, seed: int) -> np.ndarray:
    """Deterministic sorted subset of ``range(n_total)``; all items if ``n_keep`` is None."""
    if n_keep is None or n_keep >= n_total:
        return np.arange(n_total)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n_total, size=n_keep, replace=False))


def _cifar_split(ds: Any, n_keep: int | None, seed: int) -> Dataset:
    """Convert a torchvision CIFAR10 split to tensors in one vectorised step.

    Equivalent to ``ToTensor()`` + ``Normalize((0.5,)*3, (0.5,)*3)`` per image,
    but applied to the (subsampled) uint8 array at once: 50k PIL round-trips
    would take far longer on a 2-core machine.
    """
    import torch

    data = np.asarray(ds.data)  # (N, 32, 32, 3) uint8
    labels = np.asarray(ds.targets, dtype=np.int64)
    idx = _subsample_index(len(labels), n_keep, seed)
    x = torch.from_numpy(np.ascontiguousarray(data[idx])).permute(0, 3, 1, 2).float()
    x = (x / 255.0 - 0.5) / 0.5
    return Dataset(x=x.contiguous(), y=torch.from_numpy(labels[idx]), name="cifar10")


def cifar10_on_disk(root: str = DEFAULT_ROOT) -> bool:
    """Whether torchvision's extracted CIFAR-10 files are under ``root``.

    A cheap look (no torchvision import, no checksums): enough to choose a dataset, and
    loading still verifies the files.
    """
    base = os.path.join(os.path.expanduser(root), CIFAR10_DIR)
    return all(os.path.isfile(os.path.join(base, name)) for name in CIFAR10_FILES)


def load_cifar10(
    root: str,
    n_train: int | None = None,
    n_test: int | None = None,
    seed: int = 0,
) -> tuple[Dataset, Dataset]:
    """Load CIFAR-10 from ``root``, optionally subsampled; never downloads.

    Subsampling happens before the float conversion, which keeps memory small
    (the full train set is ~600 MB as float32). Missing or corrupt files are
    reported as ``DatasetUnavailable`` so callers need one except clause.
    """
    root = os.path.expanduser(root)
    try:
        from torchvision.datasets import CIFAR10

        train_raw = CIFAR10(root, train=True, download=False)
        test_raw = CIFAR10(root, train=False, download=False)
    except Exception as exc:  # missing files, corrupt archives, unreadable pickles...
        raise DatasetUnavailable(
            f"CIFAR-10 not found or corrupt in {root} (nothing is downloaded: put torchvision's "
            f"{CIFAR10_DIR}/ there): {exc}") from exc
    return _cifar_split(train_raw, n_train, seed), _cifar_split(test_raw, n_test, seed + 1)


def resolve_kind(kind: str, root: str = DEFAULT_ROOT) -> str:
    """Turn "auto" into "cifar10" when it is on disk, else "synthetic", and say which.

    No network is tried: a run never depends on (or waits for) a download. Resolving once,
    before starting many local nodes, also keeps them all on the same dataset.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown dataset kind {kind!r}; expected one of {KINDS}")
    if kind != "auto":
        return kind
    if cifar10_on_disk(root):
        log.warning("dataset auto: using CIFAR-10 from %s", root)
        return "cifar10"
    log.warning("dataset auto: no CIFAR-10 in %s (nothing is downloaded); using the synthetic "
                "set", root)
    return "synthetic"


def load_dataset(
    kind: str,
    root: str = DEFAULT_ROOT,
    n_train: int = 5000,
    n_test: int = 1000,
    seed: int = 0,
) -> tuple[Dataset, Dataset]:
    """Pick a dataset by name ("auto" as ``resolve_kind`` decides); ``Dataset.name`` says which."""
    if resolve_kind(kind, root) == "cifar10":
        return load_cifar10(root, n_train=n_train, n_test=n_test, seed=seed)
    return synthetic_cifar(n_train=n_train, n_test=n_test, seed=seed)


def _check_partition_args(n_items: int, n_parts: int, part: int) -> None:
    """Reject arguments that could not give every part at least one item."""
    if n_parts < 1:
        raise ValueError(f"n_parts must be >= 1, got {n_parts}")
    if not 0 <= part < n_parts:
        raise ValueError(f"part must be in [0, {n_parts}), got {part}")
    if n_items < n_parts:
        raise ValueError(f"cannot split {n_items} items into {n_parts} non-empty parts")


def _dirichlet_owners(
    labels: np.ndarray, n_parts: int, alpha: float, rng: np.random.Generator
) -> np.ndarray:
    """Assign each item an owner part, with per-class Dirichlet(alpha) proportions."""
    owners = np.empty(len(labels), dtype=np.int64)
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        props = rng.dirichlet(np.full(n_parts, alpha))
        cuts = (np.cumsum(props)[:-1] * len(members)).astype(np.int64)
        for p, chunk in enumerate(np.split(members, cuts)):
            owners[chunk] = p
    return owners


def _fill_empty_parts(owners: np.ndarray, n_parts: int) -> np.ndarray:
    """Move one item from the largest part to each empty one.

    Small alpha often leaves a part with nothing; a client with no data would
    break FedAvg weighting, and this fix is deterministic (no resampling loop).
    """
    owners = owners.copy()
    for p in range(n_parts):
        counts = np.bincount(owners, minlength=n_parts)
        if counts[p] == 0:
            donor = int(np.argmax(counts))
            owners[np.flatnonzero(owners == donor)[-1]] = p
    return owners


def partition(
    n_items: int,
    n_parts: int,
    part: int,
    scheme: str = "iid",
    alpha: float = 0.5,
    labels: np.ndarray | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Sorted indices of shard ``part`` of a disjoint, covering split of ``range(n_items)``.

    Every client computes the whole split from the shared seed and keeps its
    own shard, so no coordination is needed to get disjoint data.
    """
    _check_partition_args(n_items, n_parts, part)
    rng = np.random.default_rng(seed)
    if scheme == "iid":
        return np.sort(np.array_split(rng.permutation(n_items), n_parts)[part])
    if scheme != "dirichlet":
        raise ValueError(f"unknown partition scheme {scheme!r}; expected 'iid' or 'dirichlet'")
    if labels is None:
        raise ValueError("dirichlet partitioning needs labels")
    labels = np.asarray(labels)
    if labels.shape != (n_items,):
        raise ValueError(f"labels must have shape ({n_items},), got {labels.shape}")
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    owners = _fill_empty_parts(_dirichlet_owners(labels, n_parts, alpha, rng), n_parts)
    return np.flatnonzero(owners == part)


def subset(ds: Dataset, idx: np.ndarray) -> Dataset:
    """Rows ``idx`` of ``ds`` (copied, so shards never alias each other)."""
    import torch

    index = torch.as_tensor(np.asarray(idx, dtype=np.int64))
    return Dataset(x=ds.x[index], y=ds.y[index], name=ds.name)
