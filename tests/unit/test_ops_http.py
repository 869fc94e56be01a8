"""The node's HTTP API without etcd: who may do what (auth), the probes' answers from a
snapshot, the routing table, and a real server on loopback refusing bad input (unknown
path, wrong method, oversized, chunked or malformed bodies, a cross-origin write) and, with
certificates, a client without one (401), an operator's write (403) and a certificate of
another cluster's CA (no handshake). Requests that pass reach etcd, which is absent here:
503 in one line."""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port_base

from raftfl import tls
from raftfl.core.status import NodeStatus, Published
from raftfl.ops import auth, context, probes
from raftfl.ops.auth import Caller, Role
from raftfl.ops.context import OpsContext
from raftfl.ops.routes import Request, dispatch
from raftfl.ops.server import MAX_BODY, ApiServer

pytestmark = pytest.mark.unit

NAME = "127.0.0.1:29990"


@pytest.fixture(autouse=True)
def quick_etcd_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    """etcd is absent here: give up on it in 0.3 s, not the API's 5 s."""
    monkeypatch.setattr(context, "ETCD_RETRY_S", 0.3)


def status(now: float, **kw: Any) -> NodeStatus:
    base: dict[str, Any] = dict(
        name=NAME, cluster="c", endpoints=("127.0.0.1:9",), lease_ttl=3.0, cycled_at=now - 0.5,
        cycles=4, revision=50, lease=7, lease_deadline=now + 2.0, holder=NAME, term=40,
        vacant_since=None, serving_term=40, run=1, last_round=2, rounds=3, paused=False,
        action="serve", sentence="serving", member=True)
    return NodeStatus(**{**base, **kw})


# -- auth -----------------------------------------------------------------------------------
def cert(cn: str) -> dict[str, Any]:
    return {"subject": ((("organizationName", "x"),), (("commonName", cn),))}


@pytest.mark.parametrize("peer, role", [
    (cert("root"), Role.ADMIN), (cert("operator-alice"), Role.OPERATOR),
    (cert("10.0.0.1:5000"), Role.NODE), (None, Role.NONE), ({}, Role.NONE),
])
def test_the_certificate_names_the_role(peer: dict[str, Any] | None, role: Role) -> None:
    assert auth.caller(True, peer, "10.0.0.9").role is role
    assert auth.caller(False, peer, "10.0.0.9").role is Role.PLAIN  # no TLS: like etcd there


@pytest.mark.parametrize("role, method, status_", [
    (Role.NONE, "GET", 401), (Role.NONE, "POST", 401),
    (Role.OPERATOR, "GET", None), (Role.OPERATOR, "POST", 403),
    (Role.NODE, "GET", None), (Role.NODE, "POST", 403),
    (Role.ADMIN, "POST", None), (Role.PLAIN, "POST", None),
])
def test_operators_and_nodes_read_admins_write(role: Role, method: str, status_: int | None) -> None:
    refused = auth.refusal(Caller(role, "operator-alice", "10.0.0.9"), method, "/pause")
    assert (refused[0] if refused else None) == status_
    if refused:
        assert "\n" not in refused[1]


def test_a_browsers_cross_origin_write_is_refused() -> None:
    host = "127.0.0.1:29400"
    assert auth.cross_origin("POST", "http://evil.example", host)[0] == 403  # type: ignore[index]
    assert auth.cross_origin("POST", "null", host) is not None
    assert auth.cross_origin("POST", f"http://{host}", host) is None  # the dashboard itself
    assert auth.cross_origin("POST", None, host) is None  # curl sends no Origin
    assert auth.cross_origin("GET", "http://evil.example", host) is None


def test_who_records_name_the_certificate_and_address() -> None:
    assert Caller(Role.ADMIN, "root", "10.0.0.9").who == "root@10.0.0.9"
    assert Caller(Role.PLAIN, "", "127.0.0.1").who == "api@127.0.0.1"


# -- probes ---------------------------------------------------------------------------------
def answers(st: NodeStatus | None, now: float) -> dict[str, int]:
    return {path: probes.probe(path, st, NAME, now)[0] for path in probes.PROBES}


def test_the_serving_holder_answers_every_probe() -> None:
    now = time.monotonic()
    assert answers(status(now), now) == dict.fromkeys(probes.PROBES, 200)
    assert probes.node_json(status(now), NAME, now)["role"] == "aggregator"


def test_a_loop_that_stopped_cycling_is_unhealthy_and_no_aggregator() -> None:
    now = time.monotonic()
    st = status(now, cycled_at=now - 3.5)
    assert answers(st, now) == {"/health": 503, "/liveness": 503, "/readiness": 200,
                                "/aggregator": 503}
    assert probes.node_json(st, NAME, now)["state"] == "stalled"


