"""The node's HTTP API on real node processes (raftfl/ops): probes while the aggregator is
SIGKILLed, liveness of a SIGSTOPped node, the metrics every survivor derives from the same log,
and, on a secured cluster, mutual TLS with operators reading and admins writing.

Probes during a kill: every node's /aggregator and /health are polled every 100 ms; exactly
one node answers 200 on /aggregator before the kill, at most one during the failover, and
exactly the new holder after it, while every survivor stays healthy.
"""

from __future__ import annotations

import http.client
import json
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from prometheus_client.parser import text_string_to_metric_families

from raftfl import tls
from raftfl.core.events import AggregatorElected, RoundCommitted, RoundStarted
from raftfl.lab.faults import at, first_term
from raftfl.lab.localcluster import LocalCluster, NodeProc
from raftfl.lab.testhooks import HOLD_ENV, HOSTILE_ENV

pytestmark = pytest.mark.slow
WAIT = 150
POLL_S = 0.1


def call(node: NodeProc, path: str, method: str = "GET", body: bytes | None = None,
         context: ssl.SSLContext | None = None, timeout: float = 2.0) -> tuple[int | None, bytes]:
    """(status, body) of one request to `node`'s API; (None, b"") if it does not answer."""
    url = urlsplit(node.api_url(path))
    conn = (http.client.HTTPSConnection(url.hostname or "", url.port, timeout=timeout,
                                        context=context) if url.scheme == "https"
            else http.client.HTTPConnection(url.hostname or "", url.port, timeout=timeout))
    try:
        conn.request(method, url.path + (f"?{url.query}" if url.query else ""), body=body)
        resp = conn.getresponse()
        return resp.status, resp.read()
    except (OSError, http.client.HTTPException):
        return None, b""
    finally:
        conn.close()


