"""The grid's journal (raftfl/flower/journal.py): a ServerApp with its own loop, killed after
some recorded calls, re-runs on a new grid that answers the recorded calls from the record,
sends only the rest, and ends with the same result. A real FleetServer, a worker thread on
its session API, and Flower Messages; only etcd is replaced by dicts (the recorder's fenced
writes are tested with real etcd in the e2e tier)."""

from __future__ import annotations

import hashlib
import logging
import random
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict

from raftfl.flower import durable
from raftfl.flower.codec import decode_message, encode_message
from raftfl.flower.fleet import FleetServer
from raftfl.flower.grid import RaftGrid
from raftfl.flower.journal import (
    Exchange,
    Journal,
    JournalError,
    encode_ids,
    pack,
    unpack,
    valid_prefix,
)

RUN = 7


class _Worker:
    """Node 1: answers each train instruction with its arrays plus one; counts them."""

    def __init__(self, fleet: FleetServer):
        self.fleet, self.seen, self.stop = fleet, 0, threading.Event()
        self.token = fleet.register(1, "w1")
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            item = self.fleet.next_for(self.token, 0.1)
            if item is None:
                continue
            msg_id, payload = item
            message, _ = decode_message(payload)
            self.seen += 1
            w = message.content.array_records["w"].to_numpy_ndarrays()[0]
            reply = Message(RecordDict({"w": ArrayRecord([w + 1])}), reply_to=message)
            self.fleet.reply(self.token, msg_id, encode_message(reply))


class _Store:
    """The recorder's part, in memory: answers by sha256, exchanges by call."""

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}
        self.calls: dict[int, Exchange] = {}

    def put(self, blob: bytes) -> str:
        sha = hashlib.sha256(blob).hexdigest()
        self.blobs[sha] = blob
        return sha

    def journal(self, term: int, upto: int | None = None) -> Journal:
        recorded = {c: ex for c, ex in self.calls.items() if upto is None or c <= upto}

        def record(call: int, kind: str, request: str, answer: bytes, replies: int,
                   start: bytes) -> bool:
            sha, start_sha = self.put(answer), self.put(start) if start else ""
            self.calls[call] = Exchange(call, kind, request, sha, term, start_sha)
            return True
        return Journal(recorded, self.blobs.__getitem__, record)


@pytest.fixture
def fleet() -> Iterator[FleetServer]:
    server = FleetServer("127.0.0.1", 0)
    worker = _Worker(server)
    _WORKERS[server] = worker
    yield server
    worker.stop.set()
    worker.thread.join(2)
    del _WORKERS[server]


_WORKERS: dict[FleetServer, _Worker] = {}


def _seen(fleet: FleetServer) -> int:
    """Instructions the worker has received so far."""
    return _WORKERS[fleet].seen


def _grid(fleet: FleetServer, journal: Journal) -> RaftGrid:
    return RaftGrid(fleet, run_id=RUN, term=1, hooks=None,  # type: ignore[arg-type]
                    journal=journal)


def _train(grid: RaftGrid, w: np.ndarray, tag: str = "") -> Message:
    """A train instruction for node 1 (`tag` changes its content, not its arrays)."""
    return Message(RecordDict({"w": ArrayRecord([w]), "c": ConfigRecord({"tag": tag})}),
                   dst_node_id=1, message_type="train")


def loop(rounds: int, tag: str = "") -> Callable[[RaftGrid], np.ndarray]:
    """A custom @app.main loop: send, take the reply's arrays, repeat."""
    def main(grid: RaftGrid) -> np.ndarray:
        w = np.zeros(3, dtype=np.float32)
        for _ in range(rounds):
            (reply,) = grid.send_and_receive([_train(grid, w, tag)], timeout=10)
            w = reply.content.array_records["w"].to_numpy_ndarrays()[0]
        return w
    return main


def test_a_rerun_answers_recorded_calls_from_the_record_and_sends_the_rest(
        fleet: FleetServer) -> None:
    store = _Store()
    first = loop(4)(_grid(fleet, store.journal(term=1)))
    assert first.tolist() == [4, 4, 4] and sorted(store.calls) == [1, 2, 3, 4]
    sent_before = _seen(fleet)

    # The aggregator died after recording call 2: its successor replays 1..2, sends 3..4.
    for call in (3, 4):
        del store.calls[call]
    journal = store.journal(term=2)
    again = loop(4)(_grid(fleet, journal))
    assert again.tolist() == first.tolist()
    assert journal.replayed == 2 and _seen(fleet) - sent_before == 2
    assert [store.calls[c].term for c in (1, 2, 3, 4)] == [1, 1, 2, 2]


