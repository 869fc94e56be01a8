"""A planned handover in etcd: check and write the request, then wait for the next term.

What `raftfl aggregator handover` and a leaving aggregator's `raftfl node leave` do. The
request is checked against what etcd says now: an aggregator must hold the role, `to` must
name a known node that is alive and may take the role; without `to` the target is the
best-ranked other live node, ranked by the same function and weights the nodes use after a
vacancy. It is written in one transaction guarded by the holder's term, so it can never name
a term that has already ended. The holder's HA loop carries it out (raftfl/core/maintenance.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from raftfl.core.errors import RaftflError
from raftfl.core.keys import Keys
from raftfl.core.maintenance import HandoverRequest, handover_target
from raftfl.core.ranking import Weights, candidates, rank
from raftfl.core.records import MalformedRecord
from raftfl.core.role import RoleHolder
from raftfl.core.specs import ClusterConfig
from raftfl.etcd import signers
from raftfl.etcd.context import read_members, read_samples
from raftfl.etcd.store import Store

POLL_S = 0.05


@dataclass(frozen=True)
class Requested:
    request: HandoverRequest
    revision: int  # the request key's revision
    started: float  # monotonic time just before it was written


@dataclass(frozen=True)
class Outcome:
    node: str
    term: int
    seconds: float  # from the request to the new term


def holder(store: Store, keys: Keys) -> RoleHolder:
    """Who holds the role now; one line if nobody (or a malformed key) does."""
    kv = store.get(keys.aggregator)
    if kv is None:
        raise RaftflError("no aggregator holds the role: nothing to hand over")
    role = signers.read_role(store, keys, kv)
    if not isinstance(role, RoleHolder):
        raise RaftflError(f"the aggregator role key is malformed ({role.reason}): nothing to "
                          "hand over")
    return role


def _weights(store: Store, keys: Keys) -> Weights:
    kv = store.get(keys.config)
    return ClusterConfig.from_json(kv.value).ranking_weights if kv else Weights()


def _known(store: Store, keys: Keys) -> set[str]:
    names = {m.name for m in store.members() if m.name}
    kv = store.get(keys.config)
    if kv is not None:
        names |= set(ClusterConfig.from_json(kv.value).nodes)
    return names


def _pending(store: Store, keys: Keys) -> tuple[HandoverRequest | None, int]:
    kv = store.get(keys.handover)
    if kv is None:
        return None, 0
    try:
        return HandoverRequest.from_json(kv.value), kv.mod_revision
    except MalformedRecord:
        return None, kv.mod_revision


def request_handover(store: Store, keys: Keys, to: str | None, by: str) -> Requested:
    """Check and write a handover request; RaftflError (one line) if it cannot be done."""
    role = holder(store, keys)
    live = read_members(store, keys)
    ranking = rank(candidates(live, read_samples(store, keys)), _weights(store, keys),
                   previous=role.node)
    target = handover_target(role.node, to, _known(store, keys), live, ranking)
    pending, pending_rev = _pending(store, keys)
    if pending is not None and pending.term == role.term:
        raise RaftflError(f"a handover of term {role.term} to {pending.to} is already under way "
                          f"(requested at revision {pending_rev}; see raftfl status)")
    request = HandoverRequest(holder=role.node, term=role.term, to=target, ranked=to is None,
                              by=by)
    value = request.to_json()
    guard = [store.tx.create(keys.aggregator) == role.term,
             store.tx.mod(keys.handover) == pending_rev]  # 0: absent; else the stale one
    started = time.monotonic()
    ok, _ = store.call(lambda: store.client.transaction(
        compare=guard, success=[store.tx.put(keys.handover, value)], failure=[]))
    kv = store.get(keys.handover)
    if not ok and (kv is None or kv.value != value.encode()):  # not a retry that had landed
        now = store.get(keys.aggregator)
        if now is None or now.create_revision != role.term:
            raise RaftflError(f"term {role.term} of {role.node} ended meanwhile: nothing to "
                              "hand over")
        raise RaftflError("another handover was requested meanwhile (see raftfl status)")
    assert kv is not None
    return Requested(request, kv.mod_revision, started)


def wait_handover(store: Store, keys: Keys, req: Requested, timeout: float,
                  poll: Callable[[], None] = lambda: time.sleep(POLL_S)) -> Outcome | None:
    """Wait for a new term to begin after `req`; None if none began within `timeout`."""
    deadline = req.started + timeout
    while time.monotonic() < deadline:
        kv = store.get(keys.aggregator)
        if kv is not None and kv.create_revision > req.request.term:
            role = signers.read_role(store, keys, kv)
            name = role.node if isinstance(role, RoleHolder) else "(malformed)"
            return Outcome(name, kv.create_revision, time.monotonic() - req.started)
        poll()
    return None