@dataclass
class Poller:
    """Every node's /aggregator and /health, every POLL_S, in a thread: (time, path -> node
    -> status) per round."""

    nodes: list[NodeProc]
    rounds: list[tuple[float, dict[str, dict[str, int | None]]]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            at = time.time()
            got = {path: {n.name: call(n, path, timeout=3.0)[0] for n in self.nodes}
                   for path in ("/aggregator", "/health")}
            self.rounds.append((at, got))
            self.stop.wait(max(0.0, POLL_S - (time.time() - at)))

    def finish(self) -> list[tuple[float, dict[str, dict[str, int | None]]]]:
        self.stop.set()
        self.thread.join(10)
        return self.rounds


def aggregators(got: dict[str, dict[str, int | None]]) -> set[str]:
    return {name for name, status in got["/aggregator"].items() if status == 200}


def metrics(node: NodeProc, context: ssl.SSLContext | None = None) -> dict[str, Any]:
    status, body = call(node, "/metrics", context=context, timeout=20)
    assert status == 200, (node.name, status, body[:300])
    return {f.name: f for f in text_string_to_metric_families(body.decode())}


def total(families: dict[str, Any], name: str, suffix: str = "", **labels: str) -> float:
    return sum(s.value for s in families[name].samples if s.name == name + suffix
               and all(s.labels.get(k) == v for k, v in labels.items()))


def test_probes_liveness_and_metrics_through_an_aggregator_kill() -> None:
    # A worker is mid-fit when the aggregator dies, and each of nodes 1 and 2 sends one NaN
    # update once the run resumed, when Flower samples both survivors (round 1 may sample
    # 2 of 3 nodes at random).
    env = {1: {HOLD_ENV: "fit:2:2", HOSTILE_ENV: "nan@3"},
           2: {HOLD_ENV: "fit:2:2", HOSTILE_ENV: "nan@4"}}
    with LocalCluster(n=3, rounds=4, cluster="t-ops", node_env=env, train_size=2000,
                      test_size=400, exit_on_complete=False) as c:
        el = first_term(c)
        holder = c.by_name(el.node)
        c.wait_for(lambda: call(holder, "/aggregator")[0] == 200, WAIT, "the holder to serve")
        c.wait_for(lambda: all(call(n, "/readiness")[0] == 200 for n in c.nodes), WAIT,
                   "every node to be ready")
        poller = Poller(list(c.nodes))
        at(c, RoundStarted, 2, el.term)
        time.sleep(1.0)
        killed = c.kill(el.node)
        new = c.wait_event(lambda e: isinstance(e, AggregatorElected) and e.term > el.term,
                           WAIT, "the new aggregator")
        c.wait_for(lambda: call(c.by_name(new.node), "/aggregator")[0] == 200, WAIT,
                   "the new aggregator to serve")
        served = time.time()
        time.sleep(1.5)
        rounds = poller.finish()

        before = [aggregators(got) for t, got in rounds if t < killed - 0.2]
        during = [aggregators(got) for t, got in rounds if killed + 0.2 < t < served - 0.2]
        after = [aggregators(got) for t, got in rounds if t > served + 0.2]
        assert len(before) >= 5 and len(after) >= 5
        assert all(seen == {el.node} for seen in before), before
        assert all(seen <= {new.node} for seen in during), during
        assert all(seen == {new.node} for seen in after), after
        survivors = [n.name for n in c.nodes if n.name != el.node]
        refused = sum(n.name in survivors for n in c.nodes[1:])  # one per hostile survivor
        unhealthy = [(t, name, got["/health"][name]) for t, got in rounds for name in survivors
                     if got["/health"][name] != 200]
        assert not unhealthy, unhealthy[:5]

        # A run with one kill: every survivor derives the same counters from the log.
        c.wait_event(lambda e: e.type == "run_completed", WAIT, "the run to complete")
        commits = sum(1 for item in list(c.log) if isinstance(item.event, RoundCommitted))
        for name in survivors:
            fams = metrics(c.by_name(name))
            assert total(fams, "raftfl_failovers", "_total") == 1, name
            assert total(fams, "raftfl_failovers", "_total", cause="lost") == 1, name
            assert total(fams, "raftfl_recovery_seconds", "_count") == 1, name
            assert 0 < total(fams, "raftfl_recovery_seconds", "_sum") < 30, name
            assert total(fams, "raftfl_rounds_committed", "_total") == commits == 4
            assert total(fams, "raftfl_updates_rejected", "_total", reason="non_finite") == refused
            assert total(fams, "raftfl_fit_failures", "_total") >= 1
            # Once the run completed, the holder may already have retired its ServerApp (it
            # serves no run): 1 on the new holder at most, never elsewhere. /aggregator above
            # checked the same rule while it served.
            assert total(fams, "raftfl_is_aggregator") <= (name == new.node)
            assert total(fams, "raftfl_etcd_has_leader") == 1
            assert total(fams, "raftfl_voters_healthy") == 2
            assert total(fams, "raftfl_run_round") == 4
        sums = {total(metrics(c.by_name(n)), "raftfl_recovery_seconds", "_sum") for n in survivors}
        assert len(sums) == 1, sums  # the same log, the same number

        # A SIGSTOPped node answers nothing (or 503); the others stay live.
        worker = next(n for n in survivors if n != new.node)
        c.freeze(worker)
        try:
            deadline = time.monotonic() + 2 * c.lease_ttl
            while time.monotonic() < deadline:
                assert call(c.by_name(worker), "/liveness", timeout=1.0)[0] in (None, 503)
                assert call(c.by_name(new.node), "/liveness")[0] == 200
                time.sleep(POLL_S)
        finally:
            c.thaw(worker)
        c.wait_for(lambda: call(c.by_name(worker), "/liveness")[0] == 200, 30,
                   "the thawed node to be live again")


def test_a_secured_api_reads_for_operators_and_writes_for_admins() -> None:
    with LocalCluster(n=3, rounds=30, cluster="t-ops-tls", train_size=2000, test_size=400,
                      exit_on_complete=False, secure=True) as c:  # still training at the end
        certs = Path(c.workdir or ".") / "certs"
        bundles = {"operator": tls.issue_bundle(certs, "alice", "operator-alice", []),
                   "root": certs / "root", "none": None}

        def context(who: str) -> ssl.SSLContext:
            ctx = ssl.create_default_context(cafile=str(certs / "ca.crt"))
            bundle = bundles[who]
            if bundle is not None:
                ctx.load_cert_chain(str(bundle / "tls.crt"), str(bundle / "tls.key"))
            return ctx

        el = first_term(c)
        node = next(n for n in c.nodes if n.name != el.node)
        assert node.api_url().startswith("https://")
        c.wait_for(lambda: call(node, "/readiness", context=context("operator"))[0] == 200,
                   WAIT, "the node's API")
        status, body = call(node, "/cluster", context=context("none"))
        assert status == 401 and b"client certificate" in body
        status, body = call(node, "/cluster", context=context("operator"))
        assert status == 200 and json.loads(body)["aggregator"]["node"] == el.node
        assert call(node, "/nope", context=context("operator"))[0] == 404
        status, body = call(node, "/pause", "POST", b"{}", context("operator"))
        assert status == 403 and b"may only read" in body
        assert call(node, "/pause", "POST", b"x" * 70_000, context("root"))[0] == 413
        status, body = call(node, "/pause", "POST", b'{"reason": "maintenance"}', context("root"))
        assert status == 200 and b"failover paused" in body, body
        paused = json.loads(call(node, "/cluster", context=context("operator"))[1])["paused"]
        assert paused["by"] == "root@127.0.0.1" and paused["reason"] == "maintenance"
        status, body = call(node, "/resume", "POST", None, context("root"))
        assert status == 200 and b"failover resumed" in body
        status, body = call(node, "/handover", "POST", json.dumps({"to": node.name}).encode(),
                            context("root"))
        assert status == 202 and json.loads(body)["to"] == node.name, body
        c.wait_for(lambda: call(node, "/aggregator", context=context("operator"))[0] == 200,
                   WAIT, "the handover to the node")
        fams = metrics(node, context("operator"))
        assert total(fams, "raftfl_is_aggregator") == 1
        assert total(fams, "raftfl_failovers", "_total", cause="handover") == 1
