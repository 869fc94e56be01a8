"""durable.py: a ServerApp's state (every Flower strategy's, context.state, the global RNGs)
survives capture and restore into a freshly built strategy, and a bad blob is one error.

The strategy table drives real flwr strategies through rounds 1-2, captures, restores into a
fresh instance, and requires round 3 on the restored one to equal round 3 on the original."""

from __future__ import annotations

import io
import json
import random
import socket
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, Metadata, MetricRecord, RecordDict
from flwr.serverapp import (
    Grid,
    NeighboringRelation,
    PrivacyConfig,
    PrivacySpent,
    SamplingMethod,
)
from flwr.serverapp import (
    strategy as flwr_strategies,
)
from flwr.serverapp.strategy import (
    Bulyan,
    DifferentialPrivacyClientSideAdaptiveClipping,
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    FedXgbBagging,
    FedXgbCyclic,
    FedYogi,
    Krum,
    MultiKrum,
    QFedAvg,
)

from raftfl.flower import durable
from raftfl.flower.codec import arrays_from_bytes, arrays_to_bytes
from raftfl.flower.durable import Captured, DurableStateError, capture, restore
from raftfl.flower.identity import adopt_server_identity

NODES = list(range(2, 8))  # six connected nodes; most strategies sample half of them


class Nodes(Grid):
    """The one Grid call a strategy's configure_train makes: which nodes are connected."""

    def get_node_ids(self) -> Iterable[int]:
        return list(NODES)

    def set_run(self, run: Any) -> None:
        raise AssertionError("not used by configure_train")

    @property
    def run(self) -> Any:
        raise AssertionError("not used by configure_train")

    def create_message(self, *args: Any, **kwargs: Any) -> Message:
        raise AssertionError("not used by configure_train")

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        raise AssertionError("not used by configure_train")

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        raise AssertionError("not used by configure_train")

    def send_and_receive(self, *args: Any, **kwargs: Any) -> Iterable[Message]:
        raise AssertionError("not used by configure_train")


class CountingAccountant:
    """A user's own privacy accountant (Flower's RdpAccountant needs the optional
    dp-accounting package): naive composition, state through state_dict/load_state_dict."""

    def __init__(self) -> None:
        self.config = PrivacyConfig(target_delta=1e-5, population_size=len(NODES),
                                    neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
                                    sampling_method=SamplingMethod.NO_AMPLIFICATION)
        self.releases: list[list[float]] = []

    @property
    def num_releases(self) -> int:
        return len(self.releases)

    def compose(self, event: Any, count: int = 1) -> None:
        self.releases.append([event.noise_multiplier, count])

    def get_privacy_spent(self, delta: float | None = None) -> PrivacySpent:
        epsilon = sum(count / sigma for sigma, count in self.releases)
        return PrivacySpent(epsilon=epsilon, delta=self.config.target_delta,
                            num_releases=self.num_releases, accounting_method="naive")

    def would_exceed(self, event: Any, max_epsilon: float | None = None, count: int = 1) -> bool:
        return False

    def state_dict(self) -> dict[str, object]:
        return {"releases": [list(r) for r in self.releases]}

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.releases = [list(r) for r in state["releases"]]  # type: ignore[attr-defined]


# ---------------------------------------------------------------- replies as a ClientApp sends them

MODEL = {"w": np.arange(6, dtype=np.float32).reshape(2, 3) / 10, "b": np.ones(3, np.float32)}


def copy(arrays: ArrayRecord) -> ArrayRecord:
    return ArrayRecord({k: Array(a.dtype, tuple(a.shape), a.stype, a.data) for k, a in arrays.items()})


def booster(node: int, rnd: int) -> np.ndarray:
    """An XGBoost model's JSON as XGBoost bagging sends it: one uint8 Array of its bytes."""
    tree = {"id": 0, "node": node, "round": rnd}
    model = {"learner": {"gradient_booster": {"model": {
        "gbtree_model_param": {"num_trees": "1", "num_parallel_tree": "1"},
        "iteration_indptr": [0, 1], "trees": [tree], "tree_info": [0]}}}}
    return np.frombuffer(json.dumps(model).encode(), np.uint8)


