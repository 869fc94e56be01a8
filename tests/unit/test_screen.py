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
from raftfl.core.specs import DEFAULT_MAX_EXAMPLES
from raftfl.flower.codec import decode_message, encode_message
from raftfl.flower.fleet import Lost
from raftfl.flower.grid import UPDATE_REJECTED, RaftGrid
from raftfl.flower.screen import ScreenPolicy, aggregate_fault, outliers, screen_reply
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


def query(value: float, dtype: Any = np.float32) -> Message:
    return answer(records(stats={"mean": np.array([value], dtype)}), "query")


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
    ("undeclared: any count up to the cap passes",
     lambda: reply(examples=DEFAULT_MAX_EXAMPLES), {}, None),
    # -- dtype: the instruction's, or one that converts to it safely, for an array of the same
    # name (FedOpt sends float64 from round 2 and a PyTorch ClientApp answers float32; FedAvg
    # averages an int64 counter into float64, the ClientApp keeps int64)
    ("float64 reply to a float32 model", lambda: reply(model(b=np.ones(3))), {},
     "array arrays.b has dtype float64, not float32"),
    ("1e300 in float64 (inf once averaged into float32)",
     lambda: reply(model(b=np.array([1e300, 1.0, 1.0]))), {}, "has dtype float64, not float32"),
    ("float32 reply to a float64 array",
     lambda: reply(model(steps=np.array(8.0, np.float32))), {},
     None),
    ("float16 reply to a float32 model", lambda: reply(model(b=np.ones(3, np.float16))), {},
     None),
    ("int32 reply to an int64 array", lambda: reply(model(ids=np.arange(3, dtype=np.int32))),
     {}, None),
    ("uint8 counter answering a float64 one",
     lambda: reply(model(steps=np.array(8, np.uint8))), {}, None),
    ("bool answering a float32 array", lambda: reply(model(b=np.ones(3, bool))), {}, None),
    ("int64 answering a float32 array (it may not fit)",
     lambda: reply(model(b=np.ones(3, np.int64))), {}, "array arrays.b has dtype int64, not float32"),
    ("query: float64 where float32 was sent", lambda: query(1.0, np.float64),
     {"kind": "query", "sent": lambda: dict(records(stats={"mean": np.zeros(1, np.float32)})
                                            .array_records.items())},
     "array stats.mean has dtype float64, not float32"),
    # -- num-examples: a whole number in [1, the cluster's cap] everywhere
    ("zero num-examples", lambda: reply(examples=0), {}, "num-examples 0 is not a count"),
    ("fractional num-examples", lambda: reply(examples=2.5), {}, "num-examples 2.5 is not a count"),
    ("num-examples 10**18", lambda: reply(examples=10**18), {},
     f"num-examples {10**18} above the cluster's cap {DEFAULT_MAX_EXAMPLES}"),
    ("num-examples one above the default cap", lambda: reply(examples=DEFAULT_MAX_EXAMPLES + 1),
     {}, f"above the cluster's cap {DEFAULT_MAX_EXAMPLES}"),
    ("num-examples 1e308 as a float", lambda: reply(examples=1e308), {},
     "num-examples 1e+308 above the cluster's cap"),
    ("num-examples under a cluster's own cap", lambda: reply(examples=500),
     {"max_examples": 500}, None),
    ("num-examples over a cluster's own cap", lambda: reply(examples=501),
     {"max_examples": 500}, "num-examples 501 above the cluster's cap 500"),
    ("a declaration cannot raise the cluster's cap", lambda: reply(examples=501),
     {"max_examples": 500, "declared": 10**6}, "above the cluster's cap 500"),
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
     f"num-examples {10**18} above the cluster's cap {DEFAULT_MAX_EXAMPLES}"),
    ("evaluate: over a cluster's own cap", lambda: evaluation(examples=501),
     {"kind": "evaluate", "max_examples": 500}, "above the cluster's cap 500"),
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
                          kw.get("kind", "train"), kw.get("max_examples", DEFAULT_MAX_EXAMPLES))
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
    worse = hooks_from_env({HOSTILE_ENV: "f64=1e300@1,examples=1000000000000000000@2,"
                                         "eval-examples=0"})
    reasons = [screen_reply(sent(), decode_message(worse.tamper(honest, rnd))[0])
               for rnd in (1, 2)]
    assert reasons == ["array arrays.w has dtype float64, not float32",
                       f"num-examples {10**18} above the cluster's cap {DEFAULT_MAX_EXAMPLES}"]
    assert worse.tamper(honest, 3) == honest  # eval-examples leaves train replies alone
    honest_eval = encode_message(evaluation())
    assert screen_reply(sent(), decode_message(worse.tamper(honest_eval, 1))[0], None, None,
                        "evaluate") == "num-examples 0 is not a count"
    assert hostile.tamper(honest_eval, 1) == honest_eval  # train faults leave evaluate alone


