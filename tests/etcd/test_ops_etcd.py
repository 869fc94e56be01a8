"""The node's HTTP API against real etcd members, with a snapshot standing in for the node:
the ledger folds only what was appended (new runs included), /cluster and /history answer
what `raftfl status --json` and `raftfl history` print, /events streams the log and then
what is appended live, and the writes (/pause, /resume) land as the CLI's do."""

from __future__ import annotations

import hashlib
import http.client
import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from raftfl.core.events import AggregatorElected, Event, RoundCommitted, RoundStarted, RunStarted
from raftfl.core.keys import Keys
from raftfl.core.specs import RunSpec
from raftfl.core.status import NodeStatus, Published
from raftfl.etcd import run_store
from raftfl.etcd.eventlog import EventLog
from raftfl.etcd.run_store import NoSuchRun
from raftfl.etcd.store import Store
from raftfl.inspection import history_lines
from raftfl.net import origin
from raftfl.ops.context import MAX_STREAMS, Busy
from raftfl.ops.ledger import Ledger
from raftfl.ops.server import ApiServer

A, B = "127.0.0.1:29000", "127.0.0.1:29001"


def submit(store: Store, keys: Keys) -> int:
    blob = b"app"
    return run_store.submit(store, keys, RunSpec(app="a", app_sha256=hashlib.sha256(blob).hexdigest(),
                                            run_config={}), blob)


def elect(store: Store, log: EventLog, node: str, **kw: Any) -> int:
    term = store.revision()  # at or before the event key's create revision: accepted
    log.append(AggregatorElected(node=node, term=term, flower_address="h:1", rank=0, score=1.0,
                                 revision=term, ranking=[], **kw))
    return term


def round_(log: EventLog, node: str, term: int, rnd: int, commit: bool = True) -> None:
    events: list[Event] = [RoundStarted(node=node, term=term, round=rnd, base_model=f"m{rnd - 1}",
                                        clients=2)]
    if commit:
        events.append(RoundCommitted(node=node, term=term, round=rnd, model_sha256=f"m{rnd}",
                                     base_model=f"m{rnd - 1}", loss=0.5, accuracy=0.5, results=2))
    for ev in events:
        log.append(ev)


def test_the_ledger_folds_appends_and_new_runs(etcd_cluster_module) -> None:
    store, keys = etcd_cluster_module.store(), Keys("c-ops-ledger")
    submit(store, keys)
    log = EventLog(store, keys.run(1))
    log.append(RunStarted(node=A, rounds=3, initial_model="m0"))
    term = elect(store, log, A)
    round_(log, A, term, 1)
    ledger = Ledger(store, keys, 3.0)
    first = ledger.totals()
    assert first.rounds_committed == 1 and sum(first.failovers.values()) == 0
    round_(log, A, term, 2, commit=False)
    new = elect(store, log, B, vacant_since=time.time(), previous=A)
    round_(log, B, new, 2)
    later = ledger.totals()
    assert later.failovers["lost"] == 1 and len(later.recoveries) == 1
    assert later.rounds_committed == 2
    submit(store, keys)
    log2 = EventLog(store, keys.run(2))
    round_(log2, B, elect(store, log2, B), 1)
    assert ledger.totals().rounds_committed == 3
    run, timeline = ledger.failovers(1)
    assert run == 1 and [fo["node"] for fo in timeline] == [B]
    assert ledger.failovers(None)[0] == 2
    with pytest.raises(NoSuchRun):
        ledger.failovers(9)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def api(etcd_cluster_module, request: pytest.FixtureRequest,
        ) -> Iterator[tuple[ApiServer, Store, Keys]]:
    """An API server on a cluster of its own (named after the test) in the shared etcd."""
    store, keys = etcd_cluster_module.store(), Keys(f"c-{request.node.name[5:30]}")
    now = time.monotonic()
    status = NodeStatus(
        name=A, cluster=keys.cluster, endpoints=tuple(etcd_cluster_module.endpoints),
        lease_ttl=3.0, cycled_at=now, cycles=1, revision=1, lease=None, lease_deadline=0.0,
        holder=None, term=None, vacant_since=None, serving_term=None, run=1, last_round=0,
        rounds=None, paused=False, action="idle", sentence="", member=None)
    server = ApiServer(Published(status), f"127.0.0.1:{free_port()}", A, keys.cluster).start()
    try:
        yield server, store, keys
    finally:
        server.stop()


