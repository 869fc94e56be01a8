"""The cluster configuration in etcd: created once, by the first node that proposes one.

The record itself (`ClusterConfig`: what it holds and its range checks) is pure, in
raftfl/core/specs.py; this is the one place that reads and writes its key.
"""

from __future__ import annotations

from raftfl.core.keys import Keys
from raftfl.core.specs import ClusterConfig
from raftfl.etcd.store import Store


def ensure(store: Store, keys: Keys, proposed: ClusterConfig | None) -> ClusterConfig | None:
    """Create the config if absent (first writer wins); return whatever is stored."""
    if proposed is not None:
        store.create(keys.config, proposed.to_json())
    kv = store.get(keys.config)
    return ClusterConfig.from_json(kv.value) if kv else None
