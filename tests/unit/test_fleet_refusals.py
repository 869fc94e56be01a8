"""The fleet refuses a `/reply` it will not take before reading its body: a stranger's (no
session) and an oversized one, each with one log line, while the session's message stays
pending for the real reply."""

from __future__ import annotations

import http.client
import logging
import socket
import time
from collections.abc import Iterator

import pytest
from conftest import free_port_base

from raftfl.flower.fleet import MAX_BODY, FleetServer


@pytest.fixture
def server() -> Iterator[FleetServer]:
    fleet = FleetServer("127.0.0.1", free_port_base(1)).start()
    try:
        yield fleet
    finally:
        fleet.stop()


def reply_head(server: FleetServer, query: str, length: int) -> tuple[bytes, float]:
    """Send only the head of a `/reply` declaring `length` body bytes; the status line and
    how long it took. The body is never sent: an answer proves the server did not wait for it."""
    host, port = server.address.split(":")
    started = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(f"POST /reply?{query} HTTP/1.0\r\nContent-Length: {length}\r\n\r\n".encode())
        line = sock.makefile("rb").readline()
    return line, time.monotonic() - started


def refusals(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]


def test_a_stranger_is_refused_before_its_body_is_read(
        server: FleetServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="raftfl.flower.fleet")
    line, took = reply_head(server, "token=forged&msg=m1", MAX_BODY)  # 256 MiB, in bounds
    assert line.startswith(b"HTTP/1.1 410"), line
    assert took < 2.0
    [logged] = refusals(caplog)
    assert "POST /reply" in logged and "HTTP 410" in logged and "forged" not in logged


def test_an_oversized_reply_is_refused_unread_and_the_message_stays_pending(
        server: FleetServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="raftfl.flower.fleet")
    token = server.register(7, "w")
    assert server.push(7, "m1", b"instruction")
    assert server.next_for(token, 0) == ("m1", b"instruction")
    line, took = reply_head(server, f"token={token}&msg=m1", MAX_BODY + 1)
    assert line.startswith(b"HTTP/1.1 413"), line
    assert took < 2.0
    assert len(refusals(caplog)) == 1
    assert server.collect(["m1"]) == {}  # still pending: the real reply is taken
    host, port = server.address.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        conn.request("POST", f"/reply?token={token}&msg=m1", body=b"update")
        assert conn.getresponse().status == 200
    finally:
        conn.close()
    assert server.collect(["m1"]) == {"m1": b"update"}
