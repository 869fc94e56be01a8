"""`bench traffic`'s split of a window's Raft bytes (raftfl/lab/bench_traffic.py): etcd's
counters parsed by method, keys sorted by kind, per-round figures."""

from __future__ import annotations

import pytest

from raftfl.core.keys import Keys
from raftfl.lab.bench_traffic import describe_split, kind_of, parse_metrics, split

METRICS = """# HELP etcd_network_peer_sent_bytes_total The total number of bytes sent to peers.
etcd_network_peer_sent_bytes_total{To="a"} 1000
etcd_network_peer_sent_bytes_total{To="b"} 500
etcd_network_client_grpc_sent_bytes_total 70
etcd_network_client_grpc_received_bytes_total 30
etcd_server_proposals_committed_total 12
grpc_server_msg_received_total{grpc_method="Range",grpc_service="etcdserverpb.KV",grpc_type="unary"} 40
grpc_server_msg_received_total{grpc_method="LeaseKeepAlive",grpc_type="bidi_stream"} 9
grpc_server_handled_total{grpc_code="OK",grpc_method="Range",grpc_type="unary"} 40
etcd_network_peer_received_bytes_total{From="a"} 999
"""


def test_a_members_counters_by_channel_and_method() -> None:
    assert parse_metrics(METRICS) == {"raft": 1500.0, "client": 100.0, "entries": 12.0,
                                      "rpc.Range": 40.0, "rpc.LeaseKeepAlive": 9.0}


@pytest.mark.parametrize("key, kind", [
    ("/raftfl/c/latency/127.0.0.1:5000/000000000007", "latency"),
    ("/raftfl/c/members/127.0.0.1:5000", "members"),
    ("/raftfl/c/aggregator", "aggregator"),
    ("/raftfl/c/runs/12/events/000000000003", "runs/events"),
    ("/raftfl/c/runs/3/checkpoints/ab12/meta", "runs/checkpoints"),
    ("/raftfl/c/submissions/4/spec", "submissions/spec"),
])
def test_keys_by_kind(key: str, kind: str) -> None:
    assert kind_of(Keys("c"), key) == kind


def test_the_split_is_per_round_and_names_the_leaders_share() -> None:
    before = {"m0": parse_metrics(METRICS), "m1": parse_metrics(METRICS)}
    after = {m: {**v, "raft": v["raft"] + 300, "rpc.Range": v["rpc.Range"] + 30}
             for m, v in before.items()}
    writes = {"runs/events": {"count": 3, "bytes": 900}, "latency": {"count": 6, "bytes": 3000}}
    row = {"nodes": 3, **split(before, after, writes, "m1", 3)}
    assert row["raft_bytes_leader"] == 100
    assert row["rpc_per_round"] == {"Range": 20.0}  # a method that did not move is left out
    assert list(row["writes_per_round"]) == ["latency", "runs/events"]  # largest first
    assert row["writes_per_round"]["latency"] == {"count": 2.0, "bytes": 1000}
    text = describe_split(row)
    assert "latency 2 (1.0 kB)" in text and "Range 20" in text and "leader 100" in text
    assert split(before, after, {}, None, 3)["raft_bytes_leader"] is None
