"""The etcd request counter's label plumbing (raftfl/net/origin.py, raftfl/etcd/counting.py):
each thread's origin, the kind of each etcd method, and the counts they land in. Pure."""

from __future__ import annotations

import threading

import pytest
from conftest import in_thread
from etcd3 import etcdrpc

from raftfl.etcd.counting import kind_of
from raftfl.net import origin as org


def delta(before: dict[tuple[str, str], int]) -> dict[tuple[str, str], int]:
    after = org.counts()
    return {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}


@pytest.mark.parametrize("method, kind", [
    ("/etcdserverpb.KV/Range", "read"),
    ("/etcdserverpb.KV/Put", "write"),
    ("/etcdserverpb.KV/DeleteRange", "write"),
    ("/etcdserverpb.KV/Txn", "write"),
    ("/etcdserverpb.KV/Compact", "write"),
    ("/etcdserverpb.Lease/LeaseGrant", "lease"),
    ("/etcdserverpb.Lease/LeaseKeepAlive", "lease"),
    ("/etcdserverpb.Lease/LeaseRevoke", "lease"),
    ("/etcdserverpb.Maintenance/Status", "cluster"),
    ("/etcdserverpb.Cluster/MemberList", "cluster"),
    ("/etcdserverpb.Cluster/MemberAdd", "cluster"),
    ("/etcdserverpb.Auth/RoleGet", "cluster"),
    ("/etcdserverpb.Watch/Watch", None),  # a stream: Store.watch counts each creation
])
def test_kind_of_each_method(method: str, kind: str | None) -> None:
    assert kind_of(method) == kind


@pytest.mark.parametrize("serializable, kind", [(False, "read"), (True, "local_read")])
def test_a_serializable_range_is_a_local_read(serializable: bool, kind: str) -> None:
    request = etcdrpc.RangeRequest(key=b"k", serializable=serializable)
    assert kind_of("/etcdserverpb.KV/Range", request) == kind


@pytest.mark.parametrize("label, kinds, expected", [
    (None, ["read"], {("other", "read"): 1}),  # an unlabelled thread
    ("run", ["write", "write", "read"], {("run", "write"): 2, ("run", "read"): 1}),
    ("cycle", ["read", "cluster"], {("cycle", "read"): 1, ("cycle", "cluster"): 1}),
    ("lease", ["lease"] * 3, {("lease", "lease"): 3}),
    ("api", ["watch"], {("api", "watch"): 1}),
])
def test_a_thread_counts_under_its_own_origin(label: str | None, kinds: list[str],
                                              expected: dict[tuple[str, str], int]) -> None:
    before = org.counts()

    def work() -> None:
        if label is not None:
            org.origin(label)
        for kind in kinds:
            org.count(kind)

    in_thread(work)
    assert delta(before) == expected


def test_labels_do_not_leak_between_threads() -> None:
    seen: dict[str, str] = {}
    labelled = threading.Event()
    checked = threading.Event()

    def a() -> None:
        org.origin("run")
        labelled.set()
        checked.wait(10)
        seen["a"] = org.current()

    def b() -> None:
        labelled.wait(10)
        seen["b"] = org.current()
        checked.set()

    threads = [threading.Thread(target=a), threading.Thread(target=b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert seen == {"a": "run", "b": "other"}


def test_relabelling_moves_later_requests_only() -> None:
    before = org.counts()

    def work() -> None:
        org.origin("cycle")
        org.count("read")
        org.origin("run")
        org.count("read")
        org.count("read")

    in_thread(work)
    assert delta(before) == {("cycle", "read"): 1, ("run", "read"): 2}


def test_concurrent_counts_are_exact() -> None:
    before = org.counts()

    def work() -> None:
        org.origin("probe")
        for _ in range(2000):
            org.count("write")

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert delta(before) == {("probe", "write"): 16000}


@pytest.mark.parametrize("call", [lambda: org.origin("runs"), lambda: org.origin(""),
                                  lambda: org.count("reads")])
def test_unknown_labels_are_refused(call) -> None:  # noqa: ANN001
    before = org.counts()
    with pytest.raises(ValueError, match="unknown"):
        in_thread(call)
    assert delta(before) == {}
