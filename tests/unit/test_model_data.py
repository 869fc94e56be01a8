"""Fast tests for raftfl.task.model and raftfl.task.data (no network, a few seconds on 2 cores).

They pin down the properties the federated code relies on: a fixed model
shape, a stable and strict wire format for weights, data that every process
regenerates identically, shards that neither overlap nor lose items, and a
synthetic task the CNN actually learns under FedAvg.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from raftfl.task import data, model

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module", autouse=True)
def _two_threads() -> None:
    """Match the 2-core target machine; thread count is process-wide, so set it here."""
    torch.set_num_threads(2)


@pytest.fixture(scope="module")
def weights() -> list[np.ndarray]:
    return model.initial_weights(0)


@pytest.fixture(scope="module")
def synthetic() -> tuple[data.Dataset, data.Dataset]:
    return data.synthetic_cifar(n_train=5000, n_test=1000, seed=0)


# --- model -----------------------------------------------------------------


def test_modules_import_without_torch() -> None:
    """The CLI imports these modules; pulling in torch would cost seconds per start."""
    code = (
        "import sys, raftfl.task.model, raftfl.task.data; "
        "sys.exit(1 if 'torch' in sys.modules or 'torchvision' in sys.modules else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0


def test_parameter_count_is_quickstart_cnn() -> None:
    net = model.build_net()
    assert sum(p.numel() for p in net.parameters()) == 62_006
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_initial_weights_deterministic_and_isolated(weights: list[np.ndarray]) -> None:
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    again = model.initial_weights(0)
    assert torch.rand(1) == before, "initial_weights must not disturb the global RNG"
    assert model.weights_sha256(again) == model.weights_sha256(weights)
    assert model.weights_sha256(model.initial_weights(1)) != model.weights_sha256(weights)
    assert all(w.dtype == np.float32 for w in weights)
    assert sum(w.size for w in weights) == 62_006


def test_get_set_weights_roundtrip(weights: list[np.ndarray]) -> None:
    net = model.build_net()
    model.set_weights(net, weights)
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(net), weights, strict=True))


def test_set_weights_rejects_mismatch(weights: list[np.ndarray]) -> None:
    net = model.build_net()
    with pytest.raises(ValueError, match="expected 10 weight arrays"):
        model.set_weights(net, weights[:-1])
    with pytest.raises(ValueError, match="shape mismatch"):
        model.set_weights(net, [*weights[:-1], np.zeros(3, dtype=np.float32)])


def test_weights_bytes_roundtrip_and_hash_stable(weights: list[np.ndarray]) -> None:
    blob = model.weights_to_bytes(weights)
    assert blob == model.weights_to_bytes([w.copy() for w in weights])
    restored = model.weights_from_bytes(blob)
    assert len(restored) == len(weights)
    for a, b in zip(restored, weights, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
        assert a.flags.writeable
    assert model.weights_sha256(restored) == model.weights_sha256(weights)
    assert len(model.weights_sha256(weights)) == 64


def test_weights_bytes_other_dtypes_and_byte_orders() -> None:
    ws = [
        np.arange(6, dtype=">f8").reshape(2, 3),
        np.array(7, dtype=np.int64),
        np.array([True, False]),
        np.zeros((0, 4), dtype=np.uint8),
    ]
    out = model.weights_from_bytes(model.weights_to_bytes(ws))
    for a, b in zip(out, ws, strict=True):
        assert a.shape == b.shape and np.array_equal(a, b)
    assert model.weights_to_bytes([ws[0]]) == model.weights_to_bytes([ws[0].astype("<f8")])


def _craft(header: object, payload: bytes = b"") -> bytes:
    head = json.dumps(header).encode()
    return model.MAGIC + struct.pack("<I", len(head)) + head + payload


@pytest.mark.parametrize(
    "blob",
    [
        b"",
        b"RAFT",
        b"not a weights blob at all",
        model.MAGIC,
        model.MAGIC + b"\x01\x00",
        model.MAGIC + struct.pack("<I", 2**31),
        model.MAGIC + struct.pack("<I", 3) + b"\xff\xfe\xfd",
        model.MAGIC + struct.pack("<I", 3) + b"{{{",
        _craft([1, 2]),
        _craft({"arrays": 5}),
        _craft({"nope": []}),
        _craft({"arrays": [{"dtype": "|O", "shape": [1]}]}, b"\0" * 8),
        _craft({"arrays": [{"dtype": "|V4", "shape": [1]}]}, b"\0" * 4),
        _craft({"arrays": [{"dtype": "bogus", "shape": [1]}]}),
        _craft({"arrays": [{"dtype": 4, "shape": [1]}]}),
        _craft({"arrays": [{"dtype": "<f4", "shape": [-1]}]}),
        _craft({"arrays": [{"dtype": "<f4", "shape": [True]}]}, b"\0" * 4),
        _craft({"arrays": [{"dtype": "<f4", "shape": "12"}]}),
        _craft({"arrays": [{"dtype": "<f4", "shape": [10**12]}]}, b"\0" * 4),
        _craft({"arrays": [{"dtype": "<f4"}]}),
        _craft({"arrays": [{"dtype": "<f4", "shape": [1]}]}, b"\0" * 5),
        "a str, not bytes",
    ],
)
def test_weights_from_bytes_rejects_corrupt(blob: bytes) -> None:
    with pytest.raises(ValueError):
        model.weights_from_bytes(blob)


def test_weights_from_bytes_rejects_truncation(weights: list[np.ndarray]) -> None:
    blob = model.weights_to_bytes(weights)
    header_end = len(model.MAGIC) + 4 + struct.unpack_from("<I", blob, len(model.MAGIC))[0]
    cuts = [*range(0, header_end + 8), len(blob) // 2, len(blob) - 1]
    for cut in cuts:
        with pytest.raises(ValueError):
            model.weights_from_bytes(blob[:cut])
    with pytest.raises(ValueError, match="trailing"):
        model.weights_from_bytes(blob + b"\0")


def test_train_and_evaluate_metrics(weights: list[np.ndarray]) -> None:
    train, test = data.synthetic_cifar(n_train=64, n_test=40, seed=3)
    new, metrics = model.train(weights, train, epochs=1, seed=0)
    again, _ = model.train(weights, train, epochs=1, seed=0)
    assert metrics["num_examples"] == 64 and np.isfinite(metrics["train_loss"])
    assert model.weights_sha256(new) != model.weights_sha256(weights)
    assert model.weights_sha256(new) == model.weights_sha256(again)
    loss, acc = model.evaluate(new, test)
    assert np.isfinite(loss) and 0.0 <= acc <= 1.0
    with pytest.raises(ValueError, match="empty"):
        model.evaluate(new, data.subset(test, np.array([], dtype=np.int64)))



@pytest.mark.parametrize("steps", [1, 2, 5])
def test_the_hand_sgd_step_is_torch_sgd_bit_for_bit(steps: int) -> None:
    """`model.train` steps by hand (torch.optim would import torch._dynamo, seconds of CPU):
    its parameters after any number of steps must equal torch.optim.SGD's, bit for bit."""
    gen = torch.Generator().manual_seed(steps)
    ours = [torch.randn(4, 3, generator=gen, requires_grad=True),
            torch.randn(5, generator=gen, requires_grad=True)]
    theirs = [p.detach().clone().requires_grad_(True) for p in ours]
    optimizer = torch.optim.SGD(theirs, lr=0.05, momentum=model.MOMENTUM)
    momentum: list[torch.Tensor | None] = [None] * len(ours)
    for _ in range(steps):
        for p, q in zip(ours, theirs, strict=True):
            p.grad = torch.randn(p.shape, generator=gen)
            q.grad = p.grad.clone()
        model._sgd_step(ours, momentum, 0.05)
        optimizer.step()
    assert all(torch.equal(p, q) for p, q in zip(ours, theirs, strict=True))