def test_a_diverging_app_is_named_once_and_goes_live_without_hanging(
        fleet: FleetServer, caplog: pytest.LogCaptureFixture) -> None:
    store = _Store()
    loop(3, tag="v1")(_grid(fleet, store.journal(term=1)))
    sent_before = _seen(fleet)
    with caplog.at_level(logging.WARNING, logger="raftfl.flower.journal"):
        w = loop(3, tag="v2")(_grid(fleet, store.journal(term=2)))
    assert w.tolist() == [3, 3, 3] and _seen(fleet) - sent_before == 3
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "diverged from its record at call 1" in warnings[0]
    assert "train to node 1" in warnings[0]
    assert {ex.term for ex in store.calls.values()} == {2}  # the new path replaced the old


def test_a_push_pull_loop_interrupted_before_its_replies_ends_live(fleet: FleetServer) -> None:
    """The record holds the push but not the pull: the successor's replayed push is sent for
    real when the app pulls, and the loop ends."""
    def main(grid: RaftGrid) -> np.ndarray:
        (msg_id,) = grid.push_messages([_train(grid, np.zeros(3, dtype=np.float32))])
        while True:
            replies = list(grid.pull_messages([msg_id]))
            if replies:
                return replies[0].content.array_records["w"].to_numpy_ndarrays()[0]

    store = _Store()
    main(_grid(fleet, store.journal(term=1)))
    assert [ex.kind for ex in store.calls.values()] == ["push", "pull"]
    del store.calls[2]
    sent_before = _seen(fleet)
    assert main(_grid(fleet, store.journal(term=2))).tolist() == [1, 1, 1]
    assert _seen(fleet) - sent_before == 1


@pytest.mark.parametrize("terms,replayable", [
    ([1, 1, 1], 3),
    ([1, 2, 2], 3),
    ([1, 2, 1], 2),  # call 3 of term 1 lies past term 2's divergence
    ([2, 1], 1),
])
def test_only_a_consecutive_prefix_of_non_decreasing_terms_is_replayed(
        terms: list[int], replayable: int) -> None:
    recorded = {c: Exchange(c, "pull", "r", "a", t) for c, t in enumerate(terms, start=1)}
    assert len(valid_prefix(recorded)) == replayable


def test_a_gap_ends_the_replayable_prefix() -> None:
    one, three = (Exchange(c, "pull", "r", "a", 1) for c in (1, 3))
    assert valid_prefix({1: one, 3: three}) == [one]


@pytest.mark.parametrize("blob", [b"", b"RAFTJRN1\x00", b"RAFTJRN1" + b"\x00" * 7 + b"\x09ab",
                                  b"nope"])
def test_a_hostile_answer_blob_is_one_error(blob: bytes) -> None:
    with pytest.raises(JournalError):
        unpack(blob)


def test_pack_round_trips() -> None:
    assert unpack(pack([b"", b"a", b"bc" * 1000])) == [b"", b"a", b"bc" * 1000]


def test_the_rerun_sees_the_nodes_and_random_draws_the_record_holds(fleet: FleetServer) -> None:
    """A loop that reads the nodes and draws from `random` before its first send: its rerun,
    in a process whose RNG state differs, sees the same nodes and makes the same draw (the
    state recorded with call 1), so its calls match the record and nothing is re-sent."""
    def main(grid: RaftGrid) -> tuple[list[int], float]:
        nodes = list(grid.get_node_ids())
        draw = random.random()
        (reply,) = grid.send_and_receive([_train(grid, np.zeros(3, np.float32), str(draw))],
                                         timeout=10)
        return nodes, draw

    store = _Store()
    grid = _grid(fleet, store.journal(term=1))
    random.seed(1)
    start = grid.journal.start(lambda: durable.capture(None, None).blob)  # type: ignore[union-attr]
    assert start == b""  # a fresh run: recorded with call 1
    first = main(grid)
    assert [ex.kind for ex in store.calls.values()] == ["nodes", "send_and_receive"]
    assert store.calls[1].start_state

    random.seed(99)  # another process state, as on the successor
    grid = _grid(fleet, store.journal(term=2))
    blob = grid.journal.start(lambda: b"unused")  # type: ignore[union-attr]
    durable.restore(blob, None, None)
    sent_before = _seen(fleet)
    assert main(grid) == first and grid.journal.replayed == 2  # type: ignore[union-attr]
    assert _seen(fleet) == sent_before


def test_the_records_last_read_of_the_nodes_is_asked_again(fleet: FleetServer) -> None:
    """The aggregator died after reading the node ids, before its send: the nodes it saw may
    have died with it, so its successor reads them again live (and records that instead)."""
    def main(grid: RaftGrid) -> list[int]:
        nodes = list(grid.get_node_ids())
        grid.send_and_receive([_train(grid, np.zeros(3, np.float32))], timeout=10)
        return nodes

    store = _Store()
    main(_grid(fleet, store.journal(term=1)))
    del store.calls[2]  # killed in its send
    store.calls[1] = replace(store.calls[1], answer=store.put(encode_ids(["1", "99"])))
    assert main(_grid(fleet, store.journal(term=2))) == [1]  # node 99 is gone: not replayed
    assert [(ex.kind, ex.term) for ex in store.calls.values()] == [("nodes", 2),
                                                                   ("send_and_receive", 2)]
