"""Keeping the voter count: the one membership change the aggregator makes next, if any.

A federation runs at most `--max-voters` etcd voters; the other nodes are learners or plain
etcd clients. When a voter's host dies the cluster keeps its quorum but survives one voter
failure less, and nothing else would ever give that back: so the aggregator (one node at a
time, fenced by its term) reconciles the member list with the target, one change per cycle:

1. no quorum now: change nothing (no change could commit; a voter must come back first);
2. a learner that never came up is removed once its join had its time (etcd 3.4 allows one
   learner, so it would block every later upgrade); a learner that is up and that its own
   node did not promote within the grace period is promoted while below the target;
3. a request already sent is withdrawn when it is done or stale, and otherwise waited for,
   as is a learner catching up: nothing else changes meanwhile, because etcd refuses to
   start a new member whose initial cluster is not the cluster's (a removal in between);
4. a voter unhealthy for longer than the grace period is removed, only when a node can
   take its seat (a removed member's node cannot come back as it was, so a federation
   without spare nodes keeps waiting for it) and only while the healthy voters keep the
   quorum of the smaller cluster (`leave_refusal`, as for `node leave`).
   A dead voter never counts towards the quorum, so removing it never costs fault
   tolerance, while promoting a new voter beside it raises the quorum it is checked against;
5. below the target, a live node that runs no member is asked to become a voter: it adds
   itself as a learner, starts its member and promotes itself (the `node join` flow, in
   place). Candidates go by name, the asking node last, so every executor picks the same.

Each change is re-checked against a fresh member list on the next cycle, so a change made
twice (two executors during a handover) fails on etcd's side instead of compounding. The
rule is pure: the table in tests/unit/test_voter_replacement.py is the specification.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

from raftfl.core.quorum import leave_refusal, may_promote, quorum, tolerates

DEFAULT_GRACE_S = 10.0  # a voter unhealthy this long is replaced: about 3 lease TTLs
UPGRADE_TIMEOUT_S = 60.0  # as `node join --join-timeout`: a learner's time to come up


class Kind(Enum):
    NOTHING = "nothing"  # at the target, all healthy (or no one to ask)
    WAIT = "wait"  # something is in progress or within its grace period
    REMOVE = "remove"  # MemberRemove `member`
    PROMOTE = "promote"  # MemberPromote `member`
    ASK = "ask"  # write the upgrade request for `node`
    CLEAR = "clear"  # delete the upgrade request for `node`


@dataclass(frozen=True)
class Seat:
    """One etcd member as the executor observed it."""

    id: int
    name: str  # "" until the member has started and published itself
    voter: bool
    healthy: bool
    down_for: float = 0.0  # seconds it has been unhealthy without a break (0: healthy)
    learner_for: float = 0.0  # seconds it has been seen as a learner

    @property
    def label(self) -> str:
        return self.name or f"{self.id:x} (not started)"


@dataclass(frozen=True)
class Request:
    """An upgrade request in flight: `node` was asked `age` seconds ago."""

    node: str
    age: float


@dataclass(frozen=True)
class Step:
    kind: Kind
    sentence: str
    member: int | None = None  # REMOVE, PROMOTE
    node: str | None = None  # ASK, CLEAR; the member's name for REMOVE and PROMOTE

    @property
    def topic(self) -> tuple[Kind, int | None, str | None]:
        """What makes two steps 'the same' for logging (the seconds in a wait tick up)."""
        return self.kind, self.member, self.node


def _s(n: int, word: str) -> str:
    return f"{n} {word}{'s' * (n != 1)}"


def next_step(seats: Iterable[Seat], clients: Iterable[str], max_voters: int, grace_s: float,
              request: Request | None = None, me: str = "",
              avoid: Iterable[str] = (), upgrade_timeout_s: float = UPGRADE_TIMEOUT_S) -> Step:
    """The next membership change, given the members (`seats`), the live nodes that run no
    member (`clients`), and the upgrade request in flight. `me` (the executor) is asked
    last; nodes in `avoid` (a recent upgrade of theirs failed) are not asked."""
    seats = list(seats)
    voters = [s for s in seats if s.voter]
    healthy = [v for v in voters if v.healthy]
    if len(healthy) < quorum(len(voters)):
        return Step(Kind.WAIT, f"no quorum: {len(healthy)} of {_s(len(voters), 'voter')} "
                    "healthy; no membership change until a voter is back")
    learners = [s for s in seats if not s.voter]
    busy: Step | None = None  # a change in flight, which nothing else may disturb
    for learner in learners:
        if not learner.healthy and learner.down_for >= upgrade_timeout_s:
            return Step(Kind.REMOVE, f"learner {learner.label} not up for "
                        f"{learner.down_for:.0f}s: removing member {learner.id:x}",
                        member=learner.id, node=learner.name)
        if learner.healthy and learner.name and learner.learner_for >= grace_s:
            if may_promote(len(voters), max_voters):
                return Step(Kind.PROMOTE, f"promoting learner {learner.name} to voter "
                            f"({_s(len(voters) + 1, 'voter')})", member=learner.id,
                            node=learner.name)
            continue  # at the target: it stays a learner, as after `node join`
        busy = busy or Step(Kind.WAIT, f"learner {learner.label} is catching up (etcd allows "
                            "one learner at a time)", member=learner.id)
    if request is not None:
        mine = next((s for s in seats if s.name == request.node), None)
        if mine is not None and mine.voter:
            return Step(Kind.CLEAR, f"{request.node} is a voter: request done",
                        node=request.node)
        if request.age >= upgrade_timeout_s:
            return Step(Kind.CLEAR, f"{request.node} is not a voter {request.age:.0f}s after "
                        "it was asked: request withdrawn", node=request.node)
        if mine is None and request.node not in set(clients):
            return Step(Kind.CLEAR, f"{request.node} left before it became a member: request "
                        "withdrawn", node=request.node)
        busy = Step(Kind.WAIT, f"waiting for {request.node} to become a voter",
                    node=request.node)
    if busy is not None:  # a member starting now checks the list it was given: keep it
        return busy
    excluded = set(avoid)
    candidates = sorted((n for n in set(clients) if n not in excluded), key=lambda n: (n == me, n))
    # Only a voter someone can replace is removed: a removed member's node cannot come back
    # as it was (etcd refuses its ID), and a cluster without spare nodes gains nothing.
    replaceable = bool(candidates) or any(s.healthy and s.name for s in learners)
    dead = sorted((v for v in voters if not v.healthy and v.down_for >= grace_s),
                  key=lambda v: (-v.down_for, v.label))
    for voter in dead if replaceable else ():
        if leave_refusal(voter.label, len(voters), len(healthy), True, False) is None:
            left = tolerates(len(voters) - 1, len(healthy))
            return Step(Kind.REMOVE, f"voter {voter.label} unhealthy for {voter.down_for:.0f}s: "
                        f"removing member {voter.id:x} ({_s(len(voters) - 1, 'voter')} left, "
                        f"surviving {left} more voter failure{'s' * (left != 1)})",
                        member=voter.id, node=voter.name)
    waiting = [v for v in voters if not v.healthy]
    if waiting:
        first = max(waiting, key=lambda v: v.down_for)
        then = (f"replaced after {grace_s:.0f}s unless it recovers" if replaceable
                else "no node without a member to take its place")
        return Step(Kind.WAIT, f"voter {first.label} unhealthy for {first.down_for:.0f}s: "
                    f"{then}", member=first.id)
    if not may_promote(len(voters), max_voters):
        spare = tolerates(len(voters), len(healthy))
        return Step(Kind.NOTHING, f"{_s(len(voters), 'voter')}, all healthy: surviving {spare} "
                    f"more voter failure{'s' * (spare != 1)} (--max-voters {max_voters})")
    if not candidates:
        return Step(Kind.NOTHING, f"{_s(len(voters), 'voter')}, below the target of "
                    f"{max_voters}, and no node without a member to ask")
    return Step(Kind.ASK, f"asking {candidates[0]} to become a voter ({len(voters)} of "
                f"{max_voters} voters)", node=candidates[0])
