"""screen_reply: a worker's reply against the instruction it answers (table-driven: train
replies against the model the round sent, evaluate and query replies, SecAgg+ stages, legacy
fitins/fitres messages, XGBoost bagging), and RaftGrid turning a refused reply into an error
reply from that worker."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, Metadata, MetricRecord, RecordDict

from raftfl.core.events import FitResults, decode
from raftfl.flower.codec import decode_message, encode_message
from raftfl.flower.fleet import Lost
from raftfl.flower.grid import UPDATE_REJECTED, RaftGrid
from raftfl.flower.screen import MAX_NUM_EXAMPLES, ScreenPolicy, screen_reply
from raftfl.ops.runstats import reject_reason

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


def records(**named: Any) -> RecordDict:
    """A RecordDict: {name: dict of arrays (an ArrayRecord) or a finished record}."""
    return RecordDict({name: ArrayRecord({k: Array(np.asarray(v)) for k, v in value.items()})
                       if isinstance(value, dict) else value for name, value in named.items()})


def answer(content: RecordDict, kind: str = "train") -> Message:
    md = Metadata(run_id=1, message_id="r", src_node_id=7, dst_node_id=1,
                  reply_to_message_id="m", group_id="1", created_at=0.0, ttl=60.0,
                  message_type=kind)
    return Message(metadata=md, content=content)


def reply(arrays: dict[str, Any] | None = None, examples: Any = 100, name: str = "arrays",
          metrics: dict[str, Any] | None = None) -> Message:
    return answer(records(**{name: arrays or model(),
                             "metrics": MetricRecord(metrics or {"train_loss": 0.5,
                                                                 "num-examples": examples})}))


def evaluation(examples: Any = 100, loss: float = 0.5, **arrays: Any) -> Message:
    """An evaluate reply as Flower's quickstart sends it (metrics only), or with `arrays`."""
    named: dict[str, Any] = {"metrics": MetricRecord({"eval_loss": loss, "num-examples": examples})}
    if arrays:
        named["arrays"] = arrays
    return answer(records(**named), "evaluate")


def sent() -> dict[str, ArrayRecord]:
    return {"arrays": ArrayRecord({k: Array(v) for k, v in SENT.items()})}


# Flower's compat layer (legacy strategies, SecAggPlusWorkflow): the model travels in a
# "fitins.parameters" ArrayRecord keyed "0", "1", ... and comes back in "fitres.parameters".
LEGACY = {"0": SENT["w"], "1": SENT["b"]}


def legacy_sent() -> dict[str, ArrayRecord]:
    return dict(records(**{"fitins.parameters": LEGACY}).array_records.items())


def fitres(examples: int = 100, **change: Any) -> Message:
    return answer(records(**{"fitres.parameters": {**LEGACY, **change},
                             "fitres.num_examples": MetricRecord({"num_examples": examples}),
                             "fitres.metrics": ConfigRecord({"loss": 0.5})}))


def secaggplus_masked_vectors() -> Message:
    """SecAgg+ stage 2 answers the fitins with its masked model in a ConfigRecord only."""
    return answer(records(secaggplus_configs=ConfigRecord({"stage": "collect_masked_vectors",
                                                          "masked_parameters": [b"\x01" * 32]})))


def non_model_arrays(value: float = 1.0) -> Message:
    """Arrays that are not the model (a masked vector, a sketch) to an instruction of none."""
    return answer(records(masked={"vector": np.array([3, 1, 4], np.int64),
                                  "scale": np.array([value])},
                          secaggplus_configs=ConfigRecord({"stage": "unmask"})))


