"""The worker's term check (node/worker.py `current_term`): serializable first, and
linearizable only when the member's answer would refuse the instruction."""

from __future__ import annotations

import pytest

from raftfl.node.worker import current_term

# member's (serializable) answer, the leader's (linearizable), the instruction's term
#   -> the term the check sees, the reads made
CASES = [
    (7, 9, 7, 7, [True]),  # the member agrees: no ReadIndex
    (6, 7, 7, 7, [True, False]),  # the member lags a new term: asked again, admitted
    (None, 7, 7, 7, [True, False]),  # the member has not applied the first role key yet
    (7, 8, 6, 8, [True, False]),  # an old term: refused on the linearizable answer
    (None, None, 7, None, [True, False]),  # vacant everywhere: refused
]


@pytest.mark.parametrize(("member", "leader", "stamp", "seen", "reads"), CASES)
def test_a_stale_member_never_refuses_a_current_term(member: int | None, leader: int | None,
                                                       stamp: int, seen: int | None,
                                                       reads: list[bool]) -> None:
    made: list[bool] = []

    def read(serializable: bool) -> int | None:
        made.append(serializable)
        return member if serializable else leader

    assert current_term(read, stamp) == seen
    assert made == reads
