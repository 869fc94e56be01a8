"""ClientAppHost without a network: a resumed round that asks exactly what this node has just
trained (same run, round, base model and content) is answered from that reply; anything else
runs the ClientApp again."""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.clientapp import ClientApp

from raftfl.flower.codec import decode_message, encode_message
from raftfl.flower.grid import Stamp
from raftfl.flower.host import ClientAppHost
from raftfl.flower.identity import adopt_server_identity


def _host(calls: list[int]) -> ClientAppHost:
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: object) -> Message:
        calls.append(1)
        w = msg.content["arrays"]["w"].numpy() + len(calls)  # differs per call
        return Message(RecordDict({"arrays": ArrayRecord({"w": Array(w)})}), reply_to=msg)

    return ClientAppHost(app, run_id=1, node_id=7, node_config={}, run_config={})


def _instruction(term: int, round_: int, base: str, lr: float = 0.01,
                 kind: str = "train") -> tuple[str, bytes]:
    content = RecordDict({"arrays": ArrayRecord({"w": Array(np.zeros(3, np.float32))}),
                          "config": ConfigRecord({"lr": lr, "server-round": round_})})
    adopt_server_identity(1)  # this test process plays the aggregator, as RaftGrid does
    msg = Message(content, dst_node_id=7, message_type=kind, group_id=str(round_))
    msg_id = f"m-{term}-{round_}-{base[:1]}-{lr}"
    stamp = Stamp(run_id=1, term=term, round=round_, base=base).to_json()
    return msg_id, encode_message(msg, stamp, {"message_id": msg_id, "run_id": 1})


def _reply(host: ClientAppHost, payload: bytes) -> Message:
    return decode_message(host.handle("id", payload))[0]


def test_a_resumed_round_reuses_the_reply_just_trained() -> None:
    calls: list[int] = []
    host = _host(calls)
    _, first = _instruction(term=5, round_=2, base="a" * 64)
    old = _reply(host, first)
    new_id, again = _instruction(term=9, round_=2, base="a" * 64)
    new = _reply(host, again)
    assert len(calls) == 1, "the successor's identical round must not train again"
    assert np.array_equal(new.content["arrays"]["w"].numpy(), old.content["arrays"]["w"].numpy())
    assert new.metadata.reply_to_message_id == new_id


def test_anything_else_runs_the_clientapp_again() -> None:
    calls: list[int] = []
    host = _host(calls)
    _reply(host, _instruction(term=5, round_=2, base="a" * 64)[1])
    _reply(host, _instruction(term=9, round_=3, base="a" * 64)[1])  # another round
    _reply(host, _instruction(term=9, round_=3, base="b" * 64)[1])  # another base model
    _reply(host, _instruction(term=9, round_=3, base="b" * 64, lr=0.1)[1])  # another config
    _reply(host, _instruction(term=9, round_=3, base="", lr=0.1)[1])  # outside raftfl.start
    _reply(host, _instruction(term=9, round_=3, base="", lr=0.1)[1])
    assert len(calls) == 6


def test_a_clientapp_that_exits_gets_an_error_reply_and_the_host_lives_on() -> None:
    app = ClientApp()
    calls: list[int] = []

    @app.train()
    def train(msg: Message, context: object) -> Message:
        calls.append(1)
        if len(calls) == 1:
            raise SystemExit(3)  # as a ClientApp calling sys.exit(3) does
        return Message(RecordDict({"arrays": msg.content["arrays"]}), reply_to=msg)

    host = ClientAppHost(app, run_id=1, node_id=7, node_config={}, run_config={})
    failed = _reply(host, _instruction(term=5, round_=1, base="")[1])
    assert failed.has_error() and "SystemExit" in failed.error.reason
    assert not _reply(host, _instruction(term=5, round_=2, base="")[1]).has_error()
    assert len(calls) == 2


def _call(term: int, call: int, kind: str = "query") -> bytes:
    """An own-loop ServerApp's instruction, stamped with its journaled call (journal.py)."""
    adopt_server_identity(1)
    msg = Message(RecordDict({"arrays": ArrayRecord({"w": Array(np.zeros(3, np.float32))})}),
                  dst_node_id=7, message_type=kind, group_id="g")
    stamp = Stamp(run_id=1, term=term, call=call).to_json()
    return encode_message(msg, stamp, {"message_id": f"c-{term}-{call}", "run_id": 1})


def test_a_call_resent_by_a_successor_is_answered_as_before_and_a_new_call_runs() -> None:
    """SecAgg+ keeps its stage in the ClientApp's context.state: the call in flight when the
    aggregator died, re-sent by its successor, must get the same answer, not a second run."""
    calls: list[int] = []
    app = ClientApp()

    @app.query()
    def query(msg: Message, context: object) -> Message:
        calls.append(1)
        return Message(RecordDict({"m": ConfigRecord({"n": len(calls)})}), reply_to=msg)

    host = ClientAppHost(app, run_id=1, node_id=7, node_config={}, run_config={})
    first = _reply(host, _call(term=5, call=3))
    again = _reply(host, _call(term=9, call=3))
    assert len(calls) == 1 and again.content["m"]["n"] == first.content["m"]["n"] == 1
    assert _reply(host, _call(term=9, call=4)).content["m"]["n"] == 2  # same content, new call
    assert _reply(host, _call(term=9, call=0)).content["m"]["n"] == 3  # not journaled
    assert _reply(host, _call(term=9, call=0)).content["m"]["n"] == 4
