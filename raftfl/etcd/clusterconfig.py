"""The cluster configuration in etcd: created once, by the first node that proposes one.

The record itself (`RunConfig`: what it holds and its range checks) is pure, in
raftfl/core/runconfig.py; this is the one place that reads and writes its key.
"""

from __future__ import annotations

from raftfl.core.keys import Keys
from raftfl.core.runconfig import RunConfig
from raftfl.etcd.store import Store


def ensure(store: Store, keys: Keys, proposed: RunConfig | None) -> RunConfig | None:
    """Create the config if absent (first writer wins); return whatever is stored."""
    if proposed is not None:
        store.create(keys.config, proposed.to_json())
    kv = store.get(keys.config)
    return RunConfig.from_json(kv.value) if kv else None
