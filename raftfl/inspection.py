"""Read-only views of a cluster for `raftfl status`, `raftfl history` and `raftfl run list`.

Status and history show one run (`--run N`; by default the newest). Status also reports
etcd's alarms: under NOSPACE etcd refuses every write, so training stops, and the operator
needs to see that, and the fix, in one place.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from raftfl import tls
from raftfl.control import control_status
from raftfl.core.keys import Keys
from raftfl.core.latency import summarize
from raftfl.core.quorum import tolerates
from raftfl.core.records import SKIPS, MalformedRecord, loads_bounded
from raftfl.core.replay import FLState, replay
from raftfl.core.run_order import active, run_state
from raftfl.etcd import run_store
from raftfl.etcd.cluster_api import list_members
from raftfl.etcd.context import read_members, read_samples
from raftfl.etcd.eventlog import EventLog, ReadResult
from raftfl.etcd.store import Store, nospace_fix


def _run_log(store: Store, keys: Keys, run: int | None) -> tuple[int | None, ReadResult]:
    """Run `run` (checked to exist), or the newest run, and its log (empty: no run yet)."""
    if run is not None:
        run_store.spec(store, keys, run)  # NoSuchRun: one line
    else:
        run = len(run_store.ids(store, keys)) or None
    if run is None:
        return None, ReadResult([], store.revision())
    return run, EventLog(store, keys.run(run)).read()


def _members_health(store: Store) -> tuple[list[Any], dict[str, Any], int | None]:
    """etcd's members, each one's health as its own Status answers it, and the Raft leader's
    id: member requests, none of which is a Raft round."""
    etcd_members = list_members(store)
    health: dict[str, Any] = {}
    leader_id = None
    for m in etcd_members:
        url = (m.client_urls or [""])[0].split("//", 1)[-1]
        try:
            st = Store.endpoint_status(url)
            health[m.name] = {"healthy": True, "raft_term": st.raftTerm,
                              "is_leader": st.leader == st.header.member_id,
                              "db_size": st.dbSize}
            leader_id = st.leader
        except Exception as exc:  # noqa: BLE001 - an unhealthy member is data here
            health[m.name] = {"healthy": False, "error": type(exc).__name__}
    return etcd_members, health, leader_id


def quorum_status(store: Store) -> dict[str, Any]:
    """The etcd quorum alone (the metrics' part of `cluster_status`), through the caller's
    client: no key is read, so a scrape costs no ReadIndex round, and no run log is
    replayed."""
    etcd_members, health, leader_id = _members_health(store)
    voters = [m for m in etcd_members if not m.learner]
    healthy = sum(1 for m in voters if health[m.name]["healthy"])
    return {"voters": len(voters), "healthy_voters": healthy,
            "tolerates": tolerates(len(voters), healthy),
            "etcd_leader": next((m.label for m in etcd_members if m.id == leader_id), None)}


def cluster_status(endpoints: list[str], cluster: str, run: int | None = None) -> dict[str, Any]:
    store = Store(endpoints, retry_for=5)
    keys = Keys(cluster)
    try:
        etcd_members, health, leader_id = _members_health(store)
        context = read_members(store, keys)
        rtt = summarize(read_samples(store, keys), set(context), window=10)
        agg = store.get(keys.aggregator)
        names = {m.id: m.name for m in etcd_members}
        alarms = [{"member": names.get(member_id, f"{member_id:x}"), "alarm": kind}
                  for member_id, kind in store.alarms()]
        run, read = _run_log(store, keys, run)
        state, rev = replay(read.events), read.revision
        members = []
        for m in etcd_members:
            url = (m.client_urls or [""])[0].split("//", 1)[-1]
            ctx = context.get(m.name)
            members.append({
                "name": m.label, "id": f"{m.id:x}", "peer_urls": list(m.peer_urls),
                "role": "learner" if m.learner else "voter",
                "client_endpoint": url, "leader": m.id == leader_id, **health.get(m.name, {}),
                "live": ctx is not None,
                "context": None if ctx is None else _context(ctx, rtt.get(m.name)),
            })
        for name in sorted(set(context) - {m.name for m in etcd_members}):
            members.append({  # a node with no member of its own: an etcd client
                "name": name, "id": None, "peer_urls": [], "role": "client",
                "client_endpoint": "", "leader": False, "healthy": None, "live": True,
                "context": _context(context[name], rtt.get(name))})
        voters = [m for m in members if m["role"] == "voter"]
        healthy = sum(1 for m in voters if m.get("healthy"))
        holder = _json_or_raw(agg.value) if agg else None
        return {
            "cluster": cluster,
            "revision": rev,
            "endpoints": ",".join(m["client_endpoint"] for m in members if m["client_endpoint"]),
            "members": members,
            "voters": len(voters), "healthy_voters": healthy,
            "learners": sum(1 for m in members if m["role"] == "learner"),
            "clients": sum(1 for m in members if m["role"] == "client"),
            "tolerates": tolerates(len(voters), healthy),
            "etcd_leader": next((m["name"] for m in members if m["leader"]), None),
            "aggregator": None if holder is None else {**holder, "term": agg.create_revision},
            "run": run,
            "rounds": state.rounds,
            "committed_rounds": state.commit_order,
            "completed": state.done,
            "stopped": state.stopped is not None,
            "last_model_sha256": state.last_model,
            "alarms": alarms,
            **control_status(store, keys),  # paused (maintenance), a pending handover
            "skipped": {"events": len(read.skipped), "rejected_events": len(state.rejected),
                        **{kind: n for kind, n in SKIPS.counts.items() if kind != "event"}},
        }
    finally:
        store.close()


def _context(ctx: Any, rtt: Any) -> dict[str, Any]:
    """A node's published context, as status shows it."""
    return {"priority": ctx.priority, "nofailover": ctx.nofailover, "cpu_free": ctx.cpu_free,
            "mem_free_mb": ctx.mem_free_mb, "mean_rtt_ms": rtt.mean_ms if rtt else None,
            "flower_address": ctx.flower_address, "finished": ctx.finished}


def _json_or_raw(raw: bytes) -> dict[str, Any]:
    try:
        value = loads_bounded(raw)
        if isinstance(value, dict):
            return value
    except MalformedRecord:
        pass
    return {"node": None, "flower_address": None, "malformed": raw.decode(errors="replace")[:80]}


def format_status(info: dict[str, Any]) -> str:
    lines = [f"cluster {info['cluster']} (revision {info['revision']})"]
    for alarm in info["alarms"]:
        fix = f": {nospace_fix([info['endpoints']])}" if alarm["alarm"] == "NOSPACE" else ""
        lines.append(f"ALARM {alarm['alarm']} on {alarm['member']}{fix}")
    agg = info["aggregator"]
    if agg and "malformed" in agg:
        lines.append(f"aggregator: malformed value {agg['malformed']!r} (term {agg['term']})")
    else:
        lines.append("aggregator: " + (f"{agg['node']} term {agg['term']} at "
                                       f"{agg['flower_address']}" if agg else "none"))
    paused, handover = info.get("paused"), info.get("handover")
    if paused and "malformed" in paused:
        lines.append(f"failover: a malformed pause record, ignored ({paused['malformed']})")
    elif paused:
        lines.append(f"failover: PAUSED since revision {paused['since_revision']} by "
                     f"{paused['by'] or '?'}: a vacant role stays vacant (raftfl resume)")
    if handover:
        lines.append("handover: " + (f"term {handover['term']} of {handover['holder']} to "
                                     f"{handover['to']} requested at revision "
                                     f"{handover['revision']}" if "to" in handover
                                     else f"malformed request ({handover['malformed']})"))
    done = info["committed_rounds"]
    if info["run"] is None:
        lines.append("run: none yet (raftfl run submit, or a node started with -r)")
    else:
        lines.append(f"run {info['run']}: {len(done)}/{info['rounds'] or '?'} rounds committed"
                     + (" (completed)" if info["completed"] else "")
                     + (" (stopped)" if info["stopped"] else ""))
    skipped = {kind: n for kind, n in info["skipped"].items() if n}
    if skipped:
        lines.append("skipped as malformed: " + ", ".join(f"{n} {kind}" for kind, n in skipped.items()))
    lines.append(quorum_line(info))
    lines.append(f"{'member':<22} {'role':<8} {'health':<8} {'raft':<7} {'rtt ms':>7} {'cpu':>5} "
                 f"{'prio':>5}  client endpoint")
    for m in info["members"]:
        ctx = m["context"] or {}
        rtt = ctx.get("mean_rtt_ms")
        health = {True: "ok", False: "DOWN", None: "-"}[m.get("healthy")]
        lines.append(
            f"{m['name']:<22} {m['role']:<8} {health:<8} "
            f"{'leader' if m['leader'] else '':<7} {'' if rtt is None else f'{rtt:.2f}':>7} "
            f"{ctx.get('cpu_free', ''):>5} {ctx.get('priority', ''):>5}  {m['client_endpoint']}")
    lines.append(f"etcdctl --endpoints={info['endpoints']}{_etcdctl_certs()} "
                 f"get --prefix /raftfl/{info['cluster']}/")
    return "\n".join(lines)


def _etcdctl_certs() -> str:
    """etcdctl's TLS flags for the bundle this process uses ("" in plain text)."""
    identity = tls.current()
    if identity is None:
        return ""
    return f" --cacert {identity.ca} --cert {identity.cert} --key {identity.key}"


def quorum_line(info: dict[str, Any]) -> str:
    """Voters, learners and clients, and how many more voter failures the cluster survives."""
    line = (f"voters {info['healthy_voters']}/{info['voters']} healthy, learners "
            f"{info['learners']}, clients {info['clients']}: ")
    left = info["tolerates"]
    if left < 0:
        return line + "NO QUORUM: etcd serves nothing until a voter is repaired"
    if left == 0:
        return line + "WARNING: the next voter failure loses the quorum"
    return line + f"survives {left} more voter failure{'s' if left > 1 else ''}"


def history_lines(endpoints: list[str], cluster: str, summary: bool,
                  run: int | None = None) -> Iterator[str]:
    store = Store(endpoints, retry_for=5)
    try:
        run, result = _run_log(store, Keys(cluster), run)
        if summary:
            state = replay(result.events)
            yield json.dumps({
                "run": run, "rounds": state.rounds, "committed_rounds": state.commit_order,
                "completed": state.done, "stopped": state.stopped is not None,
                "terms": [e.term for e in state.elections],
                "aggregators": [e.node for e in state.elections],
                "duplicate_commits": state.duplicate_commits, "stale_commits": state.stale_commits,
                "skipped": len(result.skipped), "rejected": len(state.rejected),
                "last_model_sha256": state.last_model})
            return
        for item in result.events:
            yield json.dumps({"seq": item.seq, "revision": item.revision, **item.event.to_dict()})
        for key, reason in result.skipped:
            yield json.dumps({"skipped": key, "reason": reason})
    finally:
        store.close()


def run_list(endpoints: list[str], cluster: str) -> list[dict[str, Any]]:
    """Every run, oldest first: its app, state, rounds, aggregator and final model."""
    store = Store(endpoints, retry_for=5)
    keys = Keys(cluster)
    try:
        specs = {rid: run_store.spec(store, keys, rid) for rid in run_store.ids(store, keys)}
        states: dict[int, FLState] = {
            rid: replay(EventLog(store, keys.run(rid)).read().events) for rid in specs}
        now = active(states)
        return [{
            "run": rid, "app": spec.app, "state": run_state(rid, states[rid], now),
            "rounds_committed": len(states[rid].committed_rounds),
            "rounds": states[rid].rounds or spec.rounds,
            "aggregator": states[rid].aggregator,
            "final_model_sha256": states[rid].completed.model_sha256
            if states[rid].completed else None,
            "stopped_by": states[rid].stopped.node if states[rid].stopped else None,
            "submitted": spec.submitted, "by": spec.by, "run_config": spec.run_config,
        } for rid, spec in specs.items()]
    finally:
        store.close()


def format_runs(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no runs yet (raftfl run submit, or a node started with -r)"
    lines = [f"{'run':>4}  {'app':<20} {'state':<10} {'rounds':>7}  {'aggregator':<22} model"]
    for r in rows:
        rounds = f"{r['rounds_committed']}/{r['rounds'] or '?'}"
        model = (r["final_model_sha256"] or "")[:12]
        lines.append(f"{r['run']:>4}  {r['app'][:20]:<20} {r['state']:<10} {rounds:>7}  "
                     f"{r['aggregator'] or '':<22} {model}")
    return "\n".join(lines)