def answer(instruction: Message, content: RecordDict) -> Message:
    md = Metadata(run_id=1, message_id=f"r{instruction.metadata.dst_node_id}",
                  src_node_id=instruction.metadata.dst_node_id, dst_node_id=1,
                  reply_to_message_id="", group_id="", created_at=0.0, ttl=60.0,
                  message_type="train")
    return Message(metadata=md, content=content)


def train_reply(instruction: Message, rnd: int, xgb: bool) -> Message:
    node = instruction.metadata.dst_node_id
    sent = instruction.content.array_records["arrays"]
    if xgb:
        arrays = ArrayRecord({"0": Array(booster(node, rnd))})
    else:
        noise = np.random.default_rng([node, rnd])  # the node's own training, reproducible
        arrays = ArrayRecord({k: Array((a.numpy() + noise.normal(0, 0.5, a.shape)).astype(np.float32))
                              for k, a in sent.items()})
    metrics = MetricRecord({"num-examples": 50, "train_loss": 0.1 * node + rnd,
                            "norm_bit": node % 2})
    return answer(instruction, RecordDict({"arrays": arrays, "metrics": metrics}))


@dataclass(frozen=True)
class Round:
    """What a round shows: who was asked with which config, and what came out."""
    nodes: tuple[int, ...]
    configs: tuple[str, ...]
    arrays: bytes | None
    metrics: str
    probe: str

    @classmethod
    def drive(cls, strategy: Any, rnd: int, arrays: ArrayRecord, xgb: bool) -> Round:
        sent = list(strategy.configure_train(rnd, copy(arrays), ConfigRecord({"lr": 0.1}), Nodes()))
        replies = [train_reply(m, rnd, xgb) for m in sent]
        out, metrics = strategy.aggregate_train(rnd, replies)
        spent = getattr(strategy, "privacy_spent", lambda: None)()
        return cls(nodes=tuple(m.metadata.dst_node_id for m in sent),
                   configs=tuple(repr(dict(m.content.config_records["config"])) for m in sent),
                   arrays=None if out is None else arrays_to_bytes(out),
                   metrics=repr(None if metrics is None else dict(metrics)), probe=repr(spent))


def sampled(cls: type, **kw: Any) -> Callable[[], Any]:
    return lambda: cls(fraction_train=0.5, min_train_nodes=2, min_available_nodes=2, **kw)


# name -> (build a fresh instance, xgboost replies, stateful across rounds)
# Stateless across rounds (round 3 depends only on the arrays it is given and the global RNGs,
# which durable.py restores for every strategy): FedAvg, FedProx, FedTrimmedAvg, FedMedian,
# Krum, MultiKrum, Bulyan, QFedAvg and FedXgbBagging (they keep only the arrays sent this
# round, set again by configure_train), the fixed-clipping DP wrappers (noise from the global
# RNG) unless they hold an accountant.
CASES: dict[str, tuple[Callable[[], Any], bool, bool]] = {
    "FedAvg": (sampled(FedAvg), False, False),
    "FedAvgM": (sampled(FedAvgM, server_momentum=0.9), False, True),
    "FedAdam": (sampled(FedAdam), False, True),
    "FedYogi": (sampled(FedYogi), False, True),
    "FedAdagrad": (sampled(FedAdagrad), False, True),
    "FedProx": (sampled(FedProx, proximal_mu=0.1), False, False),
    "FedTrimmedAvg": (sampled(FedTrimmedAvg, beta=0.2), False, False),
    "FedMedian": (sampled(FedMedian), False, False),
    "Krum": (sampled(Krum, num_malicious_nodes=0), False, False),
    "MultiKrum": (sampled(MultiKrum, num_malicious_nodes=0, num_nodes_to_select=2), False, False),
    "Bulyan": (sampled(Bulyan, num_malicious_nodes=0), False, False),
    "QFedAvg": (sampled(QFedAvg, client_learning_rate=0.1), False, False),
    "FedXgbBagging": (sampled(FedXgbBagging), True, False),
    # which node trains in round r is fixed by the order nodes were first registered
    "FedXgbCyclic": (lambda: FedXgbCyclic(min_available_nodes=2), True, True),
    "DifferentialPrivacyClientSideFixedClipping": (  # its accountant counts releases
        lambda: DifferentialPrivacyClientSideFixedClipping(
            sampled(FedAvg)(), noise_multiplier=0.5, clipping_norm=1.0, num_sampled_clients=3,
            accountant=CountingAccountant()), False, True),
    "DifferentialPrivacyServerSideFixedClipping": (
        lambda: DifferentialPrivacyServerSideFixedClipping(
            sampled(FedAdam)(), noise_multiplier=0.5, clipping_norm=1.0, num_sampled_clients=3),
        False, True),  # FedAdam inside
    "DifferentialPrivacyClientSideAdaptiveClipping": (  # the clipping norm adapts
        lambda: DifferentialPrivacyClientSideAdaptiveClipping(
            sampled(FedAvg)(), noise_multiplier=0.5, num_sampled_clients=3,
            clipped_count_stddev=1.0), False, True),
    "DifferentialPrivacyServerSideAdaptiveClipping": (
        lambda: DifferentialPrivacyServerSideAdaptiveClipping(
            sampled(FedAdam)(), noise_multiplier=0.5, num_sampled_clients=3,
            clipped_count_stddev=1.0), False, True),
}