def booster(size: int) -> np.ndarray:
    """XGBoost bagging's model: the booster's bytes, a 1-D uint8 array that grows each round."""
    return np.frombuffer(bytes(range(256)) * (size // 256) + bytes(size % 256), np.uint8)


def bagging_sent(size: int = 0) -> dict[str, ArrayRecord]:
    return dict(records(arrays={"0": booster(size)}).array_records.items())


def bagging(value: np.ndarray) -> Message:
    return answer(records(arrays={"0": value}, metrics=MetricRecord({"num-examples": 80})))


def query(value: float) -> Message:
    return answer(records(stats={"mean": np.array([value], np.float32)}), "query")


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


def huge_header_in_place_of_b() -> Message:
    """A few bytes whose .npy header claims 4 TB: refused before numpy allocates anything."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False,
                                                  "shape": (10**12,)})
    msg = reply()
    msg.content["arrays"]["b"] = Array(dtype="float32", shape=(3,), stype="numpy.ndarray",
                                       data=header.getvalue() + b"\0" * 12)
    return msg


CASES: list[tuple[str, Callable[[], Message], dict[str, Any], str | None]] = [
    ("a header claiming 4 TB", huge_header_in_place_of_b, {}, "header does not describe its data"),
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
    ("garbage bytes as an array", garbage_in_place_of_b, {}, "array arrays.b is not one numpy"),
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
    ("undeclared: any count up to the cap passes", lambda: reply(examples=MAX_NUM_EXAMPLES), {},
     None),
    # -- dtype: a reply array casts safely to the instruction's array of the same name
    ("float64 reply to a float32 model", lambda: reply(model(b=np.ones(3))), {},
     "array arrays.b has dtype float64, not float32"),
    ("1e300 in float64 (inf once averaged into float32)",
     lambda: reply(model(b=np.array([1e300, 1.0, 1.0]))), {}, "has dtype float64, not float32"),
    ("float32 reply to a float64 array (no overflow)",
     lambda: reply(model(steps=np.array(8.0, np.float32))), {}, None),
    # -- num-examples: a whole number in [1, MAX_NUM_EXAMPLES] everywhere
    ("zero num-examples", lambda: reply(examples=0), {}, "num-examples 0 is not a count"),
    ("fractional num-examples", lambda: reply(examples=2.5), {}, "num-examples 2.5 is not a count"),
    ("num-examples 10**18", lambda: reply(examples=10**18), {},
     f"num-examples {10**18} above the bound {MAX_NUM_EXAMPLES}"),
    ("num-examples 10**18 where declared", lambda: reply(examples=10**18), {"declared": 100},
     f"num-examples {10**18} above the 100 the node declared"),
    # -- evaluate replies: finiteness and num-examples, never the model's structure
    ("evaluate: honest", lambda: evaluation(), {"kind": "evaluate"}, None),
    ("evaluate: more examples than declared for training",
     lambda: evaluation(examples=500), {"kind": "evaluate", "declared": 100}, None),
    ("evaluate: zero num-examples", lambda: evaluation(examples=0), {"kind": "evaluate"},
     "num-examples 0 is not a count"),
    ("evaluate: negative num-examples", lambda: evaluation(examples=-1), {"kind": "evaluate"},
     "num-examples -1 is not a count"),
    ("evaluate: num-examples 10**18", lambda: evaluation(examples=10**18), {"kind": "evaluate"},
     "above the bound"),
    ("evaluate: fractional num-examples", lambda: evaluation(examples=0.5),
     {"kind": "evaluate"}, "num-examples 0.5 is not a count"),
    ("evaluate: NaN loss", lambda: evaluation(loss=float("nan")), {"kind": "evaluate"},
     "metric metrics.eval_loss is not finite"),
    ("evaluate: other arrays than the model", lambda: evaluation(extra=np.zeros(2)),
     {"kind": "evaluate"}, None),
    ("evaluate: NaN array", lambda: evaluation(w=nan_w()), {"kind": "evaluate"},
     "array arrays.w has non-finite values (nan)"),
    ("evaluate: float64 array named as a float32 one sent", lambda: evaluation(b=np.ones(3)),
     {"kind": "evaluate"}, "array arrays.b has dtype float64, not float32"),
    # -- any other message kind
    ("query: honest", lambda: query(1.0), {"kind": "query"}, None),
    ("query: inf", lambda: query(np.inf), {"kind": "query"},
     "array stats.mean has non-finite values (inf)"),
    # -- SecAgg+ (SecAggPlusWorkflow with secaggplus_mod): no stage answers with the model
    ("SecAgg+: masked vectors in a ConfigRecord, to the fitins",
     secaggplus_masked_vectors, {"sent": legacy_sent}, None),
    ("SecAgg+: a setup stage, no arrays either way", secaggplus_masked_vectors,
     {"sent": dict}, None),
    ("SecAgg+-style non-model arrays", lambda: non_model_arrays(), {"sent": dict}, None),
    ("non-model arrays: NaN", lambda: non_model_arrays(np.nan), {"sent": dict},
     "array masked.scale has non-finite values (nan)"),
    # -- legacy fitins/fitres messages (Flower's compat layer)
    ("legacy fitres", lambda: fitres(), {"sent": legacy_sent}, None),
    ("legacy fitres: wrong shape", lambda: fitres(**{"1": np.ones(4, np.float32)}),
     {"sent": legacy_sent}, "array fitres.parameters.1 has shape [4], not [3]"),
    ("legacy fitres: missing array", lambda: answer(records(**{"fitres.parameters": {"0": SENT["w"]}})),
     {"sent": legacy_sent}, "array ['1'] missing from 'fitres.parameters'"),
    ("legacy fitres: zero num_examples", lambda: fitres(examples=0), {"sent": legacy_sent},
     "num-examples 0 is not a count"),
    # -- XGBoost bagging: the model is a 1-D uint8 booster that grows each round
    ("bagging: the first booster", lambda: bagging(booster(300)), {"sent": bagging_sent}, None),
    ("bagging: a grown booster", lambda: bagging(booster(900)),
     {"sent": lambda: bagging_sent(300)}, None),
    ("bagging: a booster as 2-D", lambda: bagging(booster(300).reshape(3, 100)),
     {"sent": bagging_sent}, "array arrays.0 has shape [3, 100], not [0]"),
    ("bagging: a booster as float", lambda: bagging(np.ones(300, np.float32)),
     {"sent": bagging_sent}, "array arrays.0 has shape [300], not [0]"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_screen_reply(case: tuple[str, Callable[[], Message], dict[str, Any], str | None]) -> None:
    _, make, kw, expected = case
    reason = screen_reply(kw.get("sent", sent)(), make(), kw.get("declared"), kw.get("max_norm"),
                          kw.get("kind", "train"))
    if expected is None:
        assert reason is None
    else:
        assert reason is not None and expected in reason, reason
        assert reject_reason(reason) != "other", reason  # each refusal is counted by its class


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
    assert not by[("evaluate", 7)].has_error()
    refused = by[("evaluate", 8)]  # every reply is screened, an evaluate reply too
    assert refused.has_error() and refused.error.code == UPDATE_REJECTED
    assert "array arrays.w has non-finite" in refused.error.reason


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
