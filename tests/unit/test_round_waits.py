"""Which nodes a round waits for before it starts (`aggregator.missing_workers`): a table."""

from __future__ import annotations

import pytest

from raftfl.core.member_record import MemberInfo
from raftfl.node.aggregator import missing_workers
from raftfl.node.runapp import node_id

A, B, C, D = "10.0.0.1:5000", "10.0.0.2:5000", "10.0.0.3:5000", "10.0.0.4:5000"


def member(name: str, finished: bool = False) -> MemberInfo:
    host, port = name.rsplit(":", 1)
    return MemberInfo(node=name, ip=host, client_port=int(port) + 100,
                      flower_address=f"{host}:{int(port) + 200}", finished=finished)


@pytest.mark.parametrize(("records", "connected", "initial", "predecessor", "missing"), [
    # Later rounds: every live member's worker, but the dead predecessor's.
    ([A, B, C], [A, B, C], (), None, set()),
    ([A, B, C], [A, B], (), None, {C}),
    ([A, B, C], [A, B], (), C, set()),
    ([A, B, (C, True)], [A, B], (), None, set()),  # finished: it fetched the final model
    ([A, B], [A, B, 77, 78], (), None, set()),  # edge workers are not waited for, nor count
    # Run 1, before its first commit: the cluster's initial nodes too, and their records.
    ([A, B], [A, B], (A, B, C), None, {C}),  # C is still starting: neither record nor worker
    ([A, B], [A, B, C], (A, B, C), None, {C}),  # C's worker came before its record
    ([A, B, C], [A, B, C], (A, B, C), None, set()),
    ([A, B, (C, True)], [A, B], (A, B, C), None, set()),
    ([A, B], [A, B], (A, B, C), C, set()),
    ([A, B, C, D], [A, B, C], (A, B, C), None, {D}),  # a joiner's live record is waited for
])
def test_a_round_waits_for(records: list, connected: list, initial: tuple,
                           predecessor: str | None, missing: set[str]) -> None:
    members = {m.node: m for m in (member(*r) if isinstance(r, tuple) else member(r)
                                   for r in records)}
    ids = {node_id(c) if isinstance(c, str) else c for c in connected}
    assert missing_workers(members, ids, initial=initial, predecessor=predecessor) == missing
