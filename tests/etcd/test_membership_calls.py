"""Membership changes are sent once: after no answer, the member list says whether the change
happened (real etcd; the lost answer is simulated after a real change, or without one)."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from conftest import EtcdCluster, RpcFailure

from raftfl.core.errors import RaftflError
from raftfl.etcd import cluster_api
from raftfl.etcd.cluster_api import _once, list_members


def _counting(fn: Any, error: BaseException | None) -> tuple[Any, list[int]]:
    calls: list[int] = []

    def call() -> None:
        calls.append(1)
        fn()
        if error is not None:
            raise error

    return call, calls


@pytest.mark.parametrize("error", [
    RpcFailure(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"),
    RpcFailure(grpc.StatusCode.UNAVAILABLE, "etcdserver: request timed out"),
    RpcFailure(grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses")])
def test_a_change_whose_answer_was_lost_is_found_in_the_member_list(
        etcd_cluster: EtcdCluster, error: RpcFailure) -> None:
    store = etcd_cluster.store()
    url = "http://127.0.0.1:9"
    call, calls = _counting(lambda: cluster_api.add_learner(store, url), error)
    assert _once(store, call, lambda ms: any(url in m.peer_urls for m in ms), "add") is True
    assert calls == [1]
    learner = next(m for m in list_members(store) if url in m.peer_urls)
    assert learner.learner and not learner.name

    call, calls = _counting(lambda: cluster_api.remove(store, learner.id), error)
    assert _once(store, call, lambda ms: all(m.id != learner.id for m in ms), "remove") is True
    assert calls == [1] and len(list_members(store)) == 3


def test_a_lost_request_is_reported_as_not_done(etcd_cluster: EtcdCluster) -> None:
    store = etcd_cluster.store()
    call, calls = _counting(lambda: None, RpcFailure(grpc.StatusCode.DEADLINE_EXCEEDED, "x"))
    assert _once(store, call, lambda ms: len(ms) == 4, "add") is False
    assert calls == [1]


def test_a_refusal_is_not_retried_and_says_why(etcd_cluster: EtcdCluster) -> None:
    store = etcd_cluster.store()
    taken = list_members(store)[0].peer_urls[0]
    with pytest.raises(RaftflError, match="refused by etcd: Peer URLs already exists"):
        cluster_api.add_learner(store, taken)
    with pytest.raises(RaftflError, match="refused by etcd: member not found"):
        cluster_api.remove(store, 12345)
    assert len(list_members(store)) == 3
