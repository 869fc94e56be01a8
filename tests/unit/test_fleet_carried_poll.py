"""A register or a reply that carries the next poll (`hold`, fleet.py): one request where
there were two, with the session's token or the time the reply was taken in a header, and
the same refusals as the plain requests."""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Iterator

import pytest
from conftest import free_port_base

from raftfl.flower.fleet import MESSAGE_HEADER, TAKEN_HEADER, TOKEN_HEADER, FleetServer


@pytest.fixture
def server() -> Iterator[FleetServer]:
    fleet = FleetServer("127.0.0.1", free_port_base(1)).start()
    try:
        yield fleet
    finally:
        fleet.stop()


def request(conn: http.client.HTTPConnection, method: str, path: str,
            body: bytes | None = None) -> http.client.HTTPResponse:
    conn.request(method, path, body=body)
    response = conn.getresponse()
    response.read()
    return response


def connect(server: FleetServer) -> http.client.HTTPConnection:
    host, port = server.address.split(":")
    return http.client.HTTPConnection(host, int(port), timeout=5)


def test_a_register_carries_the_first_poll(server: FleetServer) -> None:
    threading.Timer(0.2, lambda: server.push(7, "m1", b"work")).start()
    conn = connect(server)
    response = request(conn, "POST", "/register?node=7&name=w&hold=2", b"")
    assert response.status == 200 and response.headers[MESSAGE_HEADER] == "m1"
    assert response.headers[TOKEN_HEADER] == server._sessions[7].token  # noqa: SLF001
    idle = request(conn, "POST", "/register?node=8&name=v&hold=0.1", b"")
    assert idle.status == 204 and idle.headers[TOKEN_HEADER]  # nothing yet, but a session


@pytest.mark.parametrize("hold", ["nan", "soon"])
def test_a_bad_hold_is_refused_before_any_session_exists(server: FleetServer,
                                                         hold: str) -> None:
    response = request(connect(server), "POST", f"/register?node=7&hold={hold}", b"")
    assert response.status == 400
    assert server.node_ids() == []


def test_a_reply_carries_the_next_poll_and_says_when_it_was_taken(
        server: FleetServer) -> None:
    token = server.register(7, "w")
    assert server.push(7, "m1", b"work")
    conn = connect(server)
    assert request(conn, "GET", f"/poll?token={token}&hold=1").headers[MESSAGE_HEADER] == "m1"
    threading.Timer(0.3, lambda: server.push(7, "m2", b"more")).start()
    sent = time.time()
    response = request(conn, "POST", f"/reply?token={token}&msg=m1&hold=2", b"done")
    assert server.collect(["m1"]) == {"m1": b"done"}
    assert response.status == 200 and response.headers[MESSAGE_HEADER] == "m2"
    assert sent <= float(response.headers[TAKEN_HEADER]) < sent + 0.25  # before the hold
    again = request(connect(server), "POST", f"/reply?token={token}&msg=m1&hold=1", b"done")
    assert again.status == 409 and TAKEN_HEADER not in again.headers  # not taken twice


def test_a_reply_taken_as_the_server_stops_still_says_so(server: FleetServer) -> None:
    token = server.register(7, "w")
    assert server.push(7, "m1", b"work")
    assert server.push(7, "m2", b"more")
    conn = connect(server)
    assert request(conn, "GET", f"/poll?token={token}&hold=1").headers[MESSAGE_HEADER] == "m1"
    server.requeue(token, "m1", b"work")  # as if that answer had been lost on its way
    threading.Timer(0.3, server.stop).start()
    response = request(conn, "POST", f"/reply?token={token}&msg=m1&hold=0.1", b"x")
    assert response.status == 200 and response.headers[MESSAGE_HEADER] == "m2"  # not m1 again
    response = request(conn, "POST", f"/reply?token={token}&msg=m2&hold=3", b"x")
    assert response.status == 503 and float(response.headers[TAKEN_HEADER]) > 0
