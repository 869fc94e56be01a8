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
  record answers the instruction's `fitins.` one) serialised the same way, with a dtype that
  casts safely to the sent one (an int64 counter the strategy averaged into float64 passes; a
  float64 reply to a float32 model, whose values may overflow it, does not);
* every metric value finite;
* `num-examples`, where a MetricRecord has it (`num_examples` in legacy messages), a whole
  number in [1, MAX_NUM_EXAMPLES], and for a train reply at most what the node declared for
  its training data (`declared`; None: the node declared nothing).

A train reply to an instruction that carried exactly one ArrayRecord (the model), when the
reply carries an ArrayRecord or a MetricRecord (a train result; a SecAgg+ stage answers with
ConfigRecords only), is moreover the model's update:

* the same ArrayRecord, with the same array keys, as sent;
* every array of the sent shape, except a 1-D uint8 array (a serialised model, as Flower's
  XGBoost strategies send) which may change its length;
* optionally (`max_norm`), the L2 norm of the update (reply minus sent, over all arrays) at
  most the bound.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, Message, RecordDict

from raftfl.flower.codec import CodecError, checked_numpy

TRAIN = "train"  # Flower's MessageType.TRAIN
EXAMPLES_KEY = "num-examples"  # Flower's default `weighted_by_key`
EXAMPLES_KEYS = (EXAMPLES_KEY, "num_examples")  # and the legacy FitRes/EvaluateRes field
MAX_NUM_EXAMPLES = 10**9  # a count above this is not a count of examples
NUMPY = "numpy.ndarray"  # the stype of Flower's numpy serialisation
LEGACY_INS, LEGACY_RES = "fitins.", "fitres."  # record prefixes of Flower's compat layer
MAX_REASON = 200


def _undeclared(node_id: int) -> int | None:
    return None


@dataclass(frozen=True)
class ScreenPolicy:
    """What the aggregator screens replies against, beyond the instruction itself."""

    declared: Callable[[int], int | None] = _undeclared  # Flower node id -> its declared examples
    max_norm: float | None = None  # bound on an update's L2 norm; None: not checked


def screen_reply(sent_arrays: Mapping[str, ArrayRecord], reply: Message,
                 declared_examples: int | None = None, max_norm: float | None = None,
                 kind: str = TRAIN) -> str | None:
    """None if `reply`, to an instruction of message type `kind` carrying `sent_arrays`, may
    be aggregated, else the one-line reason it is refused. An error reply is not screened (it
    carries nothing)."""
    if reply.has_error() or not reply.has_content():
        return None
    try:
        reason = _screen(sent_arrays, reply.content, kind, declared_examples, max_norm)
    except Exception as exc:  # noqa: BLE001 - hostile bytes: whatever numpy raises, refuse
        reason = f"unreadable update: {type(exc).__name__}: {exc}"
    return None if reason is None else reason[:MAX_REASON]


def _screen(sent_arrays: Mapping[str, ArrayRecord], content: RecordDict, kind: str,
            declared: int | None, max_norm: float | None) -> str | None:
    got = dict(content.array_records.items())
    model = (kind == TRAIN and len(sent_arrays) == 1
             and bool(content.array_records or content.metric_records))
    reason = _screen_structure(sent_arrays, got) if model else None
    if reason:
        return reason
    squares = 0.0
    for name, record in got.items():
        sent_record = sent_arrays.get(_asked(name))
        for key, array in record.items():
            sent = sent_record.get(key) if sent_record is not None else None
            reason, square = _screen_array(f"{name}.{key}", sent, array, model,
                                           model and max_norm is not None)
            if reason:
                return reason
            squares += square
    reason = _screen_metrics(content.metric_records, declared if kind == TRAIN else None)
    if reason:
        return reason
    if model and max_norm is not None:
        norm = math.sqrt(squares)
        if not norm <= max_norm:  # also an overflow to inf
            return f"update norm {norm:.4g} above the bound {max_norm:g}"
    return None


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


def _screen_array(where: str, sent: Array | None, got: Array, model: bool,
                  norm: bool) -> tuple[str | None, float]:
    """(reason or None, squared L2 norm of got - sent when `norm`). `sent`: the instruction's
    array of the same name, if it had one; `model`: `got` is part of a model update."""
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
    if not norm or sent is None:
        return None, 0.0
    delta = value.astype(np.float64) - sent.numpy().astype(np.float64)
    return None, float(np.dot(delta.ravel(), delta.ravel()))


def _screen_like(where: str, sent: Array, value: np.ndarray, model: bool) -> str | None:
    """`value` against the instruction's array of the same name: its shape (in a model
    update) and its dtype (everywhere)."""
    expected = tuple(sent.shape)
    if model and value.shape != expected and not (_blob(value.shape, str(value.dtype))
                                                  and _blob(expected, sent.dtype)):
        return f"array {where} has shape {list(value.shape)}, not {list(expected)}"
    if not np.can_cast(value.dtype, np.dtype(sent.dtype), "safe"):
        return f"array {where} has dtype {value.dtype}, not {sent.dtype}"
    return None


def _blob(shape: tuple[int, ...], dtype: str) -> bool:
    """A 1-D uint8 array: serialised bytes (an XGBoost booster), not weights to average."""
    return len(shape) == 1 and dtype == "uint8"


def _screen_metrics(records: Mapping[str, Any], declared: int | None) -> str | None:
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
            if value > MAX_NUM_EXAMPLES:
                return f"{EXAMPLES_KEY} {_short(value)} above the bound {MAX_NUM_EXAMPLES}"
    return None


def _names(items: Any) -> str:
    names = sorted(items)
    return repr(names) if len(names) <= 4 else repr(names[:4])[:-1] + f", ... ({len(names)})]"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