def test_the_table_covers_every_strategy_flower_exports() -> None:
    exported = {name for name in flwr_strategies.__all__
                if isinstance(getattr(flwr_strategies, name), type)
                and issubclass(getattr(flwr_strategies, name), flwr_strategies.Strategy)
                and name != "Strategy"}
    assert exported == set(CASES)


@pytest.fixture
def seeded() -> Iterable[None]:
    """Seed the process-global RNGs (Flower samples nodes with `random`, DP noise is numpy's)
    and put them back afterwards: restore() sets them, other tests may rely on them."""
    adopt_server_identity(1)  # strategies build their instruction Messages themselves
    saved = random.getstate(), np.random.get_state()
    random.seed(1)
    np.random.seed(1)
    yield
    random.setstate(saved[0])
    np.random.set_state(saved[1])


@pytest.mark.parametrize("name", sorted(CASES))
def test_round_3_after_restore_equals_round_3_without_failover(name: str, seeded: None) -> None:
    build, xgb, stateful = CASES[name]
    arrays = ArrayRecord({"0": Array(np.zeros(0, np.uint8))}) if xgb else ArrayRecord(
        {k: Array(v) for k, v in MODEL.items()})
    original = build()
    for rnd in (1, 2):
        result = Round.drive(original, rnd, arrays, xgb).arrays
        arrays = arrays if result is None else arrays_from_bytes(result)
    captured = capture(original, RecordDict())
    assert captured.lost == ()
    rngs = random.getstate(), np.random.get_state()
    expected = Round.drive(original, 3, arrays, xgb)

    restored = build()
    restore(captured.blob, restored, RecordDict())
    assert Round.drive(restored, 3, arrays, xgb) == expected

    random.setstate(rngs[0])  # the same global RNGs, only the strategy's own state missing
    np.random.set_state(rngs[1])
    afresh = Round.drive(build(), 3, arrays, xgb)
    assert (afresh != expected) == stateful


# ---------------------------------------------------------------- values, RNGs, context.state

class Holder(FedAvg):
    """A user's strategy keeping state of every kind durable.py captures."""


class Ledger:
    """A user's own object with state_dict/load_state_dict (an accountant, say)."""

    def __init__(self, spent: float = 0.0) -> None:
        self.spent = spent

    def state_dict(self) -> dict[str, Any]:
        return {"spent": self.spent}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not isinstance(state.get("spent"), float):
            raise ValueError("spent is not a float")
        self.spent = state["spent"]


