"""Fenced writes at the Raft leader's member (raftfl/etcd/leader_route.py), on real etcd
members: the leader found, fencing kept, a forwarded copy saved in peer bytes, a dead leader
costing one fallback, a prune of many checkpoints in one fenced entry, and events appended
as one batch (all or none)."""

from __future__ import annotations

import os
import time

import pytest
from conftest import EtcdCluster

from raftfl.core.errors import FencedOut
from raftfl.core.events import CheckpointSaved, RoundCommitted, RoundStarted
from raftfl.core.keys import Keys, RunKeys
from raftfl.etcd import checkpoint, leader_route
from raftfl.etcd.eventlog import EventLog
from raftfl.etcd.leader_route import LeaderRoute
from raftfl.etcd.store import CreateResult, Fence, Store
from raftfl.lab.bench_traffic import etcd_bytes


def fresh_keys(cluster: EtcdCluster) -> RunKeys:
    return Keys(f"{cluster.name}-{os.urandom(4).hex()}").run(1)


def leader_index(cluster: EtcdCluster) -> int:
    statuses = [Store.member_status(ep) for ep in cluster.endpoints]
    return next(i for i, st in enumerate(statuses) if st.member_id == st.leader_id)


def follower_first(cluster: EtcdCluster) -> Store:
    """A Store the way a node not leading Raft has it: a follower's member first."""
    return cluster.store(cluster.rotated_endpoints((leader_index(cluster) + 1) % 3))


def term_of(store: Store, keys: RunKeys) -> Fence:
    assert store.create(keys.aggregator, "holder") is CreateResult.CREATED
    kv = store.get(keys.aggregator)
    assert kv is not None
    return Fence(keys.aggregator, kv.create_revision)


def raft_bytes(cluster: EtcdCluster) -> float:
    return sum(etcd_bytes(ep)["raft"] for ep in cluster.endpoints)


def test_a_follower_routes_to_the_leader_and_the_leader_to_itself(
        etcd_cluster_module: EtcdCluster) -> None:
    cluster = etcd_cluster_module
    leader = cluster.endpoints[leader_index(cluster)]
    routed = LeaderRoute(follower_first(cluster))
    assert routed.leader() == leader
    at_leader = LeaderRoute(cluster.store(cluster.rotated_endpoints(leader_index(cluster))))
    assert at_leader.leader() is None  # writes stay local: no second client


def test_routed_writes_keep_create_only_and_the_fence(etcd_cluster_module: EtcdCluster) -> None:
    store = follower_first(etcd_cluster_module)
    keys = fresh_keys(etcd_cluster_module)
    fence = term_of(store, keys)
    route = LeaderRoute(store)
    assert route.create(keys.event(1), "a", fence) is CreateResult.CREATED
    assert route.create(keys.event(1), "b", fence) is CreateResult.EXISTS
    kv = store.get(keys.event(1))
    assert kv is not None and kv.value == b"a"  # never overwritten
    stale = Fence(keys.aggregator, fence.create_revision - 1)
    before = store.revision()
    assert route.create(keys.event(2), "c", stale) is CreateResult.FENCED
    assert not route.put_fenced(keys.event(1), "d", stale)
    assert not route.delete_prefixes([keys.events], stale)
    assert store.revision() == before  # the refused writes wrote nothing
    assert route.put_fenced(keys.event(1), "e", fence)
    assert route.sent >= 3 and route.fallbacks == 0  # all at the leader


def test_a_routed_write_costs_raft_one_copy_less(etcd_cluster_module: EtcdCluster) -> None:
    """Each of 40 fenced 4 kB creates: through a follower, 2 appends plus the forwarded
    proposal (3 copies); at the leader, 2 (the heartbeats meanwhile are a few kB)."""
    cluster = etcd_cluster_module
    store = follower_first(cluster)
    keys = fresh_keys(cluster)
    fence = term_of(store, keys)
    value = os.urandom(2048).hex()
    route = leader_route.route(store)

    def cost(write) -> float:
        before = raft_bytes(cluster)
        for i in range(40):
            assert write(i) is CreateResult.CREATED
        return raft_bytes(cluster) - before

    direct = cost(lambda i: store.create(keys.event(i), value, fence=fence))
    routed = cost(lambda i: route.create(keys.event(100 + i), value, fence))
    assert route.fallbacks == 0
    assert 40 * 4096 * 2 <= routed < 0.8 * direct, (routed, direct)


def test_a_dead_leader_costs_one_fallback_then_local_writes(etcd_cluster: EtcdCluster) -> None:
    store = follower_first(etcd_cluster)
    keys = fresh_keys(etcd_cluster)
    fence = term_of(store, keys)
    route = LeaderRoute(store, backoff_s=30.0)
    assert route.create(keys.event(1), "a", fence) is CreateResult.CREATED
    etcd_cluster.kill(leader_index(etcd_cluster))
    t0 = time.monotonic()
    assert route.create(keys.event(2), "b", fence) is CreateResult.CREATED  # after an election
    assert route.create(keys.event(3), "c", fence) is CreateResult.CREATED
    assert time.monotonic() - t0 < 6.0
    assert route.fallbacks == 1  # the second write did not try the dead leader again
    assert [store.get(keys.event(i)).value for i in (1, 2, 3)] == [b"a", b"b", b"c"]  # type: ignore[union-attr]


