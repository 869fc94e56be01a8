"""Operator requests to a running federation: planned handover, pause and resume of failover.

These are what `raftfl aggregator handover`, `raftfl pause` and `raftfl resume` do. They
only write the request keys (raftfl/core/maintenance.py) and the events that record them;
the nodes' HA loops carry them out, so a request outlives the command that made it, and a
command that is interrupted leaves either the whole request or none.

A handover is checked here, against what etcd says now: an aggregator must hold the role,
`--to` must name a known node that is alive and may take the role; without `--to` the
target is the best-ranked other live node, ranked by the same function and weights the
nodes use after a vacancy. The request is written in one transaction guarded by the
holder's term, so it can never name a term that has already ended.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from raftfl.core.errors import RaftflError
from raftfl.core.events import Event, FailoverPaused, FailoverResumed
from raftfl.core.keys import Keys
from raftfl.core.maintenance import HandoverRequest, Pause, handover_target
from raftfl.core.ranking import Weights, rank
from raftfl.core.records import MalformedRecord
from raftfl.core.role import RoleHolder, parse_role
from raftfl.core.runconfig import RunConfig
from raftfl.core.runs import active
from raftfl.etcd import runs
from raftfl.etcd.context import read_members, read_samples
from raftfl.etcd.eventlog import EventLog
from raftfl.etcd.store import Store

RTT_WINDOW = 10  # samples per peer in the mean RTT, as a node ranks by default
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
    role = parse_role(kv.value, kv.create_revision, kv.lease, kv.mod_revision)
    if not isinstance(role, RoleHolder):
        raise RaftflError(f"the aggregator role key is malformed ({role.reason}): nothing to "
                          "hand over")
    return role


def _weights(store: Store, keys: Keys) -> Weights:
    kv = store.get(keys.config)
    return RunConfig.from_json(kv.value).ranking_weights if kv else Weights()


def _known(store: Store, keys: Keys) -> set[str]:
    names = {m.name for m in store.members() if m.name}
    kv = store.get(keys.config)
    if kv is not None:
        names |= set(RunConfig.from_json(kv.value).nodes)
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
    from raftfl.node.session import candidates

    role = holder(store, keys)
    live = read_members(store, keys)
    ranking = rank(candidates(live, read_samples(store, keys), RTT_WINDOW),
                   _weights(store, keys), previous=role.node)
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
            role = parse_role(kv.value, kv.create_revision, kv.lease, kv.mod_revision)
            name = role.node if isinstance(role, RoleHolder) else "(malformed)"
            return Outcome(name, kv.create_revision, time.monotonic() - req.started)
        poll()
    return None


def _record(store: Store, keys: Keys, event: Event) -> None:
    """Append to the active run's log (else the newest run's); no run yet: nothing to log."""
    ids = runs.ids(store, keys)
    if not ids:
        return
    states = {rid: EventLog(store, keys.run(rid)).state()[0] for rid in ids}
    EventLog(store, keys.run(active(states) or ids[-1])).append(event)


def _holder_line(store: Store, keys: Keys) -> str:
    kv = store.get(keys.aggregator)
    if kv is None:
        return "no aggregator holds the role now"
    role = parse_role(kv.value, kv.create_revision, kv.lease, kv.mod_revision)
    if not isinstance(role, RoleHolder):
        return "the role key is malformed"
    return f"aggregator {role.node} (term {role.term}) keeps serving"


def pause(store: Store, keys: Keys, by: str, reason: str = "") -> str:
    """Pause automatic failover (idempotent); says what it did."""
    value = Pause(by=by, reason=reason).to_json()
    kv = store.get(keys.paused)
    if kv is not None and _malformed(Pause, kv.value):  # the nodes ignore it: replace it
        store.delete_if_unchanged(keys.paused, kv.mod_revision)
    store.create(keys.paused, value)
    kv = store.get(keys.paused)
    if kv is None:
        raise RaftflError("failover was resumed meanwhile; pause again")
    if kv.value != value.encode():
        return f"failover is already paused (since revision {kv.create_revision})"
    _record(store, keys, FailoverPaused(node=by, revision=kv.create_revision, reason=reason))
    return (f"failover paused at revision {kv.create_revision}: a vacant aggregator role stays "
            f"vacant until `raftfl resume`; {_holder_line(store, keys)}")


def _malformed(kind: Any, raw: bytes) -> bool:
    try:
        kind.from_json(raw)
    except MalformedRecord:
        return True
    return False


def resume(store: Store, keys: Keys, by: str) -> str:
    """Resume automatic failover (idempotent); says what it did."""
    kv = store.get(keys.paused)
    if kv is None:
        return "failover is not paused"
    try:
        since: float | None = Pause.from_json(kv.value).ts
    except MalformedRecord:
        since = None
    if not store.delete_if_unchanged(keys.paused, kv.mod_revision) \
            and store.get(keys.paused) is not None:
        raise RaftflError("the pause was changed meanwhile; resume again")
    paused_s = None if since is None else max(0.0, time.time() - since)
    _record(store, keys, FailoverResumed(node=by, revision=kv.create_revision,
                                         paused_s=paused_s))
    took = "" if paused_s is None else f", {paused_s:.0f}s"
    return (f"failover resumed (paused since revision {kv.create_revision}{took}): a vacant "
            "role is filled automatically again")


def control_status(store: Store, keys: Keys) -> dict[str, Any]:
    """The pending requests, for `raftfl status`."""
    kvs, _ = store.range(keys.control)
    out: dict[str, Any] = {"paused": None, "handover": None}
    for kv in kvs:
        try:
            if kv.key == keys.paused:
                out["paused"] = {"since_revision": kv.create_revision,
                                 **Pause.from_json(kv.value).to_dict()}
            elif kv.key == keys.handover:
                out["handover"] = {"revision": kv.mod_revision,
                                   **HandoverRequest.from_json(kv.value).to_dict()}
        except MalformedRecord as exc:
            out["paused" if kv.key == keys.paused else "handover"] = {"malformed": str(exc)}
    return out