VALUES: dict[str, Any] = {
    "none": None, "true": True, "zero": 0, "big": -(2**200), "half": 0.5, "neg_zero": -0.0,
    "inf": float("inf"), "ninf": float("-inf"), "text": "héllo\n", "raw": b"\x00\xff",
    "f16": np.arange(6, dtype=np.float16).reshape(2, 3), "c128": np.array([1 + 2j]),
    "i8": np.array([-1, 2], np.int8), "bools": np.array([True, False]),
    "unicode": np.array(["ab", "ç"]), "when": np.array(["2026-12-05"], "datetime64[D]"),
    "zero_d": np.array(3.5), "empty": np.zeros((0, 4)),
    "fortran": np.asfortranarray(np.arange(6.0).reshape(2, 3)), "strided": np.arange(10)[::3],
    "np_float": np.float32(1.25), "np_int": np.int64(-7),
    "array": Array(dtype="bfloat16", shape=(2,), stype="custom", data=b"\x01\x02\x03\x04"),
    "arrays": ArrayRecord({"w": Array(np.ones((2, 2), np.float32))}),
    "config": ConfigRecord({"s": "x", "b": b"\x01", "l": [1, 2], "f": 0.5, "flag": True}),
    "metrics": MetricRecord({"loss": 0.25, "n": 3, "hist": [0.1, 0.2]}),
    "by_node": {3: 1, 11: 2}, "tuple_keys": {(1, "a"): [1, (2, 3)]}, "nested": [[], (), {}],
    "ordered": OrderedDict([("b", 1), ("a", 2)]), "m_t": {"w": np.ones(3), "b": np.zeros(1)},
}


def same(a: Any, b: Any) -> bool:
    """Equal values of equal types, arrays to the byte, nan equal to nan."""
    if type(a) is not type(b):
        return False
    if isinstance(a, np.ndarray | np.generic):
        return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    if isinstance(a, Array):
        return (a.dtype, a.shape, a.stype, a.data) == (b.dtype, b.shape, b.stype, b.data)
    if isinstance(a, float):
        return a.hex() == b.hex() or (a != a and b != b)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict | ArrayRecord | ConfigRecord | MetricRecord):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    return bool(a == b)


@pytest.mark.parametrize("name", sorted(VALUES))
def test_each_kind_of_value_comes_back_with_its_type(name: str, seeded: None) -> None:
    strategy = Holder()
    setattr(strategy, name, VALUES[name])
    captured = capture(strategy, None)
    assert captured.lost == ()
    fresh = Holder()
    restore(captured.blob, fresh, None)
    assert same(getattr(fresh, name), VALUES[name])
    assert capture(fresh, None).blob == captured.blob  # canonical


def test_nan_survives(seeded: None) -> None:
    strategy = Holder()
    strategy.norms = [float("nan"), np.array([np.nan, 1.0])]
    fresh = Holder()
    restore(capture(strategy, None).blob, fresh, None)
    assert np.isnan(fresh.norms[0]) and np.isnan(fresh.norms[1][0]) and fresh.norms[1][1] == 1.0


def test_torch_tensors_come_back_as_tensors(seeded: None) -> None:
    torch = pytest.importorskip("torch")
    strategy = Holder()
    strategy.net = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3)}
    fresh = Holder()
    restore(capture(strategy, None).blob, fresh, None)
    assert isinstance(fresh.net["w"], torch.Tensor) and torch.equal(fresh.net["w"], strategy.net["w"])


def draws(rng: Any) -> list[float]:
    return [rng.random() for _ in range(3)]


def test_rng_attributes_continue_where_they_were(seeded: None) -> None:
    strategy = Holder()
    strategy.rng = random.Random(5)
    strategy.gen = np.random.default_rng(5)
    strategy.legacy = np.random.RandomState(5)
    strategy.philox = np.random.Generator(np.random.Philox(5))
    draws(strategy.rng), draws(strategy.gen), draws(strategy.legacy)  # advanced
    captured = capture(strategy, None)
    expected = [draws(getattr(strategy, n)) for n in ("rng", "gen", "legacy", "philox")]
    fresh = Holder()
    fresh.gen = shared = np.random.default_rng(99)  # an existing Generator is set in place
    restore(captured.blob, fresh, None)
    assert fresh.gen is shared
    assert [draws(getattr(fresh, n)) for n in ("rng", "gen", "legacy", "philox")] == expected


