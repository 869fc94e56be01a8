"""Screening a worker's train reply before any strategy sees it: hostile updates refused.

Why here, at the Flower edge: anyone who reaches the aggregator's fleet port as a worker can
answer a train instruction with anything. Flower's strategies average what they get, so one
NaN, one array of another shape or one inflated `num-examples` poisons (or, for a string
dtype or a missing array, crashes) the aggregation, and a poisoned model is then committed
and resumed from by every successor. `screen_reply` is a pure check of one reply against the
instruction it answers; `RaftGrid` turns a refused reply into an error reply, so the user's
strategy counts it as a failure (Flower's own accounting) and its arrays never reach the model.

What a train reply must be:

* the same ArrayRecords, with the same array keys, as the instruction sent (the global model);
* every array readable (numpy serialisation), of the sent shape, with a numeric dtype that
  casts to the sent one within its kind (an int64 counter the strategy averaged into float64
  passes; a float array sent back as strings or complex numbers does not);
* every array value and every metric value finite;
* `num-examples`, where a MetricRecord has it, a number in [0, what the node declared for its
  data] (`declared`; None: the node declared nothing, only the other checks apply);
* optionally (`max_norm`), the L2 norm of the update (reply minus sent, over all arrays) at
  most the bound.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, Message

EXAMPLES_KEY = "num-examples"  # Flower's default `weighted_by_key`
NUMERIC_KINDS = "biuf"  # bool, signed, unsigned, floating (complex does not average into floats)
MAX_REASON = 200


def _undeclared(node_id: int) -> int | None:
    return None


@dataclass(frozen=True)
class ScreenPolicy:
    """What the aggregator screens train replies against, beyond the instruction itself."""

    declared: Callable[[int], int | None] = _undeclared  # Flower node id -> its declared examples
    max_norm: float | None = None  # bound on an update's L2 norm; None: not checked


def screen_reply(sent_arrays: Mapping[str, ArrayRecord], reply: Message,
                 declared_examples: int | None = None,
                 max_norm: float | None = None) -> str | None:
    """None if `reply` (to an instruction carrying `sent_arrays`) may be aggregated, else the
    one-line reason it is refused. An error reply is not screened (it carries nothing)."""
    if reply.has_error() or not reply.has_content():
        return None
    try:
        reason = _screen(sent_arrays, reply, declared_examples, max_norm)
    except Exception as exc:  # noqa: BLE001 - hostile bytes: whatever numpy raises, refuse
        reason = f"unreadable update: {type(exc).__name__}: {exc}"
    return None if reason is None else reason[:MAX_REASON]


def _screen(sent_arrays: Mapping[str, ArrayRecord], reply: Message,
            declared: int | None, max_norm: float | None) -> str | None:
    content = reply.content
    got = dict(content.array_records.items())
    if sorted(got) != sorted(sent_arrays):
        return f"array records {_names(got)}, the instruction sent {_names(sent_arrays)}"
    squares = 0.0
    for name, sent_record in sent_arrays.items():
        record = got[name]
        missing = [k for k in sent_record if k not in record]
        extra = [k for k in record if k not in sent_record]
        if missing:
            return f"array {_names(missing)} missing from {name!r}"
        if extra:
            return f"unexpected array {_names(extra)} in {name!r}"
        for key, sent in sent_record.items():
            reason, square = _screen_array(f"{name}.{key}", sent, record[key],
                                           max_norm is not None)
            if reason:
                return reason
            squares += square
    reason = _screen_metrics(content.metric_records, declared)
    if reason:
        return reason
    if max_norm is not None:
        norm = math.sqrt(squares)
        if not norm <= max_norm:  # also an overflow to inf
            return f"update norm {norm:.4g} above the bound {max_norm:g}"
    return None


def _screen_array(where: str, sent: Array, got: Array, norm: bool) -> tuple[str | None, float]:
    """(reason or None, squared L2 norm of got - sent when `norm`)."""
    if got.stype != sent.stype:
        return f"array {where} serialised as {got.stype!r}, not {sent.stype!r}", 0.0
    if sent.stype != "numpy.ndarray":
        return None, 0.0  # a serialisation raftfl cannot read: only the keys are checked
    expected = sent.numpy()
    value = got.numpy()
    if not isinstance(value, np.ndarray):  # np.load also opens .npz archives
        return f"array {where} is not one numpy array", 0.0
    if value.shape != expected.shape:
        return f"array {where} has shape {list(value.shape)}, not {list(expected.shape)}", 0.0
    if tuple(got.shape) != value.shape or got.dtype != str(value.dtype):
        return f"array {where}: its header does not match its data", 0.0
    if value.dtype.kind not in NUMERIC_KINDS or not np.can_cast(value.dtype, expected.dtype,
                                                                 "same_kind"):
        return f"array {where} has dtype {value.dtype}, not {expected.dtype}", 0.0
    if value.dtype.kind == "f" and not np.isfinite(value).all():
        bad = value[~np.isfinite(value)].flat[0]
        return f"array {where} has non-finite values ({bad})", 0.0
    if not norm:
        return None, 0.0
    delta = value.astype(np.float64) - expected.astype(np.float64)
    return None, float(np.dot(delta.ravel(), delta.ravel()))


def _screen_metrics(records: Mapping[str, Any], declared: int | None) -> str | None:
    for name, record in records.items():
        for key, value in record.items():
            values = value if isinstance(value, list) else [value]
            if any(isinstance(v, float) and not math.isfinite(v) for v in values):
                return f"metric {name}.{key} is not finite"
            if key != EXAMPLES_KEY:
                continue
            if isinstance(value, list) or not 0 <= value:
                return f"{EXAMPLES_KEY} {_short(value)} is not a count"
            if declared is not None and value > declared:
                return f"{EXAMPLES_KEY} {_short(value)} above the {declared} the node declared"
    return None


def _names(items: Any) -> str:
    names = sorted(items)
    return repr(names) if len(names) <= 4 else repr(names[:4])[:-1] + f", ... ({len(names)})]"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
