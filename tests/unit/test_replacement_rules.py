"""Automatic replacement of lost voters (raftfl/core/replacement.py), as a table: the member
list, the nodes without a member and the request in flight go in, one step comes out."""

from __future__ import annotations

import pytest

from raftfl.core.replacement import Kind, Request, Seat, next_step

GRACE = 10.0


def voter(i: int, down: float | None = None) -> Seat:
    """Voter n<i> (member id 0x10+i); `down`: unhealthy for that many seconds."""
    return Seat(0x10 + i, f"n{i}", True, down is None, down or 0.0)


def learner(i: int, up: bool = True, since: float = 0.0, name: bool = True) -> Seat:
    return Seat(0x10 + i, f"n{i}" if name else "", False, up, 0.0 if up else since, since)


FIVE = [voter(i) for i in range(5)]
CLIENTS = ["n5", "n6", "n7"]

CASES = [
    # (case, seats, clients, asked, me, avoid) -> (kind, member, node, words)
    ("all healthy at the target", FIVE, CLIENTS, None, "n0", (),
     Kind.NOTHING, None, None, "5 voters, all healthy: surviving 2 more voter failures"),
    ("a voter down within its grace", [voter(0), voter(1, down=4), *FIVE[2:]], CLIENTS, None,
     "n0", (), Kind.WAIT, 0x11, None, "voter n1 unhealthy for 4s: replaced after 10s"),
    ("a voter down past its grace", [voter(0), voter(1, down=10), *FIVE[2:]], CLIENTS, None,
     "n0", (), Kind.REMOVE, 0x11, "n1", "voter n1 unhealthy for 10s: removing member 11 "
     "(4 voters left, surviving 1 more voter failure)"),
    ("two down: the longest first", [voter(0), voter(1, down=12), voter(2, down=30),
                                     *FIVE[3:]], CLIENTS, None, "n0", (),
     Kind.REMOVE, 0x12, "n2", "voter n2 unhealthy for 30s"),
    ("4 of 5 after a removal: 4 healthy voters ask n5", FIVE[:4], CLIENTS, None, "n0", (),
     Kind.ASK, None, "n5", "asking n5 to become a voter (4 of 5 voters)"),
    ("3 of 3 voters healthy, 2 removed", FIVE[:3], CLIENTS, None, "n0", (),
     Kind.ASK, None, "n5", "(3 of 5 voters)"),
    ("candidates by name, the asking node last", FIVE[:4], ["n7", "n6", "n5"], None, "n5", (),
     Kind.ASK, None, "n6", "asking n6"),
    ("the asking node when no one else is left", FIVE[:4], ["n5"], None, "n5", (),
     Kind.ASK, None, "n5", "asking n5"),
    ("a node whose upgrade failed is not asked again", FIVE[:4], CLIENTS, None, "n0", ("n5",),
     Kind.ASK, None, "n6", "asking n6"),
    ("no one to ask", FIVE[:4], [], None, "n0", (),
     Kind.NOTHING, None, None, "4 voters, below the target of 5, and no node"),
    ("a request in flight is waited for", FIVE[:4], CLIENTS, Request("n5", 3), "n0", (),
     Kind.WAIT, None, "n5", "waiting for n5 to become a voter"),
    ("... also while its learner catches up", [*FIVE[:4], learner(5, since=2)], CLIENTS[1:],
     Request("n5", 4), "n0", (), Kind.WAIT, None, "n5", "waiting for n5"),
    ("a request is done once its node votes", [*FIVE[:4], voter(5)], CLIENTS[1:],
     Request("n5", 9), "n0", (), Kind.CLEAR, None, "n5", "n5 is a voter: request done"),
    ("a stale request is withdrawn", FIVE[:4], CLIENTS, Request("n5", 60), "n0", (),
     Kind.CLEAR, None, "n5", "request withdrawn"),
    ("a request for a node that left is withdrawn", FIVE[:4], ["n6"], Request("n5", 2), "n0",
     (), Kind.CLEAR, None, "n5", "n5 left before it became a member"),
    ("a learner its node left unpromoted is promoted", [*FIVE[:4], learner(5, since=10)],
     CLIENTS[1:], None, "n0", (), Kind.PROMOTE, 0x15, "n5",
     "promoting learner n5 to voter (5 voters)"),
    ("a learner catching up blocks asking (one learner)", [*FIVE[:4], learner(5, since=3)],
     CLIENTS[1:], None, "n0", (), Kind.WAIT, 0x15, None, "learner n5 is catching up"),
    ("a learner that never came up is removed", [*FIVE[:4], learner(5, False, 60, False)],
     CLIENTS[1:], None, "n0", (), Kind.REMOVE, 0x15, "", "not up for 60s: removing member 15"),
    ("a learner at the target stays a learner", [*FIVE, learner(5, since=99)], CLIENTS[1:],
     None, "n0", (), Kind.NOTHING, None, None, "5 voters, all healthy"),
    ("no quorum: nothing changes", [voter(0), voter(1), voter(2, 99), voter(3, 99),
                                    voter(4, 99)], CLIENTS, None, "n0", (),
     Kind.WAIT, None, None, "no quorum: 2 of 5 voters healthy"),
    ("2 of 3: the dead voter may go", [voter(0), voter(1), voter(2, 11)], CLIENTS, None, "n0",
     (), Kind.REMOVE, 0x12, "n2", "(2 voters left, surviving 0 more voter failures)"),
    ("no one to take its seat: a dead voter stays", [voter(0), voter(1, down=30), *FIVE[2:]],
     [], None, "n0", (), Kind.WAIT, 0x11, None,
     "voter n1 unhealthy for 30s: no node without a member to take its place"),
    ("... nor a node whose upgrade just failed", [voter(0), voter(1, down=30), *FIVE[2:]],
     ["n5"], None, "n0", ("n5",), Kind.WAIT, 0x11, None, "no node without a member"),
    ("the aggregator itself may take the seat", [voter(0, down=30), *FIVE[1:]], ["n5"], None,
     "n5", (), Kind.REMOVE, 0x10, "n0", "voter n0 unhealthy for 30s: removing member 10"),
    ("1 of 2 is no quorum", [voter(0), voter(1, 99)], CLIENTS, None, "n0", (),
     Kind.WAIT, None, None, "no quorum: 1 of 2 voters healthy"),
    # A member starting now checks the member list it was given: no removal meanwhile.
    ("a request in flight holds a removal back", [*FIVE[:3], voter(3, 20)], CLIENTS,
     Request("n5", 1), "n0", (), Kind.WAIT, None, "n5", "waiting for n5 to become a voter"),
    ("... so does a learner catching up", [*FIVE[:3], voter(3, 20), learner(5, since=2)],
     CLIENTS[1:], None, "n0", (), Kind.WAIT, 0x15, None, "learner n5 is catching up"),
    ("a learner kept at the target holds nothing back", [*FIVE[:4], voter(4, 20),
                                                        learner(5, since=30)], CLIENTS[1:],
     None, "n0", (), Kind.REMOVE, 0x14, "n4", "voter n4 unhealthy for 20s"),
]


