"""The fleet at many sessions: a flood of registrations is bounded (429, counted, one line),
and a held poll is a session's liveness (an edge worker heartbeats only while it trains)."""

from __future__ import annotations

import http.client
import logging
import threading
import time
from collections.abc import Iterator

import pytest
from conftest import free_port_base

from raftfl.flower.fleet import FleetClient, FleetError, FleetServer, Lost


@pytest.fixture
def server() -> Iterator[FleetServer]:
    fleet = FleetServer("127.0.0.1", free_port_base(1), node_timeout=0.6, max_sessions=5).start()
    try:
        yield fleet
    finally:
        fleet.stop()


def post(server: FleetServer, path: str) -> int:
    host, port = server.address.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        conn.request("POST", path, body=b"")
        return conn.getresponse().status
    finally:
        conn.close()


def test_a_registration_flood_is_refused_past_the_cap_and_counted(
        server: FleetServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="raftfl.flower.fleet")
    statuses = [post(server, f"/register?node={100 + i}&name=flood") for i in range(40)]
    assert statuses[:5] == [200] * 5
    assert set(statuses[5:]) == {429}
    assert len(server.node_ids()) == 5
    said = [r.getMessage() for r in caplog.records if "5 sessions open" in r.getMessage()]
    assert len(said) == 1 and "more refused" not in said[0]  # the first, then quiet
    # A node already connected may still register again (it replaces its own session).
    assert post(server, "/register?node=100&name=again") == 200


def test_a_held_poll_keeps_a_session_without_heartbeats(server: FleetServer) -> None:
    token = server.register(7, "edge")
    got: list[object] = []
    poll = threading.Thread(target=lambda: got.append(server.next_for(token, 2.0)))
    poll.start()
    time.sleep(1.5)  # well past node_timeout (0.6 s), no heartbeat
    assert server.node_ids() == [7]
    assert server.push(7, "m1", b"x")
    poll.join(5)
    assert got == [("m1", b"x")]
    time.sleep(1.2)  # no poll, no heartbeat: now it is silent
    assert server.node_ids() == []
    assert isinstance(server.collect(["m1"])["m1"], Lost)


def test_an_edge_client_heartbeats_only_while_its_clientapp_runs(server: FleetServer) -> None:
    beats = []
    real = server.touch
    server.touch = lambda token, peer="": (beats.append(time.monotonic()), real(token, peer))  # type: ignore[method-assign]
    client = FleetClient(server.address, 9, "edge", poll_hold=1.0, heartbeat=0.1,
                         idle_heartbeat=False)
    replied: list[tuple[str, float]] = []

    def handle(msg_id: str, payload: bytes) -> bytes:
        time.sleep(1.0)  # a ClientApp longer than node_timeout: heartbeats keep it
        return payload + b"!"

    done = threading.Event()

    def run() -> None:
        try:
            client.run(handle, lambda msg_id, taken_at: replied.append((msg_id, taken_at)))
        except FleetError:
            done.set()

    threading.Thread(target=run, daemon=True).start()
    deadline = time.monotonic() + 5
    while server.node_ids() != [9] and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(1.5)  # idle: held polls only
    idle_beats = len(beats)
    assert server.node_ids() == [9]
    assert server.push(9, "m1", b"work")
    assert server.collect(["m1"], timeout=5) == {"m1": b"work!"}
    collected = time.time()
    trained_beats = len(beats) - idle_beats
    assert idle_beats == 0
    assert trained_beats >= 5  # ~10 in the ClientApp's second, plus the reply's own touch
    time.sleep(1.3)  # the reply carried the next poll: its answer comes after that hold
    assert [m for m, _ in replied] == ["m1"]
    assert collected - 0.5 < replied[0][1] <= collected  # when the server took it
    server.stop()
    assert done.wait(5)  # the held poll fails at once



@pytest.mark.parametrize(("asked", "kept_for"), [(None, 0.6), (0.1, 0.6), (1.5, 1.5),
                                                   (1e9, 30.0)])
def test_a_worker_may_ask_for_a_longer_silence_within_bounds(
        server: FleetServer, asked: float | None, kept_for: float) -> None:
    server.register(7, "edge", liveness=asked)
    assert server._sessions[7].timeout == kept_for  # noqa: SLF001 - the clamp under test


def test_a_silence_asked_for_is_honoured_over_http(server: FleetServer) -> None:
    assert post(server, "/register?node=8&name=slow&liveness=1.5") == 200
    assert post(server, "/register?node=9&name=bad&liveness=nan") == 400
    time.sleep(1.0)  # past node_timeout (0.6 s), within its 1.5 s
    assert server.node_ids() == [8]
    time.sleep(1.0)
    assert server.node_ids() == []
