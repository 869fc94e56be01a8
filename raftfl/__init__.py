"""raftfl: federated learning with Flower, coordinated through etcd."""

__version__ = "0.1.0"
