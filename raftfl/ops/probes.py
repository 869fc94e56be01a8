"""The probe endpoints, decided from the node's snapshot (pure), after Patroni's REST API.

    /health, /liveness  200 while the HA loop has cycled within one lease TTL
    /readiness          200 once the node is wired, has cycled and its etcd member (if any) runs
    /aggregator         200 only on the node that holds the role key and serves its term

Everything else is 503 (a SIGSTOPped node answers nothing: its probes time out). Each answer
carries the node's state as JSON (`node_json`), which is also `GET /node`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from raftfl.core.status import NodeStatus

PROBES: dict[str, Callable[[NodeStatus, float], bool]] = {
    "/health": NodeStatus.fresh,
    "/liveness": NodeStatus.fresh,
    "/readiness": lambda st, now: st.ready,
    "/aggregator": NodeStatus.is_aggregator,
}


def role(st: NodeStatus, now: float) -> str:
    if st.is_aggregator(now):
        return "aggregator"
    if st.holder == st.name:
        return "holder"  # holds the key, but serves nothing now (starting, or no run left)
    return "worker" if st.holder else "vacant"


def node_json(st: NodeStatus | None, name: str, now: float) -> dict[str, Any]:
    """This node's state as the API shows it; `st` None: it has not cycled yet."""
    if st is None:
        return {"name": name, "state": "starting", "ready": False}
    return {
        "name": st.name, "cluster": st.cluster, "state": "running" if st.fresh(now) else "stalled",
        "ready": st.ready, "role": role(st, now), "holder": st.holder, "term": st.term,
        "holder_flower_address": st.holder_flower_address,
        "serving_term": st.serving_term, "run": st.run, "last_round": st.last_round,
        "rounds": st.rounds, "paused": st.paused, "lease_ttl_s": st.lease_ttl,
        "lease_remaining_s": round(st.lease_remaining(now), 3),
        "vacant_s": round(st.vacant_for(now), 3),
        "last_cycle_s_ago": round(now - st.cycled_at, 3), "cycles": st.cycles,
        "revision": st.revision, "decision": st.action, "sentence": st.sentence,
        "etcd_member": {None: "none", True: "running", False: "down"}[st.member],
        "endpoints": list(st.endpoints),
    }


def probe(path: str, st: NodeStatus | None, name: str, now: float) -> tuple[int, dict[str, Any]]:
    """(200 or 503, the node's state) for one of `PROBES`."""
    ok = st is not None and PROBES[path](st, now)
    return (200 if ok else 503), node_json(st, name, now)
