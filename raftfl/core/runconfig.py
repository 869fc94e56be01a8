"""The run configuration: written once to `config` when the cluster is created, read by all.

Every node trains with the same settings and shards the data the same way because they all
read this one record, not their own command lines.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field

from raftfl.core.errors import RaftflError
from raftfl.core.keys import Keys
from raftfl.core.ranking import Weights
from raftfl.etcd.store import Store


@dataclass(frozen=True)
class RunConfig:
    rounds: int
    nodes: list[str]  # initial node names; a node's shard is its index in this sorted list
    dataset: str = "auto"
    partition: str = "iid"
    alpha: float = 0.5
    n_train: int = 5000
    n_test: int = 1000
    epochs: int = 1
    lr: float = 0.01
    batch_size: int = 32
    seed: int = 0
    weights: dict[str, float] = field(default_factory=dict)  # ranking weights (ranking.Weights)
    created: float = field(default_factory=time.time)

    @property
    def ranking_weights(self) -> Weights:
        """One set of weights for the whole cluster, or the nodes would rank differently."""
        return Weights(**self.weights)

    def shard_index(self, node: str) -> int:
        ordered = sorted(self.nodes)
        if node in ordered:
            return ordered.index(node)
        return sum(node.encode()) % len(ordered)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, raw: bytes) -> RunConfig:
        try:
            obj = json.loads(raw)
            return cls(**{k: v for k, v in obj.items() if k in cls.__dataclass_fields__})
        except (ValueError, TypeError) as exc:
            raise RaftflError(f"cluster config is unreadable: {exc}") from exc


def ensure(store: Store, keys: Keys, proposed: RunConfig | None) -> RunConfig | None:
    """Create the config if absent (first writer wins); return whatever is stored."""
    if proposed is not None:
        store.create(keys.config, proposed.to_json())
    kv = store.get(keys.config)
    return RunConfig.from_json(kv.value) if kv else None
