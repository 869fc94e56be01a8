"""A run's snapshot in etcd (`runs/<id>/snapshot`; the record: raftfl/core/snapshot.py).

The aggregator writes it, fenced by its term like every aggregator write, so a deposed one
cannot replace it; every reader of the run's log starts from it (raftfl/etcd/eventlog.py).
"""

from __future__ import annotations

from raftfl.core import snapshot
from raftfl.core.errors import FencedOut
from raftfl.core.keys import RunKeys
from raftfl.core.replay import FLState
from raftfl.core.snapshot import Snapshot
from raftfl.etcd.store import Fence, Store


def load(store: Store, keys: RunKeys, revision: int | None = None) -> tuple[Snapshot, FLState] | None:
    """The run's snapshot (as of `revision`) and its state; None when there is none, or when
    it cannot be used (one warning: core/snapshot.py's `read`)."""
    if revision is None:
        kv = store.get(keys.snapshot)
    else:
        kvs, _ = store.range(keys.snapshot, revision=revision, limit=1)
        kv = kvs[0] if kvs and kvs[0].key == keys.snapshot else None
    return None if kv is None else snapshot.read(kv.value, kv.key, keys.run_id, kv.mod_revision)


def save(store: Store, keys: RunKeys, state: FLState, revision: int, fence: Fence, node: str) -> None:
    """Store `state`, folded from every key the log had at `revision`, as the run's snapshot.
    FencedOut once the fence's term no longer holds the role; TooBig if it does not fit."""
    value = snapshot.encode(state, run=keys.run_id, revision=revision, term=fence.create_revision,
                            node=node)
    if not store.put_fenced(keys.snapshot, value, fence):
        raise FencedOut(f"snapshot rejected: term {fence.create_revision} no longer holds the "
                        "aggregator role")