@pytest.mark.parametrize(("case", "seats", "clients", "asked", "me", "avoid", "kind",
                          "member", "node", "words"), CASES, ids=[c[0] for c in CASES])
def test_next_step(case: str, seats: list[Seat], clients: list[str], asked: Request | None,
                   me: str, avoid: tuple[str, ...], kind: Kind, member: int | None,
                   node: str | None, words: str) -> None:
    step = next_step(seats, clients, 5, GRACE, asked, me=me, avoid=avoid)
    assert (step.kind, step.member, step.node) == (kind, member, node), step
    assert words in step.sentence, step.sentence


def test_lower_target_and_no_quorum_loss_on_the_way_down() -> None:
    """--max-voters 3: three healthy voters are the target; removing the dead voters of a
    cluster that lost two of five one by one keeps a quorum at every step."""
    assert next_step(FIVE[:3], CLIENTS, 3, GRACE).kind is Kind.NOTHING
    seats = [voter(0), voter(1), voter(2), voter(3, 15), voter(4, 11)]
    removed = []
    while (step := next_step(seats, CLIENTS, 5, GRACE)).kind is Kind.REMOVE:
        removed.append(step.node)
        seats = [s for s in seats if s.id != step.member]
    assert removed == ["n3", "n4"] and len(seats) == 3


def test_the_topic_ignores_the_ticking_seconds() -> None:
    a = next_step([voter(0), voter(1, down=2), *FIVE[2:]], [], 5, GRACE)
    b = next_step([voter(0), voter(1, down=5), *FIVE[2:]], [], 5, GRACE)
    assert a.sentence != b.sentence and a.topic == b.topic