# -- the outlier rule: a round's updates judged together ---------------------------------

OUTLIER_CASES: list[tuple[str, dict[str, float], float, dict[str, str]]] = [
    ("honest spread", {"a": 1.0, "b": 2.0, "c": 3.0, "d": 9.0}, 10, {}),
    ("one far above", {"a": 1.0, "b": 1.2, "c": 0.9, "d": 1e6}, 10,
     {"d": "update norm 1e+06 above 10 x the round's median 1.1"}),
    ("just above", {"a": 1.0, "b": 1.0, "c": 10.01}, 10, {"c": "above 10 x"}),
    ("exactly at the bar", {"a": 1.0, "b": 1.0, "c": 10.0}, 10, {}),
    ("inf", {"a": 1.0, "b": 1.0, "c": float("inf")}, 10, {"c": "update norm inf"}),
    ("NaN is never under the bar", {"a": 1.0, "b": 1.0, "c": 1.0, "d": float("nan")}, 10,
     {"d": "update norm nan"}),
    ("two updates: no median to judge by", {"a": 1.0, "b": 1e9}, 10, {}),
    ("off", {"a": 1.0, "b": 1.0, "c": 1e9}, 0, {}),
    ("a minority cannot raise the median", {"a": 1.0, "b": 1.0, "c": 1.0, "d": 1e9,
                                            "e": 1e9}, 10, {"d": "above", "e": "above"}),
    ("median 0: nothing to compare with", {"a": 0.0, "b": 0.0, "c": 5.0}, 10, {}),
    ("a tighter factor", {"a": 1.0, "b": 1.0, "c": 2.5}, 2, {"c": "above 2 x"}),
]


@pytest.mark.parametrize("case", OUTLIER_CASES, ids=[c[0] for c in OUTLIER_CASES])
def test_outliers(case: tuple[str, dict[str, float], float, dict[str, str]]) -> None:
    _, norms, factor, expected = case
    refused = outliers(norms, factor)
    assert set(refused) == set(expected), refused
    for who, words in expected.items():
        assert words in refused[who], refused[who]
        assert reject_reason(refused[who]) == "norm"


def _arrays(**values: Any) -> ArrayRecord:
    return ArrayRecord({k: Array(np.asarray(v)) for k, v in values.items()})


AGGREGATE_CASES: list[tuple[str, ArrayRecord, str | None]] = [
    ("finite float32", _arrays(w=np.ones(3, np.float32), n=np.array(4, np.int64)), None),
    ("NaN", _arrays(w=np.array([1, np.nan, 1], np.float32)),
     "array w of the aggregate has non-finite values"),
    ("inf in float64", _arrays(w=np.array([1, 1, np.inf])), "non-finite"),
    ("float64 within float32's range", _arrays(w=np.array([3e38, 1, 1])), None),
    ("float64 beyond float32's range", _arrays(w=np.array([1e300, 1, 1])),
     "array w of the aggregate overflows float32"),
    ("an int counter averaged into float64", _arrays(w=np.ones(3, np.float32),
                                                     n=np.array(4.5)), None),
    ("an array the model did not have", _arrays(extra=np.array([1e300])), None),
]


@pytest.mark.parametrize("case", AGGREGATE_CASES, ids=[c[0] for c in AGGREGATE_CASES])
def test_aggregate_fault(case: tuple[str, ArrayRecord, str | None]) -> None:
    _, aggregate, expected = case
    sent_model = _arrays(w=np.zeros(3, np.float32), n=np.array(3, np.int64))
    fault = aggregate_fault(sent_model, aggregate)
    if expected is None:
        assert fault is None
    else:
        assert fault is not None and expected in fault, fault


