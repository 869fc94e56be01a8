"""The lean transactions of raftfl/etcd/leader_route.py and the leader's client URL, as
tables: no failure branch (etcd replicates the whole request), the fence in every one."""

from __future__ import annotations

import pytest

from raftfl.etcd import leader_route
from raftfl.etcd.store import Fence

FENCE = Fence("/raftfl/c/aggregator", 42)
KEY = "/raftfl/c/runs/1/events/000000000007"


@pytest.mark.parametrize(("url", "endpoint"), [
    ("http://127.0.0.1:2379", "127.0.0.1:2379"),
    ("https://[::1]:2379/", "[::1]:2379"),
    ("10.0.0.1:5100", "10.0.0.1:5100"),
    ("http://host", None),
    ("http://host:port", None),
    ("http://:2379", None),
    ("http://host:70000", None),
    ("", None),
])
def test_leader_endpoint_from_client_url(url: str, endpoint: str | None) -> None:
    assert leader_route.leader_endpoint(url) == endpoint


def _compares(request) -> list[tuple[bytes, int]]:
    return [(c.key, c.create_revision) for c in request.compare]


@pytest.mark.parametrize(("request_", "compares", "ops"), [
    (leader_route.create_request([(KEY, "v")], FENCE),
     [(KEY.encode(), 0), (FENCE.key.encode(), 42)], 1),
    (leader_route.create_request([(KEY, b"v")], None), [(KEY.encode(), 0)], 1),
    (leader_route.create_request([(KEY, "v"), (KEY + "8", "w")], FENCE),
     [(KEY.encode(), 0), (KEY.encode() + b"8", 0), (FENCE.key.encode(), 42)], 2),
    (leader_route.put_request(KEY, "v", FENCE), [(FENCE.key.encode(), 42)], 1),
    (leader_route.delete_prefixes_request(["/a/", "/b/"], FENCE), [(FENCE.key.encode(), 42)], 2),
])
def test_requests_carry_compares_and_writes_only(request_, compares, ops) -> None:
    assert _compares(request_) == compares
    assert len(request_.success) == ops and len(request_.failure) == 0


def test_a_lean_create_is_smaller_by_the_failure_reads() -> None:
    """What the old create's failure branch cost each entry: the key and the fence's key."""
    lean = leader_route.create_request([(KEY, "v" * 300)], FENCE).ByteSize()
    assert lean < 300 + 2 * len(KEY) + len(FENCE.key) + 40


def test_a_prefix_delete_ends_at_the_prefix() -> None:
    (op,) = leader_route.delete_prefixes_request(["/r/checkpoints/ab/"], FENCE).success
    assert (op.request_delete_range.key, op.request_delete_range.range_end) == (
        b"/r/checkpoints/ab/", b"/r/checkpoints/ab0")