def get(server: ApiServer, path: str, method: str = "GET", body: bytes | None = None,
        ) -> tuple[int, bytes]:
    host, _, port = server.address.rpartition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=20)
    try:
        conn.request(method, path, body=body)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_reads_writes_and_the_live_event_stream(api) -> None:
    server, store, keys = api
    submit(store, keys)
    log = EventLog(store, keys.run(1))
    term = elect(store, log, A)
    round_(log, A, term, 1)

    status, body = get(server, "/cluster")
    info = json.loads(body)
    assert status == 200 and info["run"] == 1 and info["committed_rounds"] == [1]
    assert info["voters"] == 3 and info["healthy_voters"] == 3
    status, body = get(server, "/history?run=1")
    events = json.loads(body)
    assert status == 200 and [e["type"] for e in events] == [
        "aggregator_elected", "round_started", "round_committed"]
    assert events == [json.loads(line) for line in history_lines(
        list(store.endpoints), keys.cluster, False, 1)]  # what `raftfl history` prints
    assert json.loads(get(server, "/history?run=1&summary=1")[1])["committed_rounds"] == [1]
    status, body = get(server, "/history?run=7")
    assert status == 404 and "run 7 does not exist" in json.loads(body)["error"]

    host, _, port = server.address.rpartition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=20)
    try:
        conn.request("GET", "/events?run=1&after=1")
        resp = conn.getresponse()
        assert resp.status == 200 and resp.getheader("Content-Type") == "text/event-stream"
        assert resp.readline() == b"retry: 1000\n" and resp.readline() == b"\n"
        assert resp.readline() == b"id: 2\n"  # after=1: the backlog starts at seq 2
        frame = json.loads(resp.readline().removeprefix(b"data: "))
        assert frame["type"] == "round_started" and frame["text"].startswith("round 1 started")
        resp.readline()
        assert resp.readline() == b"id: 3\n"
        resp.readline(), resp.readline()
        round_(log, A, term, 2)  # appended now: streamed live
        assert resp.readline() == b"id: 4\n"
        assert json.loads(resp.readline().removeprefix(b"data: "))["round"] == 2
    finally:
        conn.close()

    status, body = get(server, "/pause", "POST", b'{"reason": "upgrade"}')
    assert status == 200 and json.loads(body)["message"].startswith("failover paused")
    paused = json.loads(get(server, "/cluster")[1])["paused"]
    assert paused["reason"] == "upgrade" and paused["by"] == "api@127.0.0.1"
    assert get(server, "/pause", "POST")[1].startswith(b'{\n "message": "failover is already')
    status, body = get(server, "/resume", "POST")
    assert status == 200 and store.get(keys.paused) is None
    assert [e["type"] for e in json.loads(get(server, "/history?run=1")[1])][-2:] == [
        "failover_paused", "failover_resumed"]
    status, body = get(server, "/handover", "POST", b'{"to": "127.0.0.1:1"}')
    assert status == 409 and "no aggregator holds the role" in json.loads(body)["error"]

    status, body = get(server, "/metrics")
    fams = {f.name: f for f in text_string_to_metric_families(body.decode())}
    assert status == 200 and fams["raftfl_rounds_committed"].samples[0].value == 2
    assert fams["raftfl_voters_healthy"].samples[0].value == 3
    assert fams["raftfl_etcd_has_leader"].samples[0].value == 1
    assert json.loads(get(server, "/failovers?run=1")[1]) == {"run": 1, "failovers": []}
    round_(log, A, term, 3)
    before = origin.counts()
    fams = {f.name: f for f in text_string_to_metric_families(get(server, "/metrics")[1].decode())}
    assert fams["raftfl_rounds_committed"].samples[0].value == 3
    asked = {k: v - before.get(k, 0) for k, v in origin.counts().items() if k[0] == "api"}
    assert asked.get(("api", "read"), 0) == 0 and asked[("api", "local_read")] > 0, asked


def test_event_streams_are_bounded_and_end_when_the_server_stops(api) -> None:
    server, store, keys = api
    status, body = get(server, "/events")
    assert status == 404 and json.loads(body)["error"] == "no run yet: nothing to stream"
    submit(store, keys)
    ctx = server.ctx
    streams = [ctx.stream(1, 0) for _ in range(MAX_STREAMS)]
    with pytest.raises(Busy):
        ctx.stream(1, 0)
    status, body = get(server, "/events?run=1")
    assert status == 503 and "event streams are open" in json.loads(body)["error"]
    streams.pop().close()
    streams.append(ctx.stream(1, 0))  # a closed stream's slot is free again
    live = iter(streams[0])
    assert next(live) == b"retry: 1000\n\n"
    ctx.close()  # what the server's stop does: every stream ends (its watch within 2 s)
    assert list(live) == []
