"""Which node may write which key under `rbac.permissions` (pure: etcd's range check, no
etcd). etcd grants a key when a role of the user has a permission whose range holds it:
[key, range_end), or the key itself when range_end is empty; a user's roles are unioned."""

from __future__ import annotations

import pytest

from raftfl.core.keys import Keys
from raftfl.etcd import rbac

CLUSTER = "c1"
A, B, AB = "10.0.0.1:5000", "10.0.0.2:5000", "10.0.0.1:50001"  # AB: A's name as a prefix
NODES = (A, B, AB)
KEYS = Keys(CLUSTER)
ROLES = rbac.permissions(CLUSTER, NODES)


def _holds(grant: rbac.Grant, key: bytes) -> bool:
    _, lo, hi = grant
    return key == lo if not hi else lo <= key < hi


def may(user: str, key: str, write: bool = True) -> bool:
    roles = ([rbac.node_role(CLUSTER), rbac.own_role(CLUSTER, user)] if user in NODES
             else [rbac.operator_role(CLUSTER)])
    wanted = {rbac.WRITE} if write else {rbac.READ, rbac.WRITE}
    return any(kind in wanted and _holds((kind, lo, hi), key.encode())
               for role in roles for kind, lo, hi in ROLES[role])


@pytest.mark.parametrize("user,key,allowed", [
    (A, KEYS.member(A), True),
    (B, KEYS.member(A), False),
    (AB, KEYS.member(A), False),  # one key, not a prefix: A's name prefixes AB's
    (A, KEYS.cert(A), True),  # the certificate its signatures are checked with
    (B, KEYS.cert(A), False),
    (AB, KEYS.cert(A), False),
    (A, KEYS.member(AB), False),
    (A, KEYS.latency_sample(A, 7), True),
    (B, KEYS.latency_sample(A, 7), False),
    (A, KEYS.latency_sample(AB, 7), False),
    (AB, KEYS.latency_sample(A, 7), False),
    (B, KEYS.latency + "stray", False),  # nobody writes latency/ outside their own prefix
    (B, KEYS.members + "stray/x", False),
    (A, KEYS.aggregator, True),  # the shared role: the election, runs, control, upgrades
    (A, KEYS.run(1).event(3), True),
    (A, KEYS.run(1).checkpoint_meta("ab"), True),
    (A, KEYS.handover, True),
    (A, KEYS.upgrade(B), True),
    (A, KEYS.config, True),
    (A, KEYS.suspect(4, A), True),
    (B, KEYS.suspect(4, A), False),
    (AB, KEYS.suspect(4, A), False),
    (A, KEYS.suspects + "stray", False),
    (A, KEYS.run(1).spec, False),  # submissions/: operators only
    (A, KEYS.run(1).app.checkpoint_chunk("ab", 0), False),
    (A, "/raftfl/c1x/aggregator", False),
    (A, "/raftfl/c2/members/" + A, False),
    ("operator-ops", KEYS.run(1).spec, True),
    ("operator-ops", KEYS.member(A), False),
    ("operator-ops", KEYS.aggregator, False),
])
def test_who_may_write(user: str, key: str, allowed: bool) -> None:
    assert may(user, key) is allowed


@pytest.mark.parametrize("user", [A, B, "operator-ops"])
@pytest.mark.parametrize("key", [KEYS.member(A), KEYS.latency_sample(B, 1), KEYS.run(1).spec,
                                 KEYS.aggregator, KEYS.suspect(2, A)])
def test_everyone_reads_the_whole_prefix(user: str, key: str) -> None:
    assert may(user, key, write=False)


def test_the_shared_ranges_leave_out_exactly_the_per_node_and_operator_prefixes() -> None:
    writes = [(lo, hi) for kind, lo, hi in ROLES[rbac.node_role(CLUSTER)] if kind == rbac.WRITE]
    assert writes == sorted(writes)
    assert all(a_hi <= b_lo for (_, a_hi), (b_lo, _) in zip(writes, writes[1:], strict=False))
    assert writes[0][0] == KEYS.root.encode() and writes[-1][1] == b"/raftfl/c10"
    holes = {hi for _, hi in writes[:-1]}
    assert holes == {KEYS.certs.encode(), KEYS.latency.encode(), KEYS.members.encode(),
                     KEYS.submissions.encode(), KEYS.suspects.encode()}


@pytest.mark.parametrize("start,end,holes,out", [
    (b"a", b"z", [], [(b"a", b"z")]),
    (b"a", b"z", [(b"c", b"d")], [(b"a", b"c"), (b"d", b"z")]),
    (b"a", b"z", [(b"x", b"y"), (b"c", b"d")], [(b"a", b"c"), (b"d", b"x"), (b"y", b"z")]),
    (b"a", b"z", [(b"a", b"b")], [(b"b", b"z")]),
    (b"a", b"z", [(b"y", b"z")], [(b"a", b"y")]),
    (b"a", b"z", [(b"c", b"f"), (b"d", b"e")], [(b"a", b"c"), (b"f", b"z")]),
    (b"a", b"z", [(b"a", b"z")], []),
])
def test_without(start: bytes, end: bytes, holes: list[tuple[bytes, bytes]],
                 out: list[tuple[bytes, bytes]]) -> None:
    assert rbac.without(start, end, holes) == out


def test_role_names() -> None:
    assert rbac.own_role(CLUSTER, A) == f"raftfl-{CLUSTER}-node-{A}"
    assert set(ROLES) == {rbac.node_role(CLUSTER), rbac.operator_role(CLUSTER),
                          *(rbac.own_role(CLUSTER, n) for n in NODES)}