def test_global_rngs_draw_the_same_after_restore(seeded: None) -> None:
    captured = capture(None, None)
    before = random.random(), random.sample(range(100), 5), np.random.normal(size=3).tolist()
    random.seed(123)
    np.random.seed(123)
    restore(captured.blob, None, None)
    after = random.random(), random.sample(range(100), 5), np.random.normal(size=3).tolist()
    assert after == before


def test_context_state_is_replaced_in_place(seeded: None) -> None:
    state = RecordDict({"best": ArrayRecord({"w": Array(np.arange(3.0))}),
                        "seen": ConfigRecord({"round": 2, "tag": "x", "blob": b"\x00"}),
                        "loss": MetricRecord({"loss": [0.5, 0.25]})})
    captured = capture(None, state)
    target = RecordDict({"stale": ConfigRecord({"a": 1})})
    restore(captured.blob, None, target)
    assert list(target) == ["best", "seen", "loss"]
    assert same(dict(target.array_records), dict(state.array_records))
    assert dict(target["seen"]) == {"round": 2, "tag": "x", "blob": b"\x00"}
    assert dict(target["loss"]) == {"loss": [0.5, 0.25]}


def test_the_host_restores_only_context_and_rngs_before_the_strategy_exists(seeded: None) -> None:
    strategy = FedAdam()
    strategy.m_t = {"w": np.ones(2)}
    captured = capture(strategy, RecordDict({"c": ConfigRecord({"k": 1})}))
    context = RecordDict()
    restore(captured.blob, None, context)  # no strategy: its part is not for this call
    assert dict(context["c"]) == {"k": 1}
    with pytest.raises(DurableStateError, match="no strategy.*FedAdam"):
        restore(capture(None, None).blob, FedAdam(), None)


def test_state_dict_objects_are_loaded_into_the_new_object(seeded: None) -> None:
    strategy = Holder()
    strategy.ledger = Ledger(2.5)
    captured = capture(strategy, None)
    fresh = Holder()
    fresh.ledger = ledger = Ledger()
    restore(captured.blob, fresh, None)
    assert fresh.ledger is ledger and ledger.spent == 2.5


def test_a_refused_load_state_dict_is_one_error(seeded: None) -> None:
    strategy = Holder()
    strategy.ledger = Ledger()
    strategy.ledger.spent = 1  # type: ignore[assignment]  # an int: the new Ledger refuses it
    fresh = Holder()
    fresh.ledger = Ledger()
    with pytest.raises(DurableStateError, match=r"strategy\.ledger\.load_state_dict refused"):
        restore(capture(strategy, None).blob, fresh, None)


def test_a_dp_wrapper_restores_into_its_inner_strategy(seeded: None) -> None:
    inner = FedAdam()
    inner.m_t = {"w": np.full(2, 0.5)}
    wrapper = DifferentialPrivacyServerSideAdaptiveClipping(inner, 0.5, 3, clipped_count_stddev=1.0)
    wrapper.clipping_norm = 0.42
    fresh_inner = FedAdam()
    fresh = DifferentialPrivacyServerSideAdaptiveClipping(fresh_inner, 0.5, 3, clipped_count_stddev=1.0)
    restore(capture(wrapper, None).blob, fresh, None)
    assert fresh.strategy is fresh_inner and same(fresh_inner.m_t, inner.m_t)
    assert fresh.clipping_norm == 0.42


# ---------------------------------------------------------------- what is skipped, what is lost

def test_code_is_skipped_and_other_objects_are_lost_exactly_once(seeded: None) -> None:
    strategy = FedAvg(train_metrics_aggr_fn=lambda replies, key: MetricRecord())
    strategy.evaluate_fn = strategy.summary  # a bound method
    strategy.kind, strategy.module = FedAvg, np  # a class, a module
    strategy.lock = threading.Lock()
    strategy.sock = sock = socket.socket()
    strategy.mixed = {"ok": 1, "bad": threading.Event()}  # half a dict is not captured
    strategy.me = strategy  # a cycle
    try:
        captured = capture(strategy, None)
    finally:
        sock.close()
    assert sorted(captured.lost) == sorted([
        "strategy.lock (lock)", "strategy.sock (socket)", "strategy.mixed['bad'] (Event)",
        "strategy.me (FedAvg: nested too deep or a cycle)"])
    fresh = FedAvg()
    fresh.lock = lock = threading.Lock()
    fresh.mixed = {"mine": True}
    own_fn = fresh.train_metrics_aggr_fn
    restore(captured.blob, fresh, None)
    assert fresh.lock is lock and fresh.mixed == {"mine": True}  # left untouched
    assert fresh.train_metrics_aggr_fn is own_fn and not hasattr(fresh, "kind")