# --- data ------------------------------------------------------------------


def test_synthetic_is_deterministic_and_cifar_shaped(
    synthetic: tuple[data.Dataset, data.Dataset],
) -> None:
    train, test = synthetic
    train2, test2 = data.synthetic_cifar(n_train=5000, n_test=1000, seed=0)
    assert torch.equal(train.x, train2.x) and torch.equal(train.y, train2.y)
    assert torch.equal(test.x, test2.x) and torch.equal(test.y, test2.y)
    assert train.x.shape == (5000, 3, 32, 32) and train.x.dtype == torch.float32
    assert train.y.dtype == torch.int64 and set(train.y.tolist()) == set(range(10))
    assert len(test) == 1000 and train.name == test.name == "synthetic"
    other, _ = data.synthetic_cifar(n_train=100, n_test=10, seed=1)
    assert not torch.equal(other.x, train.x[:100])
    # The test set must not depend on how much training data was asked for.
    _, test_small = data.synthetic_cifar(n_train=10, n_test=1000, seed=0)
    assert torch.equal(test_small.x, test.x)


def test_load_dataset_kinds(tmp_path: Path) -> None:
    train, test = data.load_dataset("synthetic", n_train=20, n_test=10)
    assert (len(train), len(test), train.name) == (20, 10, "synthetic")
    with pytest.raises(ValueError, match="unknown dataset kind"):
        data.load_dataset("mnist")
    with pytest.raises(data.DatasetUnavailable):
        data.load_cifar10(str(tmp_path / "empty"))


