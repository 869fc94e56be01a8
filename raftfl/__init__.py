"""raftfl: federated learning with Flower, coordinated through etcd."""

from typing import Any

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # `raftfl.start` (the ServerApp's one changed line) imports Flower; load it on first use
    # so `import raftfl` and the CLI stay fast.
    if name == "start":
        from raftfl.flower.start import start

        return start
    raise AttributeError(f"module 'raftfl' has no attribute {name!r}")
