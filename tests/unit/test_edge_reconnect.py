"""Edge workers' way back after their aggregator died (raftfl/node/edge.py): while the node
APIs still name the dead server they ask at a steady, spread pace (no growing backoff), and
they connect as soon as the APIs name the successor, also when its fleet port opens a moment
later: every worker is back within one recheck and one connect retry."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator

import pytest
from conftest import free_port_base
from test_scale_edge import _Api, wait

from raftfl.flower.fleet import FleetServer
from raftfl.node.edge import EdgeOptions, EdgeWorker

WORKERS = 20
ELECTION_S = 2.0  # long enough for a growing backoff to reach its 1 s cap


@pytest.fixture
def api() -> Iterator[_Api]:
    a = _Api()
    try:
        yield a
    finally:
        a.httpd.shutdown()
        a.httpd.server_close()


def test_workers_wait_out_the_election_then_join_the_successor_at_once(api: _Api) -> None:
    first = FleetServer("127.0.0.1", free_port_base(1)).start()
    port = FleetServer("127.0.0.1", free_port_base(1))  # a free port, taken for now
    opts = EdgeOptions(apis=(api.url,), poll_hold=1.0)
    workers = [EdgeWorker(100 + i, f"edge-{i}", lambda msg_id, payload: payload[::-1], opts,
                          random.Random(i)) for i in range(WORKERS)]
    stop = threading.Event()
    for worker in workers:
        threading.Thread(target=worker.run, args=(stop,), daemon=True).start()
    successor = None
    try:
        api.point(first, 10)
        assert wait(lambda: len(first.node_ids()) == WORKERS)
        first.stop()  # killed: the API names it for the election's length
        asked = api.asked
        time.sleep(ELECTION_S)
        per_worker = (api.asked - asked) / WORKERS
        assert 3 <= per_worker <= ELECTION_S / 0.2  # a recheck every 0.2-0.4 s
        port.stop()  # the successor is elected and named; its fleet port opens 0.15 s later
        api.body = {"holder": "127.0.0.1:1", "term": 11, "holder_flower_address": port.address}
        named = time.monotonic()
        time.sleep(0.15)
        host, _, number = port.address.rpartition(":")
        successor = FleetServer(host, int(number)).start()
        assert wait(lambda: len(successor.node_ids()) == WORKERS, 5)
        assert time.monotonic() - named < 0.4 + 0.2 + 0.15  # a recheck, a retry, slack
        assert successor.push(100, "m1", b"abc")
        assert successor.collect(["m1"], timeout=5) == {"m1": b"cba"}
        assert all(w.term == 11 for w in workers)
    finally:
        stop.set()
        for worker in workers:
            worker.stop()
        for server in (first, successor):
            if server is not None:
                server.stop()
