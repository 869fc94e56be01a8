"""`bench scale` reads the nodes' etcd request counters and the members' gRPC counters and
turns two readings into per-round figures (raftfl/lab/bench_scale.py): pure, table-tested."""

from __future__ import annotations

import pytest

from raftfl.lab.bench_scale import Counts, counted, etcd_figures, handled

NODE_TEXT = """# HELP raftfl_etcd_requests_total etcd requests this node sent
# TYPE raftfl_etcd_requests_total counter
raftfl_etcd_requests_total{cluster="c",node="n1",origin="run",kind="read"} 12.0
raftfl_etcd_requests_total{cluster="c",node="n1",origin="run",kind="write"} 7.0
raftfl_etcd_requests_total{cluster="c",node="n1",origin="cycle",kind="read"} 30.0
raftfl_etcd_requests_created{cluster="c",node="n1",origin="run",kind="read"} 1.7e+09
raftfl_ready{cluster="c",node="n1"} 1.0
"""
_KV = 'grpc_service="etcdserverpb.KV",grpc_type="unary"'
MEMBER_TEXT = (f'grpc_server_handled_total{{grpc_code="OK",grpc_method="Range",{_KV}}} 40\n'
               f'grpc_server_handled_total{{grpc_code="NotFound",grpc_method="Range",{_KV}}} 2\n'
               f'grpc_server_handled_total{{grpc_code="OK",grpc_method="Txn",{_KV}}} 9\n')


@pytest.mark.parametrize("text, expected", [
    (NODE_TEXT, {("run", "read"): 12.0, ("run", "write"): 7.0, ("cycle", "read"): 30.0}),
    ('raftfl_ready{cluster="c",node="n1"} 1.0\n', None),  # a node that does not count
    ("# HELP raftfl_etcd_requests_total x\n", {}),  # counts, none made yet
    ("", None),
])
def test_a_nodes_counters(text: str, expected: dict | None) -> None:
    assert counted(text) == expected


def test_a_members_counters_by_method() -> None:
    assert handled(MEMBER_TEXT) == {"Range": 42.0, "Txn": 9.0}


def reading(at: float, nodes: dict | None, members: dict) -> Counts:
    return Counts(at, nodes, members)


@pytest.mark.parametrize("before, after, rounds, expected", [
    # the run origin's and the woken HA cycles' requests per round, exactly; the rest per second
    (reading(0, {("run", "read"): 10, ("run", "write"): 5, ("cycle", "read"): 100,
                 ("wake", "read"): 3},
             {"Range": 100, "Txn": 10}),
     reading(4, {("run", "read"): 70, ("run", "write"): 35, ("cycle", "read"): 140,
                 ("lease", "lease"): 8, ("wake", "read"): 9},
             {"Range": 300, "Txn": 50}),
     3,
     {"etcd_requests_per_round": 30.0, "etcd_writes_per_round": 10.0,
      "etcd_woken_cycles_per_round": 2.0,
      "etcd_run_by_kind_per_round": {"read": 20.0, "write": 10.0},
      "etcd_background_per_s": 12.0,
      "etcd_background_by_origin_per_s": {"cycle": 10.0, "lease": 2.0},
      "etcd_counted_per_s": 36.0, "etcd_all_requests_per_round": 80.0,
      "etcd_run_by_node_per_round": {},
      "etcd_by_method_per_round": {"Range": 66.7, "Txn": 13.3}, "etcd_requests_per_s": 60.0,
      "etcd_window_rounds": 3, "etcd_window_s": 4.0}),
    # a node that did not tell: no exact figure (None, judged a miss), the members' only
    (reading(0, None, {"Range": 1}), reading(2, {("run", "read"): 9}, {"Range": 11}), 2,
     {"etcd_requests_per_round": None, "etcd_writes_per_round": None,
      "etcd_woken_cycles_per_round": None, "etcd_background_per_s": None, "etcd_all_requests_per_round": 5.0,
      "etcd_by_method_per_round": {"Range": 5.0}, "etcd_requests_per_s": 5.0,
      "etcd_window_rounds": 2, "etcd_window_s": 2.0}),
])
def test_figures_from_two_readings(before: Counts, after: Counts, rounds: int,
                                   expected: dict) -> None:
    assert etcd_figures(before, after, rounds) == expected
