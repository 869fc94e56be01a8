"""Every etcd request a node makes is counted under its thread's origin, exactly (issue 21).

Real etcd members. A thread labelled `run` makes a known sequence of requests through the
one client (`Store`); the `run` counts grow by exactly that many of each kind: a composite
call counts each request it sends (python-etcd3's `status()` is two), a retry after a failed
endpoint is one more request, a watch counts its creation, and nothing else moves `run`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

from conftest import EtcdCluster, free_port_base, in_thread

from raftfl.etcd.store import Store
from raftfl.net import origin as org

Counts = dict[tuple[str, str], int]


def run_labelled(label: str, fn: Callable[[], None]) -> Counts:
    """Run `fn` in a thread labelled `label`; the counts of that label it added."""
    before = org.counts()

    def work() -> None:
        org.origin(label)
        fn()

    in_thread(work, 60)
    after = org.counts()
    return {k: v - before.get(k, 0) for k, v in after.items()
            if k[0] == label and v != before.get(k, 0)}


def test_each_request_of_a_run_thread_counts_once(etcd_cluster: EtcdCluster) -> None:
    store = etcd_cluster.store()
    key = f"/origin-{os.urandom(4).hex()}/"
    stop = threading.Event()

    def work() -> None:
        store.put(key + "a", "1")  # Put
        assert store.get(key + "a") is not None  # Range
        store.range(key)  # Range
        store.range(key, serializable=True)  # Range, served by the member alone
        store.create(key + "b", "2")  # Txn
        store.delete(key + "a")  # DeleteRange
        lease = store.grant(5)  # LeaseGrant
        assert store.keepalive(lease) > 0  # LeaseKeepAlive (a stream of one request)
        store.revoke(lease)  # LeaseRevoke
        store.status()  # Status and MemberList
        watch = store.watch(key, store.revision() + 1, stop)  # Range (the revision); the watch
        store.put(key + "c", "3")  # Put
        assert next(watch).key == key + "c"
        stop.set()
        watch.close()  # cancels on the stream: not a request

    got = run_labelled("run", work)
    assert got == {("run", "write"): 4, ("run", "read"): 3, ("run", "local_read"): 1,
                   ("run", "lease"): 3,
                   ("run", "cluster"): 2, ("run", "watch"): 1}


def test_a_retry_is_one_more_request(etcd_cluster: EtcdCluster) -> None:
    """The first endpoint refuses connections: the put goes out twice, and counts twice."""
    dead = f"127.0.0.1:{free_port_base(1)}"
    store = Store([dead, etcd_cluster.endpoints[0]], timeout=2.0, retry_for=10.0)
    try:
        got = run_labelled("run", lambda: store.put(f"/origin-{os.urandom(4).hex()}", "1"))
    finally:
        store.close()
    assert got == {("run", "write"): 2}


def test_other_labels_do_not_count_as_run(etcd_cluster: EtcdCluster) -> None:
    store = etcd_cluster.store()
    before = org.counts()
    got = run_labelled("cycle", lambda: [store.range("/origin-none/") for _ in range(5)])
    assert got == {("cycle", "read"): 5}
    after = org.counts()
    assert {k: v for k, v in after.items() if k[0] == "run"} == {
        k: v for k, v in before.items() if k[0] == "run"}
