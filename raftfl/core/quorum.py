"""When a membership change is safe: pure rules, so every refusal is a table row.

etcd commits a change with the quorum of the configuration it leaves, and then needs the
quorum of the one it creates. A voter that leaves while another voter is down can leave a
cluster whose healthy voters are not a majority any more: it stops serving until someone
repairs it. A learner never counts, so adding or removing one never risks the quorum;
that is why a node joins as a learner and is promoted only once it has caught up.
"""

from __future__ import annotations

DEFAULT_MAX_VOTERS = 5  # etcd recommends 3 or 5 voters


def quorum(voters: int) -> int:
    return voters // 2 + 1


def tolerates(voters: int, healthy: int) -> int:
    """How many more voter failures a cluster of `voters` with `healthy` up survives."""
    return max(-1, healthy - quorum(voters))


def leave_refusal(name: str, voters: int, healthy: int, is_voter: bool,
                  is_healthy: bool) -> str | None:
    """Why removing `name` would lose the quorum (one line), or None when it is safe.

    `voters` and `healthy` count the voters now (the leaving one included if it is one).
    """
    if not is_voter:
        return None
    if voters <= 1:
        return f"{name} is the cluster's last voter: removing it would end the cluster"
    if healthy < quorum(voters):
        return (f"the cluster has no quorum now ({healthy} of {voters} voters healthy): a "
                "member cannot be removed until a voter is repaired")
    after, healthy_after = voters - 1, healthy - (1 if is_healthy else 0)
    if healthy_after < quorum(after):
        return (f"removing {name} leaves {healthy_after} healthy of {after} voters, below the "
                f"quorum of {quorum(after)}: repair or restart a voter first")
    return None


def initial_voters(names: list[str], max_voters: int) -> list[str]:
    """The initial nodes that run etcd members: the first `max_voters` by name, so every node
    derives the same split from the same list. The others are etcd clients of these: they
    train and can aggregate, but add no Raft traffic and no election time."""
    return sorted(names)[:max(1, max_voters)]


def may_promote(voters: int, max_voters: int) -> bool:
    """A caught-up learner becomes a voter only while the cluster is below its target."""
    return voters < max_voters
