"""The quorum rules behind `raftfl node leave` and learner promotion, as a table."""

from __future__ import annotations

import pytest

from raftfl.core.quorum import initial_voters, leave_refusal, may_promote, quorum, tolerates


@pytest.mark.parametrize(("voters", "healthy", "is_voter", "is_healthy", "refused"), [
    (3, 3, True, True, None),  # 2 of 2 remain
    (3, 2, True, False, None),  # the dead one leaves: 2 of 2
    (3, 2, True, True, "leaves 1 healthy of 2 voters, below the quorum of 2"),
    (5, 4, True, True, None),  # 3 of 4 >= 3
    (5, 3, True, True, "leaves 2 healthy of 4 voters, below the quorum of 3"),
    (2, 2, True, True, None),  # 1 of 1
    (1, 1, True, True, "last voter"),
    (3, 1, True, False, "no quorum now (1 of 3 voters healthy)"),
    (3, 1, False, True, None),  # a learner never counts
])
def test_leave_refusal(voters: int, healthy: int, is_voter: bool, is_healthy: bool,
                       refused: str | None) -> None:
    got = leave_refusal("n", voters, healthy, is_voter, is_healthy)
    if refused is None:
        assert got is None
    else:
        assert got is not None and refused in got


@pytest.mark.parametrize(("voters", "healthy", "quorum_", "more"), [
    (1, 1, 1, 0), (2, 2, 2, 0), (3, 3, 2, 1), (3, 2, 2, 0), (5, 5, 3, 2), (3, 1, 2, -1)])
def test_quorum_and_tolerance(voters: int, healthy: int, quorum_: int, more: int) -> None:
    assert quorum(voters) == quorum_
    assert tolerates(voters, healthy) == more


@pytest.mark.parametrize(("voters", "target", "promote"), [(3, 5, True), (4, 5, True),
                                                           (5, 5, False), (3, 3, False)])
def test_promotion_only_below_the_target(voters: int, target: int, promote: bool) -> None:
    assert may_promote(voters, target) is promote


@pytest.mark.parametrize("names,max_voters,voters", [
    (["b:2", "a:1", "c:3"], 5, ["a:1", "b:2", "c:3"]),  # a small federation: all voters
    ([f"10.0.0.{i}:5000" for i in range(1, 10)], 5,
     ["10.0.0.1:5000", "10.0.0.2:5000", "10.0.0.3:5000", "10.0.0.4:5000", "10.0.0.5:5000"]),
    (["x:1", "y:1", "z:1"], 1, ["x:1"]),
    (["x:1", "y:1"], 0, ["x:1"]),  # never no voter
])
def test_initial_voters_are_the_first_names(names: list[str], max_voters: int,
                                            voters: list[str]) -> None:
    assert initial_voters(names, max_voters) == voters
    assert initial_voters(list(reversed(names)), max_voters) == voters  # order-independent