def test_auto_never_downloads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """"auto" takes CIFAR-10 only from disk; offline (or anywhere without it) it is synthetic,
    and no socket is ever opened to find out."""
    import socket

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("a dataset lookup opened a socket")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    empty = str(tmp_path / "empty")
    assert data.resolve_kind("auto", empty) == "synthetic"
    train, test = data.load_dataset("auto", root=empty, n_train=30, n_test=10)
    assert (train.name, test.name, len(train), len(test)) == ("synthetic", "synthetic", 30, 10)
    with pytest.raises(data.DatasetUnavailable, match="nothing is downloaded"):
        data.load_dataset("cifar10", root=empty)
    # The extracted layout present (even empty files) makes "auto" choose CIFAR-10; loading
    # then verifies the files and reports corrupt ones in one line.
    base = tmp_path / "fake" / data.CIFAR10_DIR
    base.mkdir(parents=True)
    for name in data.CIFAR10_FILES:
        (base / name).write_bytes(b"")
    assert data.resolve_kind("auto", str(tmp_path / "fake")) == "cifar10"
    with pytest.raises(data.DatasetUnavailable):
        data.load_dataset("auto", root=str(tmp_path / "fake"))


def test_cifar_split_matches_torchvision_transforms() -> None:
    """The vectorised conversion must equal ToTensor + Normalize((0.5,)*3, (0.5,)*3)."""
    from PIL import Image
    from torchvision import transforms

    rng = np.random.default_rng(0)
    raw = SimpleNamespace(
        data=rng.integers(0, 256, size=(20, 32, 32, 3), dtype=np.uint8),
        targets=list(rng.integers(0, 10, size=20)),
    )
    ds = data._cifar_split(raw, n_keep=5, seed=0)
    idx = data._subsample_index(20, 5, seed=0)
    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5,) * 3, (0.5,) * 3)])
    expected = torch.stack([tf(Image.fromarray(raw.data[i])) for i in idx])
    assert ds.name == "cifar10" and len(ds) == 5
    assert torch.allclose(ds.x, expected, atol=1e-6)
    assert ds.y.tolist() == [raw.targets[i] for i in idx]


