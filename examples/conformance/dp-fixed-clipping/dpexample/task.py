"""dpexample: A Flower / PyTorch app (Flower's quickstart-pytorch task, made offline).

Flower's quickstart downloads CIFAR-10; this one draws small synthetic CIFAR-shaped images
instead, so it runs anywhere and the same partition is the same data on every run: each class
is a fixed random prototype image plus Gaussian noise, and a partition's images are drawn from
a generator seeded by the partition id. Local shuffling uses a generator seeded by the round
and the partition, so a worker given the same arrays trains to the same arrays (bit for bit,
on one CPU thread).

The model and data are float64, unlike Flower's quickstart: Flower sums the replies in the
order they arrive, and in float32 that order alone (a 1e-7 difference in round 1) grew to a
relative difference of 8e-3 in the final model of a stateless FedAvg run after 6 rounds,
which would hide what a comparison of two runs is meant to show. In float64 it is ~1e-16.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F  # noqa: N812 - Flower's and PyTorch's own spelling
from torch.utils.data import DataLoader, TensorDataset

NUM_CLASSES = 10
SIGNAL = 1.0  # prototype weight against unit noise: learnable in a few rounds, not at once


class Net(nn.Module):
    """Model (simple CNN adapted from 'PyTorch: A 60 Minute Blitz')"""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)
        self.double()  # float64 throughout: see the module's docstring

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = x.view(-1, 16 * 5 * 5)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


def initial_model(seed: int) -> Net:
    """The same starting model wherever the ServerApp starts (seeded)."""
    torch.manual_seed(seed)
    return Net()


@functools.cache
def _prototypes(seed: int) -> np.ndarray:
    return np.random.default_rng([seed, 0]).normal(size=(NUM_CLASSES, 3, 32, 32))


@functools.cache
def _images(seed: int, stream: int, n: int) -> TensorDataset:
    rng = np.random.default_rng([seed, 1, stream])
    labels = rng.integers(0, NUM_CLASSES, size=n)
    images = SIGNAL * _prototypes(seed)[labels] + rng.normal(size=(n, 3, 32, 32))
    return TensorDataset(torch.from_numpy(images.astype(np.float64)),
                         torch.from_numpy(labels.astype(np.int64)))


def load_data(partition_id: int, num_partitions: int, batch_size: int, examples: int,
              seed: int, shuffle_seed: int = 0) -> tuple[DataLoader, DataLoader]:
    """This partition's train (80%) and validation (20%) loaders."""
    del num_partitions  # every partition draws its own images: nothing to split
    data = _images(seed, 1 + partition_id, examples)
    n_train = int(0.8 * examples)
    train = TensorDataset(*data[:n_train])
    val = TensorDataset(*data[n_train:])
    generator = torch.Generator().manual_seed(shuffle_seed)
    return (DataLoader(train, batch_size=batch_size, shuffle=True, generator=generator),
            DataLoader(val, batch_size=batch_size))


def load_centralized_dataset(examples: int, seed: int) -> DataLoader:
    """The central test set (evaluate_fn): a stream no partition uses."""
    return DataLoader(_images(seed, 0, examples), batch_size=128)


def train(net: Net, trainloader: DataLoader, epochs: int, lr: float) -> float:
    """Train the model on the training set."""
    criterion = torch.nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    net.train()
    running_loss = 0.0
    for _ in range(epochs):
        for images, labels in trainloader:
            optimizer.zero_grad()
            loss = criterion(net(images), labels)
            loss.backward()
            optimizer.step()
            running_loss += loss.item()
    return running_loss / (epochs * len(trainloader))


def test(net: Net, testloader: DataLoader) -> tuple[float, float]:
    """Validate the model on the test set: (loss, accuracy)."""
    criterion = torch.nn.CrossEntropyLoss()
    correct, loss = 0, 0.0
    net.eval()
    with torch.no_grad():
        for images, labels in testloader:
            outputs = net(images)
            loss += criterion(outputs, labels).item()
            correct += (torch.max(outputs.data, 1)[1] == labels).sum().item()
    return loss / len(testloader), correct / len(testloader.dataset)
