"""`bench replay --restart` grows a live run's log (lab/bench_restart.py `grow`) on real
etcd: create-only, fenced by the term, in log order, beside an aggregator's own appends."""

from __future__ import annotations

import os
import threading

import pytest
from conftest import EtcdCluster

from raftfl.core.errors import RaftflError
from raftfl.core.events import NodeJoined, NodeLeft, RoundStarted
from raftfl.core.keys import Keys, seq_of
from raftfl.etcd.eventlog import EventLog
from raftfl.etcd.store import Fence
from raftfl.lab.bench_restart import Filler, grow

NODE = "127.0.0.1:5002"


def test_the_log_grows_in_order_around_the_aggregators_appends(
        etcd_cluster_module: EtcdCluster) -> None:
    store = etcd_cluster_module.store()
    keys = Keys(f"grow-{os.urandom(4).hex()}")
    run = keys.run(1)
    term = store.create_revision(keys.aggregator, "a")
    assert term is not None
    log, done = EventLog(store, run), threading.Event()
    appended: list[int] = []

    def aggregator() -> None:  # appends as a recorder does, while the log grows
        while not done.is_set():
            appended.append(log.append(RoundStarted(node="a", term=term, round=len(appended) + 1,
                                                    base_model="0" * 64, clients=3),
                                       fence=Fence(keys.aggregator, term)))

    thread = threading.Thread(target=aggregator)
    thread.start()
    try:
        grown = grow(store, keys, run, 3000, term, Filler(NODE, term))
    finally:
        done.set()
        thread.join(10)
    kvs, _ = store.range(run.events)
    seqs = [seq_of(kv.key) for kv in kvs]
    assert seqs == list(range(1, len(kvs) + 1))  # no gap, nothing written twice
    assert grown.last_seq >= 3000 and grown.added == 3000 - len([s for s in appended
                                                                  if s <= grown.last_seq])
    revisions = [kv.create_revision for kv in kvs]
    assert revisions == sorted(revisions)  # in log order: a reader never refolds
    state = log.state()[0]
    assert state.events == len(kvs) and not state.rejected
    types = {type(item.event) for item in EventLog(store, run).read().events}
    assert {NodeLeft, NodeJoined} <= types <= {NodeLeft, NodeJoined, RoundStarted}


def test_nothing_is_added_once_the_term_has_ended(etcd_cluster_module: EtcdCluster) -> None:
    store = etcd_cluster_module.store()
    keys = Keys(f"grow-{os.urandom(4).hex()}")
    term = store.create_revision(keys.aggregator, "a")
    assert term is not None
    store.delete(keys.aggregator)
    store.create_revision(keys.aggregator, "b")  # the next term
    with pytest.raises(RaftflError, match="no longer holds the role"):
        grow(store, keys, keys.run(1), 500, term, Filler(NODE, term))
    assert store.range(keys.run(1).events, keys_only=True)[0] == []