def test_prune_deletes_many_checkpoints_in_few_fenced_entries(
        etcd_cluster_module: EtcdCluster) -> None:
    store = follower_first(etcd_cluster_module)
    keys = fresh_keys(etcd_cluster_module)
    fence = term_of(store, keys)
    saved = [checkpoint.save(store, keys, os.urandom(40), r, fence, chunk_bytes=16).sha256
             for r in range(leader_route.MAX_TXN_OPS + 6)]  # 3 chunks each: 4 keys
    stale = Fence(keys.aggregator, fence.create_revision - 1)
    assert checkpoint.prune(store, keys, set(saved[-2:]), stale) == []
    assert checkpoint.named(store, keys) == set(saved)  # fenced out: nothing deleted
    before = store.revision()
    removed = checkpoint.prune(store, keys, set(saved[-2:]), fence)
    assert sorted(removed) == sorted(saved[:-2])
    assert store.revision() - before == 2  # two transactions (64 + 4 checkpoints)
    left, _ = store.range(keys.checkpoints, keys_only=True)
    assert {kv.key.split("/")[-2] for kv in left} == set(saved[-2:])
    assert all(checkpoint.load(store, keys, sha) for sha in saved[-2:])


def commit_events(term: int, rnd: int) -> list:
    return [CheckpointSaved(node="a", term=term, round=rnd, sha256="c" * 64, size=10, chunks=1),
            RoundCommitted(node="a", term=term, round=rnd, model_sha256="c" * 64,
                           base_model="b" * 64, loss=1.0, accuracy=0.5, results=2)]


def test_a_batch_of_events_is_one_fenced_entry_after_any_key_in_its_way(
        etcd_cluster_module: EtcdCluster) -> None:
    store = follower_first(etcd_cluster_module)
    keys = fresh_keys(etcd_cluster_module)
    fence = term_of(store, keys)
    log = EventLog(store, keys)
    assert log.append(RoundStarted(node="a", term=fence.create_revision, round=1,
                                   base_model="b" * 64, clients=2), fence=fence) == 1
    store.put(keys.event(3), "written by hand")  # in the way of a batch at 2..3
    before = store.revision()
    batch = commit_events(fence.create_revision, 1)
    seqs = log.append_all(batch, fence=fence)
    assert seqs == [4, 5] and store.get(keys.event(2)) is None  # all or none, after key 3
    kvs = [store.get(keys.event(s)) for s in seqs]
    assert len({kv.mod_revision for kv in kvs if kv}) == 1  # one transaction...
    assert store.revision() - before == 1  # ...and the failed attempt at 2..3 wrote nothing
    assert [i.event for i in log.read(from_seq=4).events] == batch

    again = EventLog(store, keys)  # a retry of a batch that had landed: found, not doubled
    again._next_hint = 4
    assert again.append_all(batch, fence=fence) == [4, 5]
    assert store.revision() - before == 1

    stale = Fence(keys.aggregator, fence.create_revision - 1)
    with pytest.raises(FencedOut):
        log.append_all(commit_events(stale.create_revision, 2), fence=stale)
    assert store.revision() - before == 1 and store.get(keys.event(6)) is None
    with pytest.raises(ValueError):
        log.append_all([], fence=fence)


def test_a_rounds_manifests_are_one_fenced_entry_and_a_resave_updates_holders(
        etcd_cluster_module: EtcdCluster) -> None:
    store = follower_first(etcd_cluster_module)
    keys = fresh_keys(etcd_cluster_module)
    fence = term_of(store, keys)
    model, state = (checkpoint.Manifest(os.urandom(32).hex(), 3, 100, 0, ["h1:1", "h2:1"])
                    for _ in range(2))
    before = store.revision()
    checkpoint.save_manifests(store, keys, [model, state, model], fence)  # a twin once
    assert store.revision() - before == 1
    assert checkpoint.named(store, keys) == {model.sha256, state.sha256}

    moved = checkpoint.Manifest(model.sha256, 4, 100, 0, ["h3:1"])  # saved again elsewhere
    fresh = checkpoint.Manifest(os.urandom(32).hex(), 4, 100, 0, ["h3:1"])
    checkpoint.save_manifests(store, keys, [moved, fresh], fence)
    stored = store.get(keys.checkpoint_meta(model.sha256))
    assert stored is not None
    assert checkpoint.Manifest.from_json(stored.value).holders == ["h3:1"]
    assert checkpoint.named(store, keys) == {model.sha256, state.sha256, fresh.sha256}

    stale = Fence(keys.aggregator, fence.create_revision - 1)
    other = checkpoint.Manifest(os.urandom(32).hex(), 5, 100, 0, ["h1:1"])
    with pytest.raises(FencedOut):
        checkpoint.save_manifests(store, keys, [other], stale)
    assert other.sha256 not in checkpoint.named(store, keys)
