"""screen_reply: a worker's train reply against the model the round sent (table-driven), and
RaftGrid turning a refused reply into an error reply from that worker."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Error, Message, Metadata, MetricRecord, RecordDict

from raftfl.core.events import FitResults, decode
from raftfl.flower.codec import decode_message, encode_message
from raftfl.flower.fleet import Lost
from raftfl.flower.grid import UPDATE_REJECTED, RaftGrid
from raftfl.flower.screen import ScreenPolicy, screen_reply

pytestmark = pytest.mark.unit

SENT = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(3, dtype=np.float32),
        "steps": np.array(7.0),  # an int64 counter FedAvg has averaged into float64
        "ids": np.arange(3, dtype=np.int64)}


def model(**change: Any) -> dict[str, Any]:
    arrays = {k: v.copy() for k, v in SENT.items()}
    for key, value in change.items():
        if value is None:
            arrays.pop(key)
        else:
            arrays[key] = value
    return arrays


def reply(arrays: dict[str, Any] | None = None, examples: Any = 100, name: str = "arrays",
          metrics: dict[str, Any] | None = None) -> Message:
    content = RecordDict({name: ArrayRecord({k: Array(np.asarray(v))
                                             for k, v in (arrays or model()).items()}),
                          "metrics": MetricRecord(metrics or {"train_loss": 0.5,
                                                              "num-examples": examples})})
    md = Metadata(run_id=1, message_id="r", src_node_id=7, dst_node_id=1,
                  reply_to_message_id="m", group_id="1", created_at=0.0, ttl=60.0,
                  message_type="train")
    return Message(metadata=md, content=content)


def sent() -> dict[str, ArrayRecord]:
    return {"arrays": ArrayRecord({k: Array(v) for k, v in SENT.items()})}


def nan_w() -> np.ndarray:
    w = SENT["w"].copy()
    w[1, 2] = np.nan
    return w


def bad_header() -> Message:
    msg = reply()
    arr = Array(SENT["b"])
    msg.content["arrays"]["b"] = Array(dtype=arr.dtype, shape=(4,), stype=arr.stype,
                                       data=arr.data)
    return msg


def npz_in_place_of_b() -> Message:
    import io

    buf = io.BytesIO()
    np.savez(buf, b=SENT["b"])
    msg = reply()
    msg.content["arrays"]["b"] = Array(dtype="float32", shape=(3,), stype="numpy.ndarray",
                                       data=buf.getvalue())
    return msg


def garbage_in_place_of_b() -> Message:
    msg = reply()
    msg.content["arrays"]["b"] = Array(dtype="float32", shape=(3,), stype="numpy.ndarray",
                                       data=b"\x93NUMPY garbage")
    return msg


CASES: list[tuple[str, Callable[[], Message], dict[str, Any], str | None]] = [
    ("honest", lambda: reply(), {}, None),
    ("honest, examples as declared", lambda: reply(examples=100), {"declared": 100}, None),
    ("honest, float examples", lambda: reply(examples=99.0), {"declared": 100}, None),
    ("int counter the strategy averaged into float",
     lambda: reply(model(steps=np.array(8, np.int64))), {}, None),
    ("honest, norm under the bound", lambda: reply(model(b=np.full(3, 1.5, np.float32))),
     {"max_norm": 1.0}, None),
    ("NaN", lambda: reply(model(w=nan_w())), {}, "array arrays.w has non-finite values (nan)"),
    ("+inf", lambda: reply(model(b=np.array([1, np.inf, 1], np.float32))), {},
     "non-finite values (inf)"),
    ("-inf in float64", lambda: reply(model(b=np.array([1, -np.inf, 1]))), {},
     "non-finite values (-inf)"),
    ("missing array", lambda: reply(model(b=None)), {}, "array ['b'] missing from 'arrays'"),
    ("extra array", lambda: reply(model(extra=np.zeros(2, np.float32))), {},
     "unexpected array ['extra']"),
    ("wrong shape", lambda: reply(model(w=np.zeros((3, 2), np.float32))), {},
     "array arrays.w has shape [3, 2], not [2, 3]"),
    ("wrong rank", lambda: reply(model(b=np.ones((1, 3), np.float32))), {}, "shape [1, 3]"),
    ("wrong dtype: an int array sent back as float",
     lambda: reply(model(ids=np.arange(3, dtype=np.float32))), {},
     "array arrays.ids has dtype float32, not int64"),
    ("wrong dtype: strings", lambda: reply(model(b=np.array(["a", "b", "c"]))), {},
     "has dtype <U1"),
    ("wrong dtype: complex", lambda: reply(model(b=np.ones(3, np.complex64))), {},
     "has dtype complex64"),
    ("header lies about the data", bad_header, {}, "its header does not match its data"),
    ("an .npz archive as an array", npz_in_place_of_b, {}, "array arrays.b is not one numpy"),
    ("garbage bytes as an array", garbage_in_place_of_b, {}, "unreadable update: "),
    ("other array record name", lambda: reply(name="weights"), {},
     "array records ['weights'], the instruction sent ['arrays']"),
    ("inflated num-examples", lambda: reply(examples=10_000), {"declared": 100},
     "num-examples 10000 above the 100 the node declared"),
    ("negative num-examples", lambda: reply(examples=-5), {}, "num-examples -5 is not a count"),
    ("NaN num-examples", lambda: reply(examples=float("nan")), {},
     "metric metrics.num-examples is not finite"),
    ("inf loss", lambda: reply(metrics={"train_loss": float("inf"), "num-examples": 1}), {},
     "metric metrics.train_loss is not finite"),
    ("norm over the bound", lambda: reply(model(b=np.full(3, 3.0, np.float32))),
     {"max_norm": 3.0}, "update norm 3.464 above the bound 3"),
    ("undeclared: any count passes", lambda: reply(examples=10**9), {}, None),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_screen_reply(case: tuple[str, Callable[[], Message], dict[str, Any], str | None]) -> None:
    _, make, kw, expected = case
    reason = screen_reply(sent(), make(), kw.get("declared"), kw.get("max_norm"))
    if expected is None:
        assert reason is None
    else:
        assert reason is not None and expected in reason, reason


def test_an_error_reply_is_not_screened() -> None:
    md = reply().metadata
    assert screen_reply(sent(), Message(metadata=md, error=Error(2, "boom"))) is None


def test_reasons_are_one_bounded_line() -> None:
    many = model(**{f"x{i}": np.zeros(1, np.float32) for i in range(50)})
    reason = screen_reply(sent(), reply(many))
    assert reason is not None and "\n" not in reason and len(reason) <= 200
    assert "(50)" in reason


# -- RaftGrid: a refused train reply becomes an error reply from its worker ---------------


class FakeFleet:
    """Answers each pushed instruction with what `answer(node_id, message)` returns."""

    def __init__(self, answer: Callable[[int, Message], Message]):
        self.answer = answer
        self.done: dict[str, bytes | Lost] = {}

    def node_ids(self) -> list[int]:
        return [7, 8]

    def push(self, node_id: int, msg_id: str, payload: bytes) -> bool:
        message, _ = decode_message(payload)
        out = self.answer(node_id, message)
        self.done[msg_id] = encode_message(out, None, {"reply_to_message_id": msg_id,
                                                       "src_node_id": node_id, "run_id": 1})
        return True

    def collect(self, msg_ids: Any, timeout: float | None = 0.0) -> dict[str, bytes | Lost]:
        return {m: self.done.pop(m) for m in set(msg_ids) & self.done.keys()}

    def forget(self, msg_ids: Any) -> None:
        pass


def test_grid_turns_a_hostile_train_reply_into_an_error_from_its_worker() -> None:
    def answer(node_id: int, message: Message) -> Message:
        arrays = message.content["arrays"]
        got = {k: v.numpy() for k, v in arrays.items()}
        if node_id == 8:
            got["w"] = nan_w()
        content = RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in got.items()}),
                              "metrics": MetricRecord({"num-examples": 50})})
        return Message(content, reply_to=message)

    grid = RaftGrid(FakeFleet(answer), run_id=1, term=3, hooks=None,  # type: ignore[arg-type]
                    screen=ScreenPolicy(declared={7: 50, 8: 50}.get))
    messages = [grid.create_message(RecordDict({"arrays": sent()["arrays"]}), kind, node, "1")
                for kind in ("train", "evaluate") for node in (7, 8)]
    replies = list(grid.send_and_receive(messages, timeout=5))
    by = {(m.metadata.message_type, m.metadata.src_node_id): m for m in replies}
    assert not by[("train", 7)].has_error()
    rejected = by[("train", 8)]
    assert rejected.has_error() and rejected.error.code == UPDATE_REJECTED
    assert rejected.error.reason.startswith("update rejected: array arrays.w has non-finite")
    assert not by[("evaluate", 8)].has_error()  # only train replies are updates


def test_fit_results_carry_rejections_and_old_events_still_decode() -> None:
    ev = FitResults(node="n1", term=5, round=1, results=2, failures=1, num_examples=100,
                    rejected={"127.0.0.1:5001": "array arrays.w has non-finite values (nan)"})
    assert decode(ev.to_json()) == ev
    old = FitResults(node="n1", term=5, round=1, results=2, failures=0, num_examples=100)
    raw = old.to_dict()
    del raw["rejected"]  # written before the field existed
    assert decode(json.dumps(raw)).rejected == {}
    with pytest.raises(ValueError):
        FitResults(node="n1", round=1, results=0, failures=40, num_examples=0,
                   rejected={f"n{i}": "x" for i in range(40)})


def test_the_hostile_test_hook_tampers_only_as_told() -> None:
    from raftfl.lab.testhooks import HOSTILE_ENV, hooks_from_env

    honest = encode_message(reply())
    assert hooks_from_env({}).tamper(honest, 1) == honest  # unset: inert
    hostile = hooks_from_env({HOSTILE_ENV: "nan@1,shape@2,examples=9"})
    reasons = [screen_reply(sent(), decode_message(hostile.tamper(honest, rnd))[0], 5)
               for rnd in (1, 2, 3)]
    assert reasons[0] is not None and "non-finite values (nan)" in reasons[0]
    assert reasons[1] is not None and "shape [1, 3], not [2, 3]" in reasons[1]
    assert reasons[2] == "num-examples 9 above the 5 the node declared"  # arrays untouched
