"""Edge workers' way back after their aggregator died (raftfl/node/edge.py): while the node
APIs still name the dead server they ask at a steady, spread pace (no growing backoff), and
they connect as soon as the APIs name the successor, also when its fleet port opens a moment
later: every worker is back within one recheck and one connect retry. A node API that died
with the aggregator (first in their list) costs them no backoff."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

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


@contextmanager
def running(opts: EdgeOptions) -> Iterator[list[EdgeWorker]]:
    """`WORKERS` edge workers (each answers with its payload reversed), stopped on exit."""
    workers = [EdgeWorker(100 + i, f"edge-{i}", lambda msg_id, payload: payload[::-1], opts,
                          random.Random(i)) for i in range(WORKERS)]
    stop = threading.Event()
    for worker in workers:
        threading.Thread(target=worker.run, args=(stop,), daemon=True).start()
    try:
        yield workers
    finally:
        stop.set()
        for worker in workers:
            worker.stop()


@pytest.mark.parametrize("dead_api", [False, True])
def test_workers_wait_out_the_election_then_join_the_successor_at_once(
        api: _Api, dead_api: bool) -> None:
    first = FleetServer("127.0.0.1", free_port_base(1)).start()
    servers = [first]
    port = FleetServer("127.0.0.1", free_port_base(1))  # a free port, taken for now
    dead = f"http://127.0.0.1:{free_port_base(1)}"  # nothing listens there
    opts = EdgeOptions(apis=(dead, api.url) if dead_api else (api.url,), poll_hold=1.0)
    try:
        with running(opts) as workers:
            api.point(first, 10)
            assert wait(lambda: len(first.node_ids()) == WORKERS)
            first.stop()  # killed: the API names it for the election's length
            asked = api.asked
            time.sleep(ELECTION_S)
            per_worker = (api.asked - asked) / WORKERS
            assert 3 <= per_worker <= ELECTION_S / 0.2  # a recheck every 0.2-0.4 s
            port.stop()  # the successor is elected and named; its port opens 0.15 s later
            api.body = {"holder": "127.0.0.1:1", "term": 11,
                        "holder_flower_address": port.address}
            named = time.monotonic()
            time.sleep(0.15)
            host, _, number = port.address.rpartition(":")
            successor = FleetServer(host, int(number)).start()
            servers.append(successor)
            assert wait(lambda: len(successor.node_ids()) == WORKERS, 5)
            assert time.monotonic() - named < 0.4 + 0.2 + 0.15  # a recheck, a retry, slack
            assert successor.push(100, "m1", b"abc")
            assert successor.collect(["m1"], timeout=5) == {"m1": b"cba"}
            assert all(w.term == 11 for w in workers)
    finally:
        for server in servers:
            server.stop()


def test_a_real_node_api_holds_the_asks_until_the_successor_is_seen() -> None:
    """The node API (raftfl/ops) holds each ask for the lost server's successor: through
    an election a worker asks about once a second, and connects as soon as the node has
    published the successor."""
    from test_ops_http import status

    from raftfl.core.status import Published
    from raftfl.ops.server import ApiServer

    now = time.monotonic()
    first = FleetServer("127.0.0.1", free_port_base(1)).start()
    servers = [first]
    published = Published(status(now, term=10, holder_flower_address=first.address))
    api = ApiServer(published, f"127.0.0.1:{free_port_base(1)}", "127.0.0.1:1", "c").start()
    opts = EdgeOptions(apis=(api.url,), poll_hold=1.0)
    try:
        with running(opts) as workers:
            assert wait(lambda: len(first.node_ids()) == WORKERS)
            asked = sum(w.asks for w in workers)
            first.stop()  # killed: the node names it for the election's length
            time.sleep(ELECTION_S)
            per_worker = (sum(w.asks for w in workers) - asked) / WORKERS
            assert 1 <= per_worker <= 1 + ELECTION_S / opts.ask_hold + 1, per_worker
            successor = FleetServer("127.0.0.1", free_port_base(1)).start()
            servers.append(successor)
            named = time.monotonic()
            published.publish(status(now, term=11, holder="127.0.0.1:2",
                                     holder_flower_address=successor.address))
            assert wait(lambda: len(successor.node_ids()) == WORKERS, 5)
            assert time.monotonic() - named < opts.recheck[0]  # at once, not at a recheck
            assert all(w.term == 11 for w in workers)
    finally:
        for server in servers:
            server.stop()
        api.stop()