@pytest.mark.parametrize("change", [
    {"serving_term": None},  # elected, not serving yet
    {"lease_deadline": 0.0},  # its lease lapsed by its own clock
    {"lease": None},
    {"holder": "127.0.0.1:29991"},  # someone else's term
    {"holder": None, "term": None, "serving_term": None},  # vacant
    {"serving_term": 39},  # still serving an older term
])
def test_only_the_serving_holder_with_a_lease_is_the_aggregator(change: dict[str, Any]) -> None:
    now = time.monotonic()
    assert answers(status(now, **change), now)["/aggregator"] == 503
    assert answers(status(now, **change), now)["/health"] == 200


def test_readiness_needs_a_snapshot_and_a_running_member() -> None:
    now = time.monotonic()
    assert answers(None, now) == dict.fromkeys(probes.PROBES, 503)
    assert answers(status(now, member=False), now)["/readiness"] == 503
    assert answers(status(now, member=None), now)["/readiness"] == 200  # an etcd client node


# -- routing --------------------------------------------------------------------------------
def request(path: str, method: str = "GET", body: bytes = b"", **query: str) -> Request:
    return Request(method, path, query, body, Caller(Role.PLAIN, "", "127.0.0.1"))


@pytest.fixture
def ctx() -> OpsContext:
    now = time.monotonic()
    return OpsContext(Published(status(now)), NAME, "c", secured=False, clock=lambda: now)


@pytest.mark.parametrize("path, method, code", [
    ("/nope", "GET", 404), ("/static/../../setup.cfg", "GET", 404), ("/health/", "GET", 404),
    ("/health", "POST", 405), ("/pause", "GET", 405), ("/", "POST", 405),
    ("/", "GET", 200), ("/static/dashboard.js", "GET", 200), ("/node", "GET", 200),
    ("/static/vendor/uPlot.iife.min.js", "GET", 200),
])
def test_routing(ctx: OpsContext, path: str, method: str, code: int) -> None:
    resp = dispatch(ctx, request(path, method))
    assert resp.status == code
    if code == 405:
        assert dict(resp.headers)["Allow"]


def test_the_page_allows_no_foreign_script(ctx: OpsContext) -> None:
    resp = dispatch(ctx, request("/"))
    assert resp.content_type.startswith("text/html") and b"/static/dashboard.js" in resp.body
    assert "default-src 'self'" in dict(resp.headers)["Content-Security-Policy"]


@pytest.mark.parametrize("query", [{"run": "x"}, {"run": "0"}, {"run": "-1"}, {"run": "9" * 20}])
def test_a_bad_run_parameter_is_a_400(ctx: OpsContext, query: dict[str, str]) -> None:
    for path in ("/cluster", "/history", "/failovers", "/events"):
        resp = dispatch(ctx, request(path, **query))
        assert resp.status == 400, path
        assert json.loads(resp.body)["error"].startswith("run must")


@pytest.mark.parametrize("body, line", [
    (b"{nope", "malformed JSON body"), (b"[1]", "the body must be a JSON object"),
    (b'{"to": 5}', "to must be a string"), (b"\xff\xfe", "malformed JSON body"),
])
def test_a_bad_body_is_a_400_in_one_line(ctx: OpsContext, body: bytes, line: str) -> None:
    resp = dispatch(ctx, request("/handover", "POST", body))
    error = json.loads(resp.body)["error"]
    assert resp.status == 400 and error.startswith(line) and "\n" not in error


def test_before_the_first_cycle_etcd_backed_endpoints_say_starting() -> None:
    ctx = OpsContext(Published(), NAME, "c", secured=False)
    resp = dispatch(ctx, request("/cluster"))
    assert resp.status == 503 and "has not cycled yet" in json.loads(resp.body)["error"]
    assert json.loads(dispatch(ctx, request("/node")).body)["state"] == "starting"


# -- a real server --------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def server() -> Iterator[ApiServer]:
    now = time.monotonic()
    srv = ApiServer(Published(status(now)), f"127.0.0.1:{free_port()}", NAME, "c").start()
    try:
        yield srv
    finally:
        srv.stop()


def call(srv: ApiServer, method: str, path: str, body: bytes | None = None,
         headers: dict[str, str] | None = None, context: ssl.SSLContext | None = None,
         ) -> tuple[int, dict[str, Any]]:
    host, _, port = srv.address.rpartition(":")
    conn = (http.client.HTTPSConnection(host, int(port), timeout=10, context=context)
            if context else http.client.HTTPConnection(host, int(port), timeout=10))
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        raw = resp.read()
        return resp.status, json.loads(raw) if raw.startswith(b"{") else {}
    finally:
        conn.close()