class CallableLedger(Ledger):
    """Callable, as a torch Module is: still data, not code."""

    def __call__(self) -> None:
        pass


def test_a_state_dict_with_an_uncapturable_part_is_lost(seeded: None) -> None:
    strategy = Holder()
    strategy.ledger = CallableLedger()
    strategy.ledger.spent = threading.Lock()  # type: ignore[assignment]
    assert capture(strategy, None).lost == ("strategy.ledger.state_dict()['spent'] (lock)",)


def nested(depth: int) -> list[Any]:
    value: list[Any] = [1]
    for _ in range(depth - 1):
        value = [value]
    return value


def test_nesting_up_to_the_limit_is_captured_and_beyond_it_lost(seeded: None) -> None:
    strategy = Holder()
    strategy.deep = nested(durable.MAX_DEPTH)
    strategy.deeper = nested(durable.MAX_DEPTH + 1)
    captured = capture(strategy, None)
    assert len(captured.lost) == 1 and captured.lost[0].startswith("strategy.deeper[0]")
    fresh = Holder()
    restore(captured.blob, fresh, None)
    assert fresh.deep == strategy.deep and not hasattr(fresh, "deeper")


def test_a_blob_of_another_strategy_class_is_refused_naming_both(seeded: None) -> None:
    blob = capture(FedAvg(), None).blob
    with pytest.raises(DurableStateError, match=r"flwr\.serverapp\.strategy\.fedavg\.FedAvg.*"
                                                r"flwr\.serverapp\.strategy\.fedadam\.FedAdam"):
        restore(blob, FedAdam(), None)
    wrapped = capture(DifferentialPrivacyClientSideFixedClipping(FedAvg(), 0.5, 1.0, 3), None).blob
    fresh = DifferentialPrivacyClientSideFixedClipping(FedAdam(), 0.5, 1.0, 3)
    with pytest.raises(DurableStateError, match=r"strategy\.strategy .*FedAvg.*FedAdam"):
        restore(wrapped, fresh, None)


def test_capture_is_deterministic(seeded: None) -> None:
    strategy = DifferentialPrivacyServerSideFixedClipping(FedAdam(), 0.5, 1.0, 3)
    strategy.strategy.m_t = {"w": np.arange(4.0)}
    context = RecordDict({"c": ConfigRecord({"k": 1})})
    first: Captured = capture(strategy, context)
    assert capture(strategy, context) == first


# ---------------------------------------------------------------- hostile blobs

def valid() -> bytes:
    strategy = Holder()
    strategy.m_t = {"w": np.arange(4.0), "b": b"\x01\x02"}
    strategy.rng = random.Random(1)
    strategy.rec = ArrayRecord({"x": Array(np.ones(2))})
    return capture(strategy, RecordDict({"c": ConfigRecord({"k": 1})})).blob


def forged(**change: Any) -> bytes:
    """A well-formed codec Message whose description says what `change` says."""
    from raftfl.flower.codec import decode_message, encode_message

    message, extra = decode_message(valid())
    content = change.pop("content", None)
    if content is not None:
        message = Message(metadata=message.metadata, content=content)
    return encode_message(message, extra={**extra, **change})


