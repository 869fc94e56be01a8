"""Who a peer is comes from its certificate (issue 18). Over mutual TLS, a worker registers
on the fleet only as its own node, operators and the admin get no session, a token works only
over its own certificate's connections, idle connections cannot starve the heartbeats, a
session's outbox is bounded; a node's model service stores models only from the aggregator.
Real certificates, real TLS servers and clients on loopback."""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from raftfl import tls
from raftfl.flower import fleet as fleet_mod
from raftfl.flower.fleet import FleetClient, FleetServer, Lost
from raftfl.node.models import ModelFiles, ModelServer
from raftfl.node.runapp import fleet_identity, node_id

HONEST, OTHER = "127.0.0.1:5000", "127.0.0.1:5001"


@dataclass
class Pki:
    bundles: dict[str, tls.Identity]

    def context(self, who: str) -> ssl.SSLContext:
        ctx = self.bundles[who].client_context()
        ctx.check_hostname = False
        return ctx


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    base: Path = tmp_path_factory.mktemp("pki")
    tls.init_ca(base, "c")
    names = {"server": ("member", ["127.0.0.1"]), HONEST: (HONEST, ["127.0.0.1"]),
             OTHER: (OTHER, ["127.0.0.1"]), "operator": ("operator-eve", []), "root": ("root", [])}
    return Pki({who: tls.load(tls.issue_bundle(base, who.replace(":", "_"), cn, hosts))
                for who, (cn, hosts) in names.items()})


@pytest.fixture
def server(pki: Pki) -> Iterator[FleetServer]:
    tls.configure(pki.bundles["server"])
    try:
        fleet = FleetServer("127.0.0.1", 0, identify=fleet_identity).start()
    finally:
        tls.configure(None)
    yield fleet
    fleet.stop()


def _post(pki: Pki, who: str, address: str, path: str) -> tuple[int, bytes]:
    host, _, port = address.rpartition(":")
    conn = http.client.HTTPSConnection(host, int(port), context=pki.context(who), timeout=10)
    try:
        conn.request("POST", path, body=b"")
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


@pytest.fixture
def honest(pki: Pki, server: FleetServer) -> Iterator[FleetClient]:
    """The honest node's worker: echoes every instruction."""
    tls.configure(pki.bundles[HONEST])  # read per request by the client
    client = FleetClient(server.address, node_id(HONEST), HONEST)
    threading.Thread(target=lambda: _run(client), daemon=True).start()
    deadline = time.monotonic() + 10
    while node_id(HONEST) not in server.node_ids() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.node_ids() == [node_id(HONEST)]
    yield client
    client.abort()
    tls.configure(None)


def _run(client: FleetClient) -> None:
    try:
        client.run(lambda _msg_id, payload: payload)
    except Exception:  # noqa: BLE001 - ended by abort() or the server's stop
        pass


def test_a_certificate_registers_only_as_its_own_node(pki: Pki, server: FleetServer,
                                                       honest: FleetClient) -> None:
    status, body = _post(pki, OTHER, server.address, f"/register?node={node_id(HONEST)}")
    assert status == 403 and b"may register as node" in body
    assert server.node_ids() == [node_id(HONEST)]  # the victim keeps its session
    status, body = _post(pki, OTHER, server.address, f"/register?node={node_id(OTHER)}")
    assert status == 200 and sorted(server.node_ids()) == sorted([node_id(HONEST),
                                                                  node_id(OTHER)])


@pytest.mark.parametrize("who", ["operator", "root"])
def test_operator_and_admin_certificates_get_no_fleet_session(pki: Pki, server: FleetServer,
                                                               who: str) -> None:
    cn = pki.bundles[who].name
    status, body = _post(pki, who, server.address, f"/register?node={node_id(cn)}")
    assert status == 403 and b"gets no fleet session" in body
    assert server.node_ids() == []


def test_a_token_works_only_over_its_own_certificate(pki: Pki, server: FleetServer) -> None:
    status, body = _post(pki, HONEST, server.address, f"/register?node={node_id(HONEST)}")
    token = json.loads(body)["token"]
    assert _post(pki, HONEST, server.address, f"/heartbeat?token={token}")[0] == 200
    status, body = _post(pki, OTHER, server.address, f"/heartbeat?token={token}")
    assert status == 403 and b"used by" in body


def test_a_thousand_idle_connections_do_not_drop_an_honest_worker(
        pki: Pki, server: FleetServer, honest: FleetClient,
        caplog: pytest.LogCaptureFixture) -> None:
    """Each certificate holds at most MAX_PER_PEER connections, and a handshake or a request
    line that does not come in time closes its connection: refused, and said in one line."""
    caplog.set_level(logging.WARNING, logger="raftfl.flower.fleet")
    host, _, port = server.address.rpartition(":")
    ctx = pki.context(OTHER)
    idle: list[socket.socket] = []
    try:
        for i in range(1000):
            raw = socket.create_connection((host, int(port)), timeout=10)
            if i % 2:  # half complete a TLS handshake with a cluster certificate, then idle
                raw = ctx.wrap_socket(raw, server_hostname=host)
            idle.append(raw)
        for round_ in range(3):  # the honest worker is served all along
            msg = f"m{round_}"
            assert server.push(node_id(HONEST), msg, b"payload")
            ready = server.collect([msg], timeout=10)
            assert ready == {msg: b"payload"}
        assert server.node_ids() == [node_id(HONEST)]
    finally:
        for sock in idle:
            sock.close()
    refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert refusals and f"certificate {OTHER!r} has {fleet_mod.MAX_PER_PEER} connections open" \
        in refusals[0]


def test_a_session_outbox_is_bounded(server: FleetServer, pki: Pki) -> None:
    status, body = _post(pki, HONEST, server.address, f"/register?node={node_id(HONEST)}")
    assert status == 200
    accepted = [server.push(node_id(HONEST), f"m{i}", b"x")
                for i in range(fleet_mod.MAX_OUTBOX + 5)]
    assert accepted.count(True) == fleet_mod.MAX_OUTBOX
    lost = server.collect([f"m{fleet_mod.MAX_OUTBOX}"], timeout=0)
    assert isinstance(lost[f"m{fleet_mod.MAX_OUTBOX}"], Lost)
    assert "pending" in lost[f"m{fleet_mod.MAX_OUTBOX}"].reason


def test_only_the_aggregator_stores_models_on_a_node(pki: Pki, tmp_path: Path) -> None:
    """The model service takes a PUT only from the certificate `may_put` allows (the node
    allows the current aggregator's); a forged PUT is refused and stores nothing."""
    blob = b"a model"
    sha = hashlib.sha256(blob).hexdigest()
    tls.configure(pki.bundles["server"])
    try:
        server = ModelServer("127.0.0.1", 0, ModelFiles(tmp_path / "models"),
                             may_put=lambda cn: None if cn == HONEST else f"{cn} is not it").start()
    finally:
        tls.configure(None)
    host, port = server.server_address[:2]
    try:
        for who, status in ((OTHER, 403), (HONEST, 201)):
            conn = http.client.HTTPSConnection(host, port, context=pki.context(who), timeout=10)
            conn.request("PUT", f"/models/{sha}", body=blob)
            response = conn.getresponse()
            assert response.status == status, response.read()
            conn.close()
            assert (server.files.get(sha) is not None) == (status == 201)
    finally:
        server.stop()