def test_node_holds_an_ask_until_it_sees_a_successor() -> None:
    """`GET /node?after_term=T&wait=S` (an edge worker that lost the aggregator of term T)
    is answered once the node publishes a holder of a later term, or after S seconds."""
    now = time.monotonic()
    published = Published(status(now, term=40))
    srv = ApiServer(published, f"127.0.0.1:{free_port_base(1)}", NAME, "c").start()
    try:
        threading.Timer(0.3, published.publish, [status(now, term=40, cycles=5)]).start()
        threading.Timer(0.6, published.publish, [status(now, term=41, holder="b")]).start()
        began = time.monotonic()
        code, body = call(srv, "GET", "/node?after_term=40&wait=5")
        assert code == 200 and (body["holder"], body["term"]) == ("b", 41)
        assert 0.5 < time.monotonic() - began < 4  # the successor, not the wait, ended it
        assert call(srv, "GET", "/node?after_term=40&wait=5")[1]["term"] == 41  # at once
        began = time.monotonic()
        assert call(srv, "GET", "/node?after_term=41&wait=0.3")[1]["term"] == 41
        assert time.monotonic() - began >= 0.3  # none later: the latest, after the wait
        for bad in ("after_term=-1", "after_term=1&wait=11", "after_term=1&wait=nan",
                    "after_term=1&wait=x", "after_term=1&wait=-0.5"):
            code, body = call(srv, "GET", f"/node?{bad}")
            assert code == 400 and len(body["error"].splitlines()) == 1, bad
    finally:
        srv.stop()


def test_bad_input_over_http(server: ApiServer) -> None:
    assert call(server, "GET", "/health")[0] == 200
    assert call(server, "HEAD", "/aggregator")[0] == 200
    assert call(server, "GET", "/nope")[0] == 404
    assert call(server, "DELETE", "/pause")[0] == 405
    code, body = call(server, "POST", "/pause", b"x" * (MAX_BODY + 1))
    assert code == 413 and "at most 65536" in body["error"]
    assert call(server, "POST", "/pause", b"{bad")[0] == 400
    chunked = {"Transfer-Encoding": "chunked"}
    assert call(server, "POST", "/pause", iter([b"{}"]), chunked)[0] == 411  # type: ignore[arg-type]
    assert call(server, "POST", "/pause", b"{}", {"Origin": "http://evil.example"})[0] == 403
    code, body = call(server, "POST", "/resume", b"{}")  # allowed: etcd (absent) says no
    assert code == 503 and "etcd unreachable" in body["error"]


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("certs")
    tls.init_ca(root / "ca", "c")
    tls.init_ca(root / "other", "c")
    out = {name: tls.issue_bundle(root / "ca", name, cn, hosts)
           for name, cn, hosts in (("node", NAME, ["127.0.0.1"]), ("root", "root", []),
                                   ("alice", "operator-alice", []))}
    out["stranger"] = tls.issue_bundle(root / "other", "root", "root", [])
    return out


@pytest.fixture
def secured(bundles: dict[str, Path]) -> Iterator[ApiServer]:
    tls.configure(tls.load(bundles["node"]))
    try:
        now = time.monotonic()
        srv = ApiServer(Published(status(now)), f"127.0.0.1:{free_port()}", NAME, "c").start()
    finally:
        tls.configure(None)
    try:
        yield srv
    finally:
        srv.stop()


def client(bundles: dict[str, Path], who: str | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(bundles["node"] / "ca.crt"))
    if who is not None:
        ctx.load_cert_chain(str(bundles[who] / "tls.crt"), str(bundles[who] / "tls.key"))
    return ctx


def test_tls_needs_a_client_certificate_and_admin_writes(
        secured: ApiServer, bundles: dict[str, Path], caplog: pytest.LogCaptureFixture) -> None:
    assert secured.url.startswith("https://")
    with caplog.at_level("WARNING", logger="raftfl.ops.server"):
        code, body = call(secured, "GET", "/health", context=client(bundles, None))
    assert code == 401 and "client certificate" in body["error"]
    assert any("refused (401)" in r.getMessage() for r in caplog.records)  # logged
    assert call(secured, "GET", "/health", context=client(bundles, "alice"))[0] == 200
    code, body = call(secured, "POST", "/pause", b"{}", context=client(bundles, "alice"))
    assert code == 403 and "operator-alice (operator) may only read" in body["error"]
    assert call(secured, "POST", "/pause", b"{}", context=client(bundles, "node"))[0] == 403
    code, body = call(secured, "POST", "/resume", b"{}", context=client(bundles, "root"))
    assert code == 503  # allowed; etcd is absent here
    with pytest.raises((ssl.SSLError, ConnectionError)):  # another CA's: no handshake
        call(secured, "GET", "/health", context=client(bundles, "stranger"))
    with pytest.raises((ConnectionError, http.client.HTTPException)):  # plain text to TLS
        call(secured, "GET", "/health")
