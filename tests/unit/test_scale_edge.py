"""Edge workers (raftfl/node/edge.py): where the aggregator is, from a node API's answer;
jittered waits; admission without etcd; and a worker that follows the role from one fleet
server to the next through a node API only."""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from conftest import free_port_base

from raftfl.core.errors import RaftflError
from raftfl.flower.fleet import FleetServer
from raftfl.flower.grid import Stamp
from raftfl.node.edge import EdgeOptions, EdgeWorker, Holder, backoff, holder_from


@pytest.mark.parametrize(("body", "want"), [
    ({"holder": "10.0.0.1:5000", "term": 7}, Holder("10.0.0.1:5000", 7, "10.0.0.1:5200")),
    ({"holder": "h:5000", "term": 7, "holder_flower_address": "h:9999"}, Holder("h:5000", 7, "h:9999")),
    ({"holder": None, "term": None}, None),  # vacant
    ({"holder": "h:5000", "term": 0}, None),
    ({"holder": "h:5000", "term": "7"}, None),
    ({"holder": "h:5000", "term": True}, None),
    ({"holder": "no-port", "term": 3}, None),
    ({"holder": "h:abc", "term": 3}, None),
    (["not", "a", "dict"], None),
    ({"state": "starting"}, None),
])
def test_holder_from_a_node_api_answer(body: Any, want: Holder | None) -> None:
    assert holder_from(body) == want


def test_backoff_is_full_jitter_capped() -> None:
    opts = EdgeOptions(apis=("http://x:1",), backoff_base=0.25, backoff_cap=2.0)
    rng = random.Random(1)
    for attempt, bound in [(0, 0.25), (1, 0.5), (2, 1.0), (3, 2.0), (50, 2.0)]:
        waits = [backoff(attempt, opts, rng) for _ in range(300)]
        assert 0 <= min(waits) and max(waits) <= bound
        assert max(waits) > 0.8 * bound  # spread over the whole range, not a fixed step


@pytest.mark.parametrize("apis", [(), ("x:1",), ("ftp://x:1",)])
def test_options_refuse_bad_api_urls(apis: tuple[str, ...]) -> None:
    with pytest.raises(RaftflError):
        EdgeOptions(apis=apis)


class _Msg:
    class content:  # noqa: N801 - a stand-in for Message.content
        array_records: dict[str, Any] = {}


def test_admit_refuses_terms_older_than_seen() -> None:
    worker = EdgeWorker(5, "e", lambda m, p: b"", EdgeOptions(apis=("http://x:1",)))
    assert worker.admit(Stamp(1, 10), _Msg) is None
    assert worker.admit(Stamp(1, 12), _Msg) is None
    assert worker.admit(Stamp(1, 10), _Msg) == "term 10 is older than term 12"
    assert worker.admit(Stamp(1, 12), _Msg) is None


class _Api:
    """A node API that answers GET /node with whatever `body` is now."""

    def __init__(self) -> None:
        self.body: dict[str, Any] = {"holder": None, "term": None}
        self.asked = 0
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                api.asked += 1
                data = json.dumps(api.body).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", free_port_base(1)), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    def point(self, fleet: FleetServer, term: int) -> None:
        self.body = {"holder": "127.0.0.1:1", "term": term,
                     "holder_flower_address": fleet.address}


@pytest.fixture
def api() -> Iterator[_Api]:
    a = _Api()
    try:
        yield a
    finally:
        a.httpd.shutdown()
        a.httpd.server_close()


def wait(pred: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.02)
    return False


def test_a_worker_follows_the_role_through_a_node_api(api: _Api) -> None:
    first = FleetServer("127.0.0.1", free_port_base(1)).start()
    second = FleetServer("127.0.0.1", free_port_base(1)).start()
    opts = EdgeOptions(apis=(api.url,), backoff_base=0.05, backoff_cap=0.2, poll_hold=1.0)
    worker = EdgeWorker(42, "edge", lambda msg_id, payload: payload[::-1], opts,
                        random.Random(0))
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    thread.start()
    try:
        assert not wait(lambda: first.node_ids(), 0.5)  # vacant: nobody to connect to
        asked_while_vacant = api.asked
        assert 2 <= asked_while_vacant <= 40  # backs off, does not spin
        api.point(first, 10)
        assert wait(lambda: first.node_ids() == [42])
        assert first.push(42, "m1", b"abc")
        assert first.collect(["m1"], timeout=5) == {"m1": b"cba"}
        api.point(second, 11)
        first.stop()  # the aggregator is gone: the held poll fails, the worker asks again
        assert wait(lambda: second.node_ids() == [42])
        assert second.push(42, "m2", b"xyz")
        assert second.collect(["m2"], timeout=5) == {"m2": b"zyx"}
        assert worker.term == 11
    finally:
        stop.set()
        worker.stop()
        thread.join(5)
        first.stop()
        second.stop()
    assert not thread.is_alive()
