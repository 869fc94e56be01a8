"""Screening a worker's reply before any strategy sees it: hostile updates refused.

Why here, at the Flower edge: anyone who reaches the aggregator's fleet port as a worker can
answer an instruction with anything. Flower's strategies average what they get, so one NaN,
one array of another shape or dtype, or one inflated (or zero) `num-examples` poisons (or, for
a string dtype, a missing array or a zero total weight, crashes) the aggregation, and a
poisoned model is then committed and resumed from by every successor. `screen_reply` is a
pure check of one reply against the instruction it answers; `RaftGrid` turns a refused reply
into an error reply, so the user's strategy counts it as a failure (Flower's own accounting)
and its arrays and metrics never reach the model.

The screen judges only what holds for every Flower app, so that apps which do not send a
model (SecAgg+ stages, legacy `fitins`/`fitres` messages, XGBoost bagging) pass. Every reply,
of any message kind (train, evaluate, query, ...):

* every array serialised by numpy is readable, one array, its header matching its data, and
  every value finite;
* an array whose name the instruction also carried (same record, same key; a legacy `fitres.`
  record answers the instruction's `fitins.` one) serialised the same way, with the sent
  dtype or one that converts to it without loss: a float64 reply to a float32 model, whose
  values may overflow it once averaged, is refused. Narrower replies pass because Flower's
  own strategies send them wider than they came: FedOpt (FedAdam, FedYogi, FedAdagrad)
  computes the model in float64 from round 2, and a PyTorch ClientApp answers in its
  model's float32; FedAvg averages an int64 counter (a BatchNorm's `num_batches_tracked`)
  into float64, answered as int64. Either fits the sent dtype exactly;
* every metric value finite;
* `num-examples`, where a MetricRecord has it (`num_examples` in legacy messages), a whole
  number in [1, the cluster's cap] (`max_examples`: fixed in the cluster config by its
  creator, so no node can raise it for itself), and for a train reply also at most what the
  node declared for its training data (`declared`, its `--max-examples`; None: nothing
  declared). A declaration can only tighten the cap: whoever rewrites a member record can
  make that node's updates refused, never an inflated count accepted.

A train reply to an instruction that carried exactly one ArrayRecord (the model), when the
reply carries an ArrayRecord or a MetricRecord (a train result; a SecAgg+ stage answers with
ConfigRecords only), is moreover the model's update:

* the same ArrayRecord, with the same array keys, as sent;
* every array of the sent shape, except a 1-D uint8 array (a serialised model, as Flower's
  XGBoost strategies send) which may change its length;
* optionally (`max_norm`), the L2 norm of the update (reply minus sent, over all arrays) at
  most the bound.

Its norm is returned with the verdict (`judge_reply`): one reply alone cannot be judged an
outlier, so `outliers` judges a round's updates together (the grid applies it to the train
replies of one `send_and_receive`): a norm above `outlier_factor` x the median of at least
`MIN_OUTLIER_REPLIES` updates is refused. And `aggregate_fault` checks what the strategy made
of the replies, before it is committed: finite, and within the sent model's dtype.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from flwr.app import Array, ArrayRecord, Message, RecordDict

from raftfl.core.specs import DEFAULT_MAX_EXAMPLES, DEFAULT_OUTLIER_FACTOR
from raftfl.flower.codec import CodecError, checked_numpy

TRAIN = "train"  # Flower's MessageType.TRAIN
EXAMPLES_KEY = "num-examples"  # Flower's default `weighted_by_key`
EXAMPLES_KEYS = (EXAMPLES_KEY, "num_examples")  # and the legacy FitRes/EvaluateRes field
MIN_OUTLIER_REPLIES = 3  # fewer updates have no meaningful median
NUMPY = "numpy.ndarray"  # the stype of Flower's numpy serialisation
LEGACY_INS, LEGACY_RES = "fitins.", "fitres."  # record prefixes of Flower's compat layer
MAX_REASON = 200
K = TypeVar("K")


def _undeclared(node_id: int) -> int | None:
    return None


SECAGG_CONFIGS = "secaggplus_configs"  # where secaggplus_mod puts a masked vector, with
# the model's ArrayRecord emptied: such a reply is not judged as a model update


@dataclass(frozen=True)
class ScreenPolicy:
    """What the aggregator screens replies against, beyond the instruction itself."""

    declared: Callable[[int], int | None] = _undeclared  # Flower node id -> its declared examples
    max_norm: float | None = None  # bound on an update's L2 norm; None: not checked
    max_examples: int = DEFAULT_MAX_EXAMPLES  # the cluster's cap on num-examples
    outlier_factor: float = DEFAULT_OUTLIER_FACTOR  # x the round's median update norm; 0: off


@dataclass(frozen=True)
class Verdict:
    reason: str | None  # why the reply is refused; None: it may be aggregated
    norm: float | None = None  # a model update's L2 norm (reply - sent), when it passed


def screen_reply(sent_arrays: Mapping[str, ArrayRecord], reply: Message,
                 declared_examples: int | None = None, max_norm: float | None = None,
                 kind: str = TRAIN, max_examples: int = DEFAULT_MAX_EXAMPLES) -> str | None:
    """None if `reply`, to an instruction of message type `kind` carrying `sent_arrays`, may
    be aggregated, else the one-line reason it is refused. An error reply is not screened (it
    carries nothing)."""
    return judge_reply(sent_arrays, reply, declared_examples, max_norm, kind,
                       max_examples).reason


def judge_reply(sent_arrays: Mapping[str, ArrayRecord], reply: Message,
                declared_examples: int | None = None, max_norm: float | None = None,
                kind: str = TRAIN, max_examples: int = DEFAULT_MAX_EXAMPLES) -> Verdict:
    """`screen_reply`'s reason, and the update's norm when the reply is a model update."""
    if reply.has_error() or not reply.has_content():
        return Verdict(None)
    try:
        verdict = _screen(sent_arrays, reply.content, kind, declared_examples, max_norm,
                          max_examples)
    except Exception as exc:  # noqa: BLE001 - hostile bytes: whatever numpy raises, refuse
        verdict = Verdict(f"unreadable update: {type(exc).__name__}: {exc}")
    reason = verdict.reason
    return verdict if reason is None else Verdict(reason[:MAX_REASON])


def outliers(norms: Mapping[K, float], factor: float) -> dict[K, str]:
    """The updates of one round whose norm is above `factor` x the median of them all (with
    at least MIN_OUTLIER_REPLIES, and a median above 0), each with its one-line reason.
    The median, not the mean: a few huge updates cannot raise the bar they are judged by."""
    if factor <= 0 or len(norms) < MIN_OUTLIER_REPLIES:
        return {}
    median, _ = spread(norms.values())
    if not median > 0:
        return {}
    return {who: f"update norm {norm:.4g} above {factor:g} x the round's median {median:.4g}"
            for who, norm in norms.items() if not norm <= factor * median}


def spread(norms: Iterable[float]) -> tuple[float, float]:
    """(median, largest / median) of a round's update norms: what the outlier rule judges
    by, and what an operator tunes its factor with (the ratio is inf for a median of 0)."""
    values = list(norms)
    if not values:
        return 0.0, 0.0
    median = statistics.median(values)
    return median, (max(values) / median if median > 0 else math.inf)


def update_norm(sent: ArrayRecord, content: RecordDict) -> float:
    """The L2 norm of a (screened) reply's arrays minus the sent arrays of the same keys; inf
    for arrays that cannot be read (they are the first suspects)."""
    squares = 0.0
    for record in content.array_records.values():
        for key, array in record.items():
            base = sent.get(key)
            if base is None or array.stype != NUMPY or tuple(array.shape) != tuple(base.shape):
                continue
            try:
                squares += _square_delta(checked_numpy(array), base)
            except (CodecError, ValueError, TypeError):
                return math.inf
    return math.sqrt(squares)


def aggregate_fault(sent: ArrayRecord, aggregate: ArrayRecord) -> str | None:
    """None if the strategy's aggregate may be committed, else why not: an array with a
    non-finite value, or with a value the sent model's dtype cannot hold (a float64 aggregate
    of a float32 model would be inf once a ClientApp loads it)."""
    for key, array in aggregate.items():
        if array.stype != NUMPY:
            continue
        value = array.numpy()
        if value.dtype.kind not in "fc":
            continue
        if not np.isfinite(value).all():
            return f"array {key} of the aggregate has non-finite values"
        base = sent.get(key)
        if base is None or np.dtype(base.dtype).kind != "f" or value.dtype == np.dtype(base.dtype):
            continue
        limit = float(np.finfo(np.dtype(base.dtype)).max)
        if value.size and not float(np.abs(value).max()) <= limit:
            return f"array {key} of the aggregate overflows {base.dtype}"
    return None


def _screen(sent_arrays: Mapping[str, ArrayRecord], content: RecordDict, kind: str,
            declared: int | None, max_norm: float | None, max_examples: int) -> Verdict:
    got = dict(content.array_records.items())
    model = (kind == TRAIN and len(sent_arrays) == 1
             and bool(content.array_records or content.metric_records)
             and SECAGG_CONFIGS not in content.config_records)  # SecAgg+: the update is masked
    reason = _screen_structure(sent_arrays, got) if model else None
    if reason:
        return Verdict(reason)
    squares = 0.0
    for name, record in got.items():
        sent_record = sent_arrays.get(_asked(name))
        for key, array in record.items():
            sent = sent_record.get(key) if sent_record is not None else None
            reason, square = _screen_array(f"{name}.{key}", sent, array, model)
            if reason:
                return Verdict(reason)
            squares += square
    reason = _screen_metrics(content.metric_records, declared if kind == TRAIN else None,
                             max_examples)
    if reason:
        return Verdict(reason)
    if not model:
        return Verdict(None)
    norm = math.sqrt(squares)
    if max_norm is not None and not norm <= max_norm:  # also an overflow to inf
        return Verdict(f"update norm {norm:.4g} above the bound {max_norm:g}")
    return Verdict(None, norm)


def _asked(name: str) -> str:
    """The instruction's record a reply's record `name` answers."""
    return LEGACY_INS + name[len(LEGACY_RES):] if name.startswith(LEGACY_RES) else name


def _screen_structure(sent_arrays: Mapping[str, ArrayRecord],
                      got: Mapping[str, ArrayRecord]) -> str | None:
    """A model update: the ArrayRecord and array keys sent, no fewer, no more."""
    if sorted(map(_asked, got)) != sorted(sent_arrays):
        return f"array records {_names(got)}, the instruction sent {_names(sent_arrays)}"
    for name, record in got.items():
        sent_record = sent_arrays[_asked(name)]
        missing = [k for k in sent_record if k not in record]
        extra = [k for k in record if k not in sent_record]
        if missing:
            return f"array {_names(missing)} missing from {name!r}"
        if extra:
            return f"unexpected array {_names(extra)} in {name!r}"
    return None


def _screen_array(where: str, sent: Array | None, got: Array,
                  model: bool) -> tuple[str | None, float]:
    """(reason or None, squared L2 norm of got - sent in a model update). `sent`: the
    instruction's array of the same name, if it had one; `model`: `got` is part of a model
    update."""
    if sent is not None and got.stype != sent.stype:
        return f"array {where} serialised as {got.stype!r}, not {sent.stype!r}", 0.0
    if got.stype != NUMPY:
        return None, 0.0  # a serialisation raftfl cannot read: only the keys are checked
    try:
        value = checked_numpy(got)
    except CodecError as exc:
        return f"array {where} is not one numpy array ({exc})", 0.0
    if tuple(got.shape) != value.shape or got.dtype != str(value.dtype):
        return f"array {where}: its header does not match its data", 0.0
    if value.dtype.kind in "fc" and not np.isfinite(value).all():
        bad = value[~np.isfinite(value)].flat[0]
        return f"array {where} has non-finite values ({bad})", 0.0
    if sent is not None:
        reason = _screen_like(where, sent, value, model)
        if reason:
            return reason, 0.0
    if not model or sent is None or value.shape != tuple(sent.shape):
        return None, 0.0  # a grown booster is not a delta
    return None, _square_delta(value, sent)


def _square_delta(value: np.ndarray, sent: Array) -> float:
    """The squared L2 norm of `value` - `sent`, in float64 (inf if it overflows even that)."""
    delta = value.astype(np.float64) - checked_numpy(sent).astype(np.float64)
    with np.errstate(over="ignore"):
        return float(np.dot(delta.ravel(), delta.ravel()))


def _screen_like(where: str, sent: Array, value: np.ndarray, model: bool) -> str | None:
    """`value` against the instruction's array of the same name: its shape (in a model
    update) and its dtype (everywhere: the sent one, or one that converts to it safely)."""
    expected = tuple(sent.shape)
    if model and value.shape != expected and not (_blob(value.shape, str(value.dtype))
                                                  and _blob(expected, sent.dtype)):
        return f"array {where} has shape {list(value.shape)}, not {list(expected)}"
    want = np.dtype(sent.dtype)
    if not np.can_cast(value.dtype, want, "safe"):
        return f"array {where} has dtype {value.dtype}, not {sent.dtype}"
    return None


def _blob(shape: tuple[int, ...], dtype: str) -> bool:
    """A 1-D uint8 array: serialised bytes (an XGBoost booster), not weights to average."""
    return len(shape) == 1 and dtype == "uint8"


def _screen_metrics(records: Mapping[str, Any], declared: int | None,
                    cap: int) -> str | None:
    for name, record in records.items():
        for key, value in record.items():
            values = value if isinstance(value, list) else [value]
            if any(isinstance(v, float) and not math.isfinite(v) for v in values):
                return f"metric {name}.{key} is not finite"
            if key not in EXAMPLES_KEYS:
                continue
            if isinstance(value, list) or not (value == int(value) and 0 < value):
                return f"{EXAMPLES_KEY} {_short(value)} is not a count"
            if declared is not None and value > declared:
                return f"{EXAMPLES_KEY} {_short(value)} above the {declared} the node declared"
            if value > cap:
                return f"{EXAMPLES_KEY} {_short(value)} above the cluster's cap {cap}"
    return None


def _names(items: Any) -> str:
    names = sorted(items)
    return repr(names) if len(names) <= 4 else repr(names[:4])[:-1] + f", ... ({len(names)})]"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
