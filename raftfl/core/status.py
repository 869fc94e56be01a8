"""`NodeStatus`: what a node's HA loop last knew, as one immutable value for its HTTP API.

Why a snapshot: the API (raftfl/ops) answers from threads of its own, and one thread owns a
node's state, its HA loop. So the loop publishes a fresh `NodeStatus` at the end of every
cycle (`Published`: one reference replaced, so readers see the old value or the new one,
never half of each), and the API only reads that reference. A node that stops cycling
(frozen, stuck, SIGSTOPped) keeps its last snapshot, which ages: the probes below compare
its monotonic times with the reader's `now`, never trust it as current.

`NodeStatus` is pure: times are `time.monotonic()` values the caller passes in.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class NodeStatus:
    name: str
    cluster: str
    endpoints: tuple[str, ...]  # the etcd client endpoints the node uses
    lease_ttl: float
    cycled_at: float  # monotonic: when this cycle ended
    cycles: int  # cycles completed so far (this one included)
    revision: int  # the etcd revision the cycle observed
    lease: int | None  # the node's etcd lease, if it holds one
    lease_deadline: float  # monotonic: the lease's local deadline as the cycle saw it (0: none)
    holder: str | None  # who held the aggregator role key at `revision`
    term: int | None  # ...and its term (the key's create revision)
    vacant_since: float | None  # monotonic: since when this node has seen the role vacant
    serving_term: int | None  # the term this node's ServerApp serves, if one runs
    run: int | None  # the active run
    last_round: int  # its newest committed round (0: none yet)
    rounds: int | None  # its planned rounds, once started
    paused: bool  # failover paused (raftfl pause)
    action: str  # the cycle's decision (raftfl/core/decide.py's Action value)
    sentence: str  # ...and its sentence
    member: bool | None  # the node's embedded etcd member is running (None: it has none)
    holder_flower_address: str | None = None  # the holder's fleet address (edge workers)

    def fresh(self, now: float) -> bool:
        """The HA loop cycled within one lease TTL (Patroni's liveness rule)."""
        return now - self.cycled_at <= self.lease_ttl

    def lease_remaining(self, now: float) -> float:
        """Seconds left on the lease by the node's own clock (0: none or lapsed)."""
        return max(0.0, self.lease_deadline - now) if self.lease is not None else 0.0

    @property
    def ready(self) -> bool:
        """Wired and cycled (a snapshot exists), and its etcd member, if it has one, runs."""
        return self.member is not False

    def vacant_for(self, now: float) -> float:
        """Seconds this node has seen the role vacant (0 while held, or failover paused)."""
        return max(0.0, now - self.vacant_since) if self.vacant_since is not None else 0.0

    def is_aggregator(self, now: float) -> bool:
        """This node holds the role key and serves its term, with a live lease and a live
        loop: the one node a load balancer should send the aggregator's traffic to."""
        return (self.term is not None and self.holder == self.name
                and self.serving_term == self.term and self.fresh(now)
                and self.lease_remaining(now) > 0)


class Published:
    """The node's latest `NodeStatus`, as its HA loop publishes it (call it to read).

    A reader may also wait for the role to change (`wait_for`): an edge worker whose
    aggregator died asks a node API once and is answered as soon as the node has seen the
    successor, rather than asking again and again through the election. Only a change of
    holder or term wakes the waiters, not every cycle.
    """

    def __init__(self, value: NodeStatus | None = None) -> None:
        self._value = value
        self._changed = threading.Condition()

    def __call__(self) -> NodeStatus | None:
        return self._value

    def publish(self, st: NodeStatus) -> None:
        old, self._value = self._value, st
        if old is None or (old.holder, old.term) != (st.holder, st.term):
            with self._changed:
                self._changed.notify_all()

    def wait_for(self, ok: Callable[[NodeStatus | None], bool],
                 timeout: float) -> NodeStatus | None:
        """The snapshot once `ok` holds for it, or the latest one after `timeout` seconds."""
        with self._changed:
            self._changed.wait_for(lambda: ok(self._value), timeout)
        return self._value
