"""Operator requests to a running federation: pause and resume of failover, and what is pending.

These are what `raftfl pause` and `raftfl resume` do (a planned handover, `raftfl aggregator
handover`, is raftfl/etcd/handover.py). They only write the request keys
(raftfl/core/maintenance.py) and the events that record them; the nodes' HA loops carry them
out, so a request outlives the command that made it, and a command that is interrupted leaves
either the whole request or none.
"""

from __future__ import annotations

import time
from typing import Any

from raftfl.core.errors import RaftflError
from raftfl.core.events import Event, FailoverPaused, FailoverResumed
from raftfl.core.keys import Keys
from raftfl.core.maintenance import HandoverRequest, Pause
from raftfl.core.records import MalformedRecord
from raftfl.core.role import RoleHolder
from raftfl.core.run_order import active
from raftfl.etcd import run_store, signers
from raftfl.etcd.eventlog import EventLog
from raftfl.etcd.store import Store


def _record(store: Store, keys: Keys, event: Event) -> None:
    """Append to the active run's log (else the newest run's); no run yet: nothing to log.
    In a secured cluster the event is signed, so it names the signer (the certificate's CN),
    not the user (raftfl/etcd/eventlog.py): the request key itself keeps `by`."""
    ids = run_store.ids(store, keys)
    if not ids:
        return
    states = {rid: EventLog(store, keys.run(rid)).state()[0] for rid in ids}
    EventLog(store, keys.run(active(states) or ids[-1])).append(event)


def _holder_line(store: Store, keys: Keys) -> str:
    kv = store.get(keys.aggregator)
    if kv is None:
        return "no aggregator holds the role now"
    role = signers.read_role(store, keys, kv)
    if not isinstance(role, RoleHolder):
        return f"the role key is malformed ({role.reason})"
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