def test_grid_refuses_a_train_update_far_above_the_rounds_median() -> None:
    """Four workers: three honest updates of similar norms, one 1000 times larger. Alone it
    passes the screen; judged with its round, it is refused. With the rule off, or with only
    two replies, or pulled one by one, nothing is refused."""
    scale = {7: 1.0, 8: 1.5, 9: 0.8, 10: 1000.0}

    def answer(node_id: int, message: Message) -> Message:
        got = {k: v.numpy() for k, v in message.content["arrays"].items()}
        got["w"] = got["w"] + np.float32(scale[node_id])
        content = RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in got.items()}),
                              "metrics": MetricRecord({"num-examples": 50})})
        return Message(content, reply_to=message)

    def exchange(nodes: list[int], factor: float, pull: bool = False) -> dict[int, Message]:
        grid = RaftGrid(FakeFleet(answer), run_id=1, term=3, hooks=None,  # type: ignore[arg-type]
                        screen=ScreenPolicy(outlier_factor=factor))
        messages = [grid.create_message(RecordDict({"arrays": sent()["arrays"]}), "train",
                                        node, "1") for node in nodes]
        if pull:
            replies = list(grid.pull_messages(grid.push_messages(messages)))
        else:
            replies = list(grid.send_and_receive(messages, timeout=5))
        return {m.metadata.src_node_id: m for m in replies}

    by = exchange([7, 8, 9, 10], 10)
    assert [n for n, m in by.items() if m.has_error()] == [10]
    assert by[10].error.code == UPDATE_REJECTED
    assert by[10].error.reason.startswith("update rejected: update norm 2449 above 10 x the "
                                          "round's median 3.062"), by[10].error.reason
    assert not any(m.has_error() for m in exchange([7, 8, 9, 10], 0).values())  # off
    assert not any(m.has_error() for m in exchange([7, 10], 10).values())  # too few to judge
    assert not any(m.has_error() for m in exchange([7, 8, 9, 10], 10, pull=True).values())


# -- the round loop: an aggregate that is not finite in the model's dtype is never committed


class _Hooks:
    """RoundHooks that record what the loop reports."""

    def __init__(self) -> None:
        self.trains: list[Any] = []
        self.commits: dict[int, ArrayRecord] = {}

    def round_started(self, server_round: int) -> bool:
        return True

    def train_done(self, server_round: int, report: Any) -> None:
        self.trains.append(report)

    def commit(self, server_round: int, arrays: ArrayRecord, report: Any,
               state: bytes = b"") -> bool:
        self.commits[server_round] = arrays
        return True


def _fed_sum(scale: float = 1.0) -> Any:
    """A strategy that sums the updates (as federated analytics may) and counts its
    aggregations: its state must be rewound before it aggregates again."""
    from flwr.serverapp.strategy import FedAvg

    class FedSum(FedAvg):
        def __init__(self) -> None:
            super().__init__(fraction_evaluate=0.0, min_available_nodes=1, min_train_nodes=1)
            self.aggregations = 0

        def aggregate_train(self, server_round: int, replies: Any) -> Any:
            self.aggregations += 1
            replies = [m for m in replies if not m.has_error()]
            with np.errstate(over="ignore"):  # the overflow is the point
                total = sum(m.content["arrays"]["w"].numpy() for m in replies) * np.float32(scale)
            return ArrayRecord({"w": Array(np.asarray(total))}), None

    return FedSum()


def _round_loop(values: dict[int, float], strategy: Any) -> tuple[_Hooks, Any]:
    from raftfl.flower.start import _RoundLoop

    def answer(node_id: int, message: Message) -> Message:
        w = np.full((2, 3), values[node_id], np.float32)
        return Message(RecordDict({"arrays": ArrayRecord({"w": Array(w)}),
                                   "metrics": MetricRecord({"num-examples": 10})}),
                       reply_to=message)

    class Fleet(FakeFleet):
        def node_ids(self) -> list[int]:
            return list(values)

    hooks = _Hooks()
    grid = RaftGrid(Fleet(answer), run_id=1, term=3, hooks=hooks,  # type: ignore[arg-type]
                    screen=ScreenPolicy(outlier_factor=0))  # the screen's backstop alone
    loop = _RoundLoop(strategy, grid, 5, ConfigRecord(), ConfigRecord(), None)
    return hooks, loop


