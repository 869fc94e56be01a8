"""secaggexample: A Flower with SecAgg+ app."""

import random
from collections import OrderedDict
from unittest.mock import Mock

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

# Modified for raftfl's conformance suite (see ../../NOTICE): CIFAR-10, downloaded through
# flwr-datasets, is replaced by small synthetic CIFAR-shaped data generated in process
# (seeded by partition id) and local shuffling is seeded, so the app runs offline and
# trains deterministically. The model, train() and test() are Flower's, unchanged.


class Net(nn.Module):
    """Model (simple CNN adapted from 'PyTorch: A 60 Minute Blitz')"""

    def __init__(self):
        super(Net, self).__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = x.view(-1, 16 * 5 * 5)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


def make_net(seed=42):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return Net()


def get_weights(net):
    return [val.cpu().numpy() for _, val in net.state_dict().items()]


def set_weights(net, parameters):
    params_dict = zip(net.state_dict().keys(), parameters)
    state_dict = OrderedDict({k: torch.tensor(v) for k, v in params_dict})
    net.load_state_dict(state_dict, strict=True)


EXAMPLES_PER_PARTITION = 200  # 80% train, 20% test: a few SGD steps per round


class SyntheticCIFAR10(Dataset):
    """Offline stand-in for CIFAR-10: 3x32x32 images of 10 classes, each a fixed random
    class pattern plus noise, drawn from a generator seeded by `seed`; items are dicts with
    "img" and "label", as the FederatedDataset partitions were."""

    def __init__(self, size: int, seed: int):
        patterns = torch.randn(10, 3, 32, 32, generator=torch.Generator().manual_seed(2024))
        generator = torch.Generator().manual_seed(seed)
        self.labels = torch.randint(0, 10, (size,), generator=generator)
        self.images = 0.5 * patterns[self.labels] + torch.randn(
            size, 3, 32, 32, generator=generator
        )

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        return {"img": self.images[index], "label": self.labels[index]}


def load_data(partition_id: int, num_partitions: int, batch_size: int, is_demo: bool):
    """Load this partition's synthetic data (CIFAR-10 shaped)."""
    if is_demo:
        trainloader, testloader = Mock(dataset=[0]), Mock(dataset=[0])
        return trainloader, testloader
    partition = SyntheticCIFAR10(EXAMPLES_PER_PARTITION, seed=partition_id)
    # Divide data on each node: 80% train, 20% test
    n_train = int(0.8 * len(partition))
    train = torch.utils.data.Subset(partition, range(n_train))
    test = torch.utils.data.Subset(partition, range(n_train, len(partition)))
    generator = torch.Generator().manual_seed(partition_id)
    trainloader = DataLoader(train, batch_size=batch_size, shuffle=True, generator=generator)
    testloader = DataLoader(test, batch_size=batch_size)
    return trainloader, testloader


def train(net, trainloader, valloader, epochs, learning_rate, device):
    """Train the model on the training set."""
    net.to(device)  # move model to GPU if available
    criterion = torch.nn.CrossEntropyLoss().to(device)
    optimizer = torch.optim.SGD(net.parameters(), lr=learning_rate, momentum=0.9)
    net.train()
    for _ in range(epochs):
        for batch in trainloader:
            images = batch["img"]
            labels = batch["label"]
            optimizer.zero_grad()
            criterion(net(images.to(device)), labels.to(device)).backward()
            optimizer.step()

    val_loss, val_acc = test(net, valloader, device)

    results = {
        "val_loss": val_loss,
        "val_accuracy": val_acc,
    }
    return results


def test(net, testloader, device):
    """Validate the model on the test set."""
    net.to(device)  # move model to GPU if available
    criterion = torch.nn.CrossEntropyLoss()
    correct, loss = 0, 0.0
    with torch.no_grad():
        for batch in testloader:
            images = batch["img"].to(device)
            labels = batch["label"].to(device)
            outputs = net(images)
            loss += criterion(outputs, labels).item()
            correct += (torch.max(outputs.data, 1)[1] == labels).sum().item()
    accuracy = correct / len(testloader.dataset)
    loss = loss / len(testloader)
    return loss, accuracy
