"""The fleet server drops a silent worker, but not for time its own process was starved."""

from __future__ import annotations

import time

from raftfl.flower.fleet import FleetServer


def _server(node_timeout: float) -> FleetServer:
    return FleetServer("127.0.0.1", 0, node_timeout=node_timeout).start()


def test_a_silent_worker_is_dropped() -> None:
    server = _server(0.5)
    try:
        server.register(7, "w")
        time.sleep(1.2)
        assert server.node_ids() == []
    finally:
        server.stop()


def test_a_starved_server_does_not_drop_its_workers() -> None:
    """Holding the server's lock stalls its reaper and every request, as a busy GIL or CPU
    does; the worker's silence during the stall does not count against it."""
    server = _server(0.5)
    try:
        token = server.register(7, "w")
        with server._cond:  # noqa: SLF001 - the stall under test
            time.sleep(1.5)
        time.sleep(0.3)  # the reaper's first tick after the stall
        assert server.node_ids() == [7]
        server.touch(token)
        time.sleep(1.2)  # now it really is silent
        assert server.node_ids() == []
    finally:
        server.stop()
