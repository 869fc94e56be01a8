"""A run's snapshot in etcd (`runs/<id>/snapshot`; the record: raftfl/core/snapshot.py).

The aggregator writes it, fenced by its term like every aggregator write, so a deposed one
cannot replace it; every reader of the run's log starts from it (raftfl/etcd/eventlog.py).

In a secured cluster it is signed like an event (raftfl/etcd/signers.py), and a reader uses
it only if its writer (`node`) signed it and held its term (the node of the term's
`aggregator_elected` in the snapshot's state); else, like a snapshot failing its hash, it is
ignored with one warning and the reader folds the full log.
"""

from __future__ import annotations

from raftfl.core import snapshot
from raftfl.core.errors import FencedOut
from raftfl.core.keys import RunKeys
from raftfl.core.records import SKIPS, MalformedRecord, loads_bounded
from raftfl.core.replay import FLState
from raftfl.core.snapshot import MAX_SNAPSHOT_BYTES, Snapshot, TooBig
from raftfl.etcd import signers
from raftfl.etcd.store import Fence, Store


def load(store: Store, keys: RunKeys, revision: int | None = None) -> tuple[Snapshot, FLState] | None:
    """The run's snapshot (as of `revision`) and its state; None when there is none, or when
    it cannot be used (one warning: core/snapshot.py's `read`, or a forgery here)."""
    if revision is None:
        kv = store.get(keys.snapshot)
    else:
        kvs, _ = store.range(keys.snapshot, revision=revision, limit=1)
        kv = kvs[0] if kvs and kvs[0].key == keys.snapshot else None
    if kv is None:
        return None
    loaded = snapshot.read(kv.value, kv.key, keys.run_id, kv.mod_revision)
    if loaded is None:
        return None
    snap, state = loaded
    holder = state.holder(snap.term)
    forged = signers.check_raw(store, keys, kv.key, kv.value, kv.mod_revision, (holder,))
    if forged is not None:
        SKIPS.skip("snapshot", kv.key, f"forged: {forged}; folding the full log instead")
        return None
    return loaded


def save(store: Store, keys: RunKeys, state: FLState, revision: int, fence: Fence, node: str) -> None:
    """Store `state`, folded from every key the log had at `revision`, as the run's snapshot.
    FencedOut once the fence's term no longer holds the role; TooBig if it does not fit."""
    value = snapshot.encode(state, run=keys.run_id, revision=revision, term=fence.create_revision,
                            node=node)
    if signers.signer() is not None:
        try:
            value = signers.seal_json(store, keys, keys.snapshot, loads_bounded(
                value, MAX_SNAPSHOT_BYTES))
        except MalformedRecord as exc:  # its nesting: encode checked everything else
            raise TooBig(str(exc)) from exc
        if len(value.encode()) > MAX_SNAPSHOT_BYTES:
            raise TooBig(f"signed, {len(value.encode())} bytes, more than {MAX_SNAPSHOT_BYTES}")
    if not store.put_fenced(keys.snapshot, value, fence):
        raise FencedOut(f"snapshot rejected: term {fence.create_revision} no longer holds the "
                        "aggregator role")