def _check_cover(parts: list[np.ndarray], n_items: int) -> None:
    joined = np.concatenate(parts)
    assert len(joined) == n_items, "shards overlap or lose items"
    assert np.array_equal(np.sort(joined), np.arange(n_items))
    assert all(len(p) > 0 for p in parts)


@pytest.mark.parametrize("n_items,n_parts", [(10, 3), (5000, 2), (1001, 7), (4, 4)])
def test_iid_partition_disjoint_and_covering(n_items: int, n_parts: int) -> None:
    parts = [data.partition(n_items, n_parts, p, seed=5) for p in range(n_parts)]
    _check_cover(parts, n_items)
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    again = [data.partition(n_items, n_parts, p, seed=5) for p in range(n_parts)]
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))


@pytest.mark.parametrize("alpha,n_parts", [(0.5, 2), (0.5, 5), (0.05, 20), (100.0, 3)])
def test_dirichlet_partition_disjoint_covering_non_empty(alpha: float, n_parts: int) -> None:
    labels = np.random.default_rng(0).integers(0, 10, size=600)
    parts = [
        data.partition(600, n_parts, p, "dirichlet", alpha=alpha, labels=labels, seed=1)
        for p in range(n_parts)
    ]
    _check_cover(parts, 600)
    again = data.partition(600, n_parts, 0, "dirichlet", alpha=alpha, labels=labels, seed=1)
    assert np.array_equal(parts[0], again)


def test_partition_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        data.partition(10, 2, 2)
    with pytest.raises(ValueError):
        data.partition(1, 2, 0)
    with pytest.raises(ValueError, match="scheme"):
        data.partition(10, 2, 0, scheme="weird")
    with pytest.raises(ValueError, match="labels"):
        data.partition(10, 2, 0, scheme="dirichlet")


def test_subset_selects_rows(synthetic: tuple[data.Dataset, data.Dataset]) -> None:
    train, _ = synthetic
    idx = np.array([3, 1, 4])
    part = data.subset(train, idx)
    assert len(part) == 3 and part.name == train.name
    assert torch.equal(part.x, train.x[[3, 1, 4]]) and torch.equal(part.y, train.y[[3, 1, 4]])


# --- learnability ----------------------------------------------------------


def _fedavg(results: list[tuple[list[np.ndarray], dict]]) -> list[np.ndarray]:
    """Example-weighted mean, as Flower's FedAvg does."""
    total = sum(m["num_examples"] for _, m in results)
    return [
        sum(w[i] * (m["num_examples"] / total) for w, m in results).astype(np.float32)
        for i in range(len(results[0][0]))
    ]


@pytest.mark.ondemand  # 5 minutes of training: an experiment, run with scripts/test.sh --all
def test_synthetic_is_about_as_hard_as_cifar10(weights: list[np.ndarray]) -> None:
    """The accuracy band of issue 12 on a reduced size: 3 FedAvg rounds land in 0.3..0.6,
    still rising, far above chance (0.1) and far below the 0.9 of the old, too easy set.

    Full size (50,000 images, 3 nodes, 1 epoch, lr 0.01; the app's defaults) measured
    0.24, 0.35, 0.43, ... 0.63 after round 10. Here: 10,000 images, 2 nodes, 2 epochs, lr 0.02.
    """
    train, test = data.synthetic_cifar(n_train=10_000, n_test=1000, seed=0)
    shards = [data.subset(train, data.partition(len(train), 2, p, seed=0)) for p in range(2)]
    global_w, accuracy = weights, []
    for rnd in range(3):
        results = [model.train(global_w, shard, epochs=2, lr=0.02, seed=100 * rnd + i)
                   for i, shard in enumerate(shards)]
        global_w = _fedavg(results)
        accuracy.append(model.evaluate(global_w, test)[1])
    print(f"synthetic FedAvg accuracy, rounds 1..3: {accuracy}")
    assert 0.3 <= accuracy[2] <= 0.6, accuracy
    assert accuracy[0] < accuracy[1] < accuracy[2], "the curve must still rise"
