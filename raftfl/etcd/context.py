"""The ranking context, read from etcd: every live node's member record and latency samples,
and who suspects a term's holder; and a node's appends to its own sample stream.

Read at one revision (the vacancy's), these give every node the same inputs to the same
pure ranking. Records that do not decode, or that claim another node's name than their
key's, are skipped with one warning each and counted (`raftfl.core.records.SKIPS`).
"""

from __future__ import annotations

from raftfl.core.keys import Keys, seq_of
from raftfl.core.latency import Sample
from raftfl.core.member_record import MemberInfo
from raftfl.core.records import SKIPS, MalformedRecord
from raftfl.etcd.store import Store


def read_members(store: Store, keys: Keys, revision: int | None = None,
                 serializable: bool = False) -> dict[str, MemberInfo]:
    kvs, _ = store.range(keys.members, revision=revision, serializable=serializable)
    out = {}
    for kv in kvs:
        try:
            info = MemberInfo.from_json(kv.value)
            if info.node != kv.key[len(keys.members):]:
                raise MalformedRecord(f"record of {info.node!r} under another node's key")
        except MalformedRecord as exc:
            SKIPS.skip("member record", kv.key, str(exc))
            continue
        out[info.node] = info
    return out


def read_samples(store: Store, keys: Keys, revision: int | None = None) -> list[Sample]:
    kvs, _ = store.range(keys.latency, revision=revision)
    samples = []
    for kv in kvs:
        node = kv.key[len(keys.latency):].rpartition("/")[0]
        seq = seq_of(kv.key)
        try:
            if seq is None:
                raise MalformedRecord("key is not a sequence number")
            sample = Sample.from_json(kv.value, seq)
            if sample.node != node:
                raise MalformedRecord(f"sample of {sample.node!r} under another node's key")
        except MalformedRecord as exc:
            SKIPS.skip("latency sample", kv.key, str(exc))
            continue
        samples.append(sample)
    return samples


def append_sample(store: Store, keys: Keys, node: str, seq: int, value: str, lease: int,
                  drop: int | None = None) -> bool:
    """Create `node`'s sample `seq` on `lease` and delete its sample `drop` in the same
    transaction: one Raft entry instead of two (the delete alone was a fifth of a sample's
    bytes to every follower). False if `seq` exists already (nothing is written then)."""
    key = keys.latency_sample(node, seq)
    ops = [store.tx.put(key, value, lease=lease)]
    if drop is not None and drop > 0:
        ops.append(store.tx.delete(keys.latency_sample(node, drop)))
    ok, _ = store.call(lambda: store.client.transaction(
        compare=[store.tx.create(key) == 0], success=ops, failure=[]))
    return bool(ok)


def read_suspecting(store: Store, keys: Keys, term: int, revision: int | None = None,
                    ) -> frozenset[str]:
    """The nodes that published evidence that `term`'s holder is gone. Each node's
    suspicions are under its own prefix (RBAC gives it only that), so one range over all of
    them, filtered by term; a node keeps one (it deletes its older ones, all on its lease)."""
    kvs, _ = store.range(keys.suspects, revision=revision, keys_only=True)
    return frozenset(node for node, t in filter(None, map(keys.parse_suspect,
                                                           (kv.key for kv in kvs))) if t == term)