def test_a_non_finite_aggregate_is_re_aggregated_without_the_largest_update(
        caplog: pytest.LogCaptureFixture) -> None:
    """Each reply is finite float32 (the screen passes it); their sum is not. Leaving out
    the largest update (node 10) makes it finite: only that one is refused."""
    strategy = _fed_sum()
    hooks, loop = _round_loop({7: 1.0, 8: 2.0, 9: 2e38, 10: 2.5e38}, strategy)
    initial = ArrayRecord({"w": Array(np.zeros((2, 3), np.float32))})
    with caplog.at_level("WARNING"):
        loop.run(initial, 1)
    committed = hooks.commits[1]["w"].numpy()
    assert np.isfinite(committed).all() and committed.dtype == np.float32
    assert committed[0, 0] == np.float32(2e38) + np.float32(3.0)
    (report,) = hooks.trains
    assert (report.sent, report.results, report.failures) == (4, 3, 1)
    (error,) = report.errors
    assert error["node_id"] == 10 and error["code"] == UPDATE_REJECTED
    assert error["reason"].startswith("update rejected: the aggregate is non-finite with this "
                                      "update (norm 6.124e+38): array w of the aggregate")
    assert reject_reason(error["reason"]) == "non_finite"
    assert strategy.aggregations == 1  # rewound before the second aggregation
    lines = [r.getMessage() for r in caplog.records if "re-aggregated" in r.getMessage()]
    assert lines == ["round 1: array w of the aggregate has non-finite values; "
                     "re-aggregated without node(s) 10"]


def test_an_aggregate_never_finite_costs_the_attempts_and_commits_nothing(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from raftfl.flower import start

    monkeypatch.setattr(start, "RETRY_WAIT_S", 0.0)
    strategy = _fed_sum(scale=3e38)  # the strategy itself overflows, whatever is left out
    hooks, loop = _round_loop({7: 1.0, 8: 2.0, 9: 3.0}, strategy)
    with pytest.raises(start.NoTrainResults):
        loop.run(ArrayRecord({"w": Array(np.zeros((2, 3), np.float32))}), 1)
    assert sorted(hooks.commits) == [0]  # round 1 never committed
    assert [(r.attempt, r.results, r.failures) for r in hooks.trains] == \
        [(n, 0, 3) for n in range(1, start.TRAIN_ATTEMPTS + 1)]
    assert all(e["code"] == UPDATE_REJECTED for r in hooks.trains for e in r.errors)
    assert strategy.aggregations == 0  # each failed attempt rewound: its state untouched


# -- the cluster's bounds: fixed in the cluster config by its creator ---------------------


def test_the_creators_flags_fix_the_bounds_in_the_cluster_config() -> None:
    import click

    from raftfl.cli.node_options import _screen_bounds
    from raftfl.core.errors import RaftflError
    from raftfl.core.specs import DEFAULT_OUTLIER_FACTOR, ClusterConfig

    default = ClusterConfig(rounds=1, nodes=["a:1"], **_screen_bounds(None, None))
    assert (default.max_examples, default.outlier_factor) == (DEFAULT_MAX_EXAMPLES,
                                                              DEFAULT_OUTLIER_FACTOR)
    chosen = ClusterConfig(rounds=1, nodes=["a:1"], **_screen_bounds(500, 0.0))
    stored = ClusterConfig.from_json(chosen.to_json())
    assert (stored.max_examples, stored.outlier_factor) == (500, 0.0)
    old = json.loads(chosen.to_json())
    del old["max_examples"], old["outlier_factor"]  # written before the fields existed
    assert ClusterConfig.from_json(json.dumps(old)).max_examples == DEFAULT_MAX_EXAMPLES
    with pytest.raises(click.BadParameter, match="would refuse the median update itself"):
        _screen_bounds(None, 0.5)
    for bad in ({"max_examples": 0}, {"max_examples": 10**13}, {"outlier_factor": 1.0},
                {"outlier_factor": float("inf")}, {"outlier_factor": -1.0}):
        with pytest.raises(RaftflError, match="invalid run configuration"):
            ClusterConfig(rounds=1, nodes=["a:1"], **bad)