def npy(shape: tuple[int, ...], data: bytes = b"", descr: str = "<f8") -> Array:
    """A .npy Array whose header says `descr` and `shape`, whatever `data` follows."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": descr, "fortran_order": False,
                                                  "shape": shape})
    return Array(dtype=descr, shape=shape, stype="numpy.ndarray", data=buffer.getvalue() + data)


HOSTILE: dict[str, Callable[[], Any]] = {
    "empty": lambda: b"",
    "garbage": lambda: bytes(range(256)) * 4,
    "not bytes": lambda: "RAFTFLM1",
    "truncated header": lambda: valid()[:40],
    "truncated data": lambda: valid()[:-9],
    "trailing bytes": lambda: valid() + b"\x00",
    "another message": lambda: forged(durable=None),
    "unknown version": lambda: forged(durable=2),
    "extra field": lambda: forged(more=1),
    "unknown tag": lambda: forged(strategy=["o", class_of(), [["x", ["?", 1]]]]),
    "dangling array": lambda: forged(strategy=["o", class_of(), [["x", ["a", 999]]]]),
    "bad float": lambda: forged(strategy=["o", class_of(), [["x", ["f", "0xzz"]]]]),
    "huge int": lambda: forged(strategy=["o", class_of(), [["x", 1 << 2000]]]),
    "deep": lambda: forged(strategy=["o", class_of(), [["x", deep(60)]]]),
    "list key": lambda: forged(strategy=["o", class_of(), [["x", ["d", [[["l", []], 1]]]]]]),
    "dunder attribute": lambda: forged(strategy=["o", class_of(), [["__dict__", ["d", []]]]]),
    "strategy is a scalar": lambda: forged(strategy=3),
    "bad rng state": lambda: forged(rngs={"random": ["t", [3, ["t", [1, 2]], None]],
                                          "numpy": valid_rngs()["numpy"]}),
    "bad generator": lambda: forged(strategy=["o", class_of(), [["g", ["rg", "os", None]]]]),
    "context not a record": lambda: forged(context=[["c", 3]]),
    "bad metric value": lambda: forged(context=[["c", ["MR", [["k", ["s", "text"]]]]]]),
    "npy shape larger than data": lambda: forged(
        content=RecordDict({"arrays.0": ArrayRecord({"0": npy((1 << 40,))})}),
        strategy=["o", class_of(), [["x", ["a", 0]]]]),
    "npy of objects": lambda: forged(
        content=RecordDict({"arrays.0": ArrayRecord({"0": npy((1,), b"\x00" * 8, "|O")})}),
        strategy=["o", class_of(), [["x", ["a", 0]]]]),
    "odd store record": lambda: forged(content=RecordDict({"junk": ConfigRecord({"0": 1})})),
    "store key not a number": lambda: forged(content=RecordDict({"bytes.0": ConfigRecord({"²": b""})})),
}


def class_of() -> str:
    return durable.class_name(Holder())


def valid_rngs() -> dict[str, Any]:
    from raftfl.flower.codec import decode_message

    return decode_message(valid())[1]["rngs"]


def deep(depth: int) -> Any:
    node: Any = 1
    for _ in range(depth):
        node = ["l", [node]]
    return node


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_a_hostile_blob_is_one_error_and_changes_nothing(name: str, seeded: None) -> None:
    blob = HOSTILE[name]()
    fresh = Holder()
    fresh.m_t = marker = {"mine": np.zeros(1)}
    context = RecordDict({"kept": ConfigRecord({"a": 1})})
    rng = random.getstate()
    with pytest.raises(DurableStateError) as refused:
        restore(blob, fresh, context)
    assert "\n" not in str(refused.value)
    assert fresh.m_t is marker and list(context) == ["kept"] and random.getstate() == rng


def test_an_oversized_blob_is_refused_before_it_is_read(monkeypatch: pytest.MonkeyPatch,
                                                        seeded: None) -> None:
    blob = valid()
    monkeypatch.setattr(durable, "MAX_BLOB_BYTES", len(blob) - 1)
    with pytest.raises(DurableStateError, match="exceed"):
        restore(blob, Holder(), None)
    with pytest.raises(DurableStateError, match="exceeds"):
        capture(FedAdam(), RecordDict({"big": ArrayRecord({"w": Array(np.zeros(len(blob)))})}))


def test_random_corruption_is_refused_or_harmless(seeded: None) -> None:
    blob = valid()
    flips = np.random.default_rng(0)
    for _ in range(300):
        corrupt = bytearray(blob)
        for at in flips.integers(0, len(blob), size=int(flips.integers(1, 4))):
            corrupt[at] = int(flips.integers(0, 256))
        try:
            restore(bytes(corrupt), Holder(), RecordDict())
        except DurableStateError:
            pass
