"""Fleet connections persist (HTTP/1.1 keep-alive) without weakening the fleet's promises: a
worker's polls and replies share one connection; an idle one is closed after IDLE_S; an error
response closes its connection; `stop()` cuts idle kept connections at once; a kept connection
the server closed is retried once on a fresh one."""

from __future__ import annotations

import logging
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import free_port_base

from raftfl.flower import fleet as fleet_mod
from raftfl.flower.fleet import FleetClient, FleetError, FleetServer


@pytest.fixture
def server() -> Iterator[FleetServer]:
    fleet = FleetServer("127.0.0.1", free_port_base(1)).start()
    try:
        yield fleet
    finally:
        fleet.stop()


def count_accepts(server: FleetServer) -> list[int]:
    """Count the TCP connections the server accepts from now on."""
    accepted = [0]
    real = server._httpd.process_request

    def counting(request: Any, client_address: Any) -> None:
        accepted[0] += 1
        real(request, client_address)

    server._httpd.process_request = counting  # type: ignore[method-assign]
    return accepted


def raw(server: FleetServer) -> socket.socket:
    host, port = server.address.split(":")
    return socket.create_connection((host, int(port)), timeout=5)


def exchange(sock: socket.socket, request: bytes) -> bytes:
    """Send one HTTP/1.1 request; the response head (the body is empty here)."""
    sock.sendall(request)
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        assert chunk, f"connection closed after {head!r}"
        head += chunk
    return head


def closed_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the server closes the connection within `seconds` (a body still on its way is
    read and skipped)."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            if sock.recv(4096) == b"":
                return True
        except TimeoutError:
            return False
        except OSError:
            return True
    return False


def serve(client: FleetClient, handle: Callable[[str, bytes], bytes],
          replied: list[str]) -> threading.Thread:
    def run() -> None:
        try:
            client.run(handle, lambda msg_id, _taken_at: replied.append(msg_id))
        except FleetError:
            pass

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_polls_and_replies_share_one_connection(server: FleetServer) -> None:
    accepted = count_accepts(server)
    client = FleetClient(server.address, 9, "w", poll_hold=0.2, idle_heartbeat=False)
    replied: list[str] = []
    thread = serve(client, lambda msg_id, payload: payload + b"!", replied)
    deadline = time.monotonic() + 5
    while server.node_ids() != [9] and time.monotonic() < deadline:
        time.sleep(0.01)
    for i in range(5):
        assert server.push(9, f"m{i}", b"x")
        assert server.collect([f"m{i}"], timeout=5) == {f"m{i}": b"x!"}
    time.sleep(0.5)  # a few empty polls (204) too, and the last 200 arrives
    client.abort()
    thread.join(5)
    assert replied == [f"m{i}" for i in range(5)]
    assert accepted[0] == 1  # register, ~10 polls and 5 replies over one connection


def test_an_error_response_closes_its_connection(server: FleetServer) -> None:
    with raw(server) as sock:
        head = exchange(sock, b"POST /heartbeat?token=forged HTTP/1.1\r\nHost: x\r\n"
                              b"Content-Length: 0\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 410") and b"Connection: close" in head
        assert closed_within(sock, 2.0)


def test_an_idle_kept_connection_is_closed_after_idle_s(
        server: FleetServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fleet_mod, "IDLE_S", 0.3)
    token = server.register(7, "w")
    with raw(server) as sock:
        head = exchange(sock, f"POST /heartbeat?token={token} HTTP/1.1\r\nHost: x\r\n"
                              "Content-Length: 0\r\n\r\n".encode())
        assert head.startswith(b"HTTP/1.1 200") and b"Connection: close" not in head
        # kept open: a second request on it is served
        head = exchange(sock, f"POST /heartbeat?token={token} HTTP/1.1\r\nHost: x\r\n"
                              "Content-Length: 0\r\n\r\n".encode())
        assert head.startswith(b"HTTP/1.1 200")
        started = time.monotonic()
        assert closed_within(sock, 3.0)
        assert 0.2 < time.monotonic() - started < 2.0
    assert not server._httpd._conns  # the slot is free again


def test_stop_cuts_an_idle_kept_connection_at_once(server: FleetServer) -> None:
    token = server.register(7, "w")
    with raw(server) as sock:
        head = exchange(sock, f"POST /heartbeat?token={token} HTTP/1.1\r\nHost: x\r\n"
                              "Content-Length: 0\r\n\r\n".encode())
        assert head.startswith(b"HTTP/1.1 200")
        started = time.monotonic()
        server.stop()
        assert closed_within(sock, 2.0)
        assert time.monotonic() - started < 1.0  # not IDLE_S later


@pytest.mark.parametrize("check_first", [True, False], ids=["noticed", "raced"])
def test_a_kept_connection_the_server_closed_is_retried_once(
        server: FleetServer, monkeypatch: pytest.MonkeyPatch, check_first: bool) -> None:
    """The reply's connection idles past IDLE_S while the ClientApp runs. Noticed: the client
    sees it closed before reusing it. Raced: it sends on the closed connection anyway (the
    server closing it at that very moment) and retries once on a fresh one."""
    monkeypatch.setattr(fleet_mod, "IDLE_S", 0.2)
    if not check_first:
        monkeypatch.setattr(fleet_mod, "_reusable", lambda conn: conn.sock is not None)
    accepted = count_accepts(server)
    client = FleetClient(server.address, 9, "w", poll_hold=0.1, idle_heartbeat=False)
    replied: list[str] = []

    def handle(msg_id: str, payload: bytes) -> bytes:
        time.sleep(0.6)  # longer than IDLE_S: the server closes the idle connection
        return payload + b"!"

    thread = serve(client, handle, replied)
    deadline = time.monotonic() + 5
    while server.node_ids() != [9] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.push(9, "m1", b"x")
    assert server.collect(["m1"], timeout=5) == {"m1": b"x!"}
    deadline = time.monotonic() + 5
    while not replied and time.monotonic() < deadline:  # the 200 is on its way
        time.sleep(0.01)
    client.abort()
    thread.join(5)
    assert replied == ["m1"]
    assert accepted[0] >= 2  # the reply went over a fresh connection


def test_a_killed_server_still_fails_a_kept_poll_at_once(server: FleetServer) -> None:
    client = FleetClient(server.address, 9, "w", poll_hold=2.0, idle_heartbeat=False)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            client.run(lambda m, p: p, None)
        except FleetError as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 5
    while server.node_ids() != [9] and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)  # a poll is held on the kept connection
    started = time.monotonic()
    server.stop()
    thread.join(5)
    assert errors and time.monotonic() - started < 1.0


def test_a_peer_dropping_its_kept_connection_is_not_a_refusal(
        server: FleetServer, caplog: pytest.LogCaptureFixture) -> None:
    """A client that closes with the response body unread resets the connection; the server,
    waiting for the next request on it, ends quietly (refusals are rate-limited lines: a
    spurious one would hide the next real one)."""
    caplog.set_level(logging.INFO, logger="raftfl.flower.fleet")
    for _ in range(3):
        with raw(server) as sock:
            exchange(sock, b"POST /register?node=7&name=w HTTP/1.1\r\nHost: x\r\n"
                           b"Content-Length: 0\r\n\r\n")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    time.sleep(0.3)
    assert not [r for r in caplog.records if "refused" in r.getMessage()]
    assert server._httpd._conns == set()
