"""flwr-new-pytorch: A Flower / PyTorch app."""

# Modified for raftfl's conformance suite (see ../../NOTICE): CIFAR-10, downloaded through
# flwr-datasets, is replaced by small synthetic CIFAR-shaped data generated in process
# (seeded by partition id) and local shuffling is seeded, so the app runs offline and
# trains deterministically. The model, train() and test() are the template's, unchanged.

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset


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


EXAMPLES_PER_PARTITION = 200  # 80% train, 20% test: a few optimizer steps per round


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


def load_data(partition_id: int, num_partitions: int):
    """Load this partition's synthetic data (CIFAR-10 shaped)."""
    partition = SyntheticCIFAR10(EXAMPLES_PER_PARTITION, seed=partition_id)
    # Divide data on each node: 80% train, 20% test
    n_train = int(0.8 * len(partition))
    train = torch.utils.data.Subset(partition, range(n_train))
    test = torch.utils.data.Subset(partition, range(n_train, len(partition)))
    # Construct dataloaders
    generator = torch.Generator().manual_seed(partition_id)
    trainloader = DataLoader(train, batch_size=32, shuffle=True, generator=generator)
    testloader = DataLoader(test, batch_size=32)
    return trainloader, testloader


def train(net, trainloader, epochs, lr, device):
    """Train the model on the training set."""
    net.to(device)  # move model to GPU if available
    criterion = torch.nn.CrossEntropyLoss().to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    net.train()
    running_loss = 0.0
    for _ in range(epochs):
        for batch in trainloader:
            images = batch["img"].to(device)
            labels = batch["label"].to(device)
            optimizer.zero_grad()
            loss = criterion(net(images), labels)
            loss.backward()
            optimizer.step()
            running_loss += loss.item()
    avg_trainloss = running_loss / len(trainloader)
    return avg_trainloss


def test(net, testloader, device):
    """Validate the model on the test set."""
    net.to(device)
    net.eval()
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
