"""Bounded, typed decoding of every record raftfl stores in etcd.

Why one place: anyone who can reach etcd can `etcdctl put` anything under our prefix, and
every node reads it. A 3 KB value of 1500 nested brackets made `json.loads` raise
RecursionError in every node at once, and the value stays in the append-only log, so they
failed again on restart. So every reader decodes through `loads_bounded` (a size and a
nesting bound checked before parsing) and builds its record with `from_fields`, which checks
each field against the dataclass's own annotations. A record type declares its shape once
(its fields) plus its ranges (`check`), and gets one `to_json` and one `from_json`.

A record that fails is skipped (or, for the run configuration, refused) with one warning per
key, and counted in `SKIPS`; it never crashes a reader.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import types
import typing
from collections import Counter
from collections.abc import Callable
from dataclasses import MISSING, asdict, fields, is_dataclass
from functools import cache
from typing import Any, ClassVar, TypeVar, Union

from raftfl.core.errors import RaftflError

log = logging.getLogger(__name__)

MAX_RECORD_BYTES = 64 * 1024  # any one stored record (checkpoint chunks are not records)
MAX_DEPTH = 16  # nesting of lists and objects; raftfl's own records need 3
MAX_TEXT = 4096  # characters in one string field
MAX_ITEMS = 4096  # entries in one list or object field
MAX_INT = 2**63 - 1  # etcd revisions are int64

T = TypeVar("T")


class MalformedRecord(ValueError):
    """A stored value that is not a valid record of the expected type; the message says why."""


_ESCAPE = re.compile(r"\\.", re.S)
_STRING = re.compile(r'"[^"]*"')  # once escapes are gone, a string ends at the next quote
_BRACKET = re.compile(r"[\[\]{}]")


def nesting_depth(text: str, limit: int) -> int:
    """How deeply lists and objects nest in JSON `text` (strings respected); stops counting
    once past `limit`. Linear in the length, whatever the input: escapes, then strings, are
    cut out by a regular expression each, and only the brackets left are walked."""
    depth = peak = 0
    for match in _BRACKET.finditer(_STRING.sub("", _ESCAPE.sub("", text))):
        if match.group() in "[{":
            depth += 1
            if depth > peak:
                peak = depth
                if peak > limit:
                    break
        else:
            depth -= 1
    return peak


def loads_bounded(raw: bytes | str, max_bytes: int = MAX_RECORD_BYTES,
                  max_depth: int = MAX_DEPTH) -> Any:
    """`json.loads`, refusing (MalformedRecord) values over `max_bytes` or nested deeper than
    `max_depth` before parsing, so no stored value can exhaust the stack or memory."""
    size = len(raw.encode() if isinstance(raw, str) else raw)
    if size > max_bytes:
        raise MalformedRecord(f"value of {size} bytes, more than {max_bytes}")
    try:
        text = raw if isinstance(raw, str) else raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedRecord(f"not JSON: not UTF-8 ({exc.reason} at byte {exc.start})") from exc
    # Nesting needs an opening bracket per level: with no more of them than the bound (the
    # common case: an event has about ten), the scan cannot find too deep a value.
    if text.count("[") + text.count("{") > max_depth and nesting_depth(text, max_depth) > max_depth:
        raise MalformedRecord(f"nested more than {max_depth} deep")
    try:
        return json.loads(text)
    except RecursionError as exc:  # unreachable after the depth check; kept as the last guard
        raise MalformedRecord("nested too deep") from exc
    except ValueError as exc:
        raise MalformedRecord(f"not JSON: {exc}") from exc


# -- typed fields ---------------------------------------------------------------------------


@cache
def _shape(cls: type) -> tuple[tuple[str, bool, Checker], ...]:
    """(name, required, check) of each field `cls.__init__` takes."""
    hints = typing.get_type_hints(cls)
    return tuple((f.name, f.default is MISSING and f.default_factory is MISSING,
                  _checker(hints[f.name]))
                 for f in fields(cls) if f.init)  # type: ignore[arg-type]


Checker = Callable[[Any, str], Any]


@cache
def _checker(tp: Any) -> Checker:
    """The check for annotation `tp`: it returns the value if it is of type `tp` (within the
    bounds), converted where JSON is loose (an int where a float is expected), else raises
    MalformedRecord. Built once per type: decoding runs it for every field of every value."""
    if tp is Any:
        return lambda value, where: value
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return _union(tp)
    if origin is list:
        return _list(tp)
    if origin is dict:
        return _dict(tp)
    if tp is str:
        return _str
    accepts = _LEAVES.get(tp)
    if accepts is None:
        raise TypeError(f"no check for type {tp!r}")  # a record declared a new shape

    def leaf(value: Any, where: str) -> Any:
        if accepts(value):
            return float(value) if tp is float else value
        raise MalformedRecord(f"{where}: {_short(value)} is not {_name(tp)}")
    return leaf


_LEAVES: dict[Any, Callable[[Any], bool]] = {
    type(None): lambda v: v is None,
    bool: lambda v: type(v) is bool,
    int: lambda v: type(v) is int and abs(v) <= MAX_INT,
    float: lambda v: type(v) in (int, float),  # NaN and infinities too: a diverged loss is a fact
}


def _str(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise MalformedRecord(f"{where}: {_short(value)} is not str")
    if len(value) > MAX_TEXT:
        raise MalformedRecord(f"{where}: text of {len(value)} characters, more than {MAX_TEXT}")
    return value


def _union(tp: Any) -> Checker:
    options = [_checker(option) for option in typing.get_args(tp)]
    nullable = type(None) in typing.get_args(tp)

    def union(value: Any, where: str) -> Any:
        if value is None and nullable:
            return None
        for option in options:
            try:
                return option(value, where)
            except MalformedRecord:
                continue
        raise MalformedRecord(f"{where}: {_short(value)} is none of {_name(tp)}")
    return union


def _list(tp: Any) -> Checker:
    (item_tp,) = typing.get_args(tp)
    item = _checker(item_tp)

    def checked(value: Any, where: str) -> list[Any]:
        if not isinstance(value, list):
            raise MalformedRecord(f"{where}: {_short(value)} is not {_name(tp)}")
        _count(value, where)
        if item_tp is Any:
            return list(value)
        return [item(v, f"{where}[{i}]") for i, v in enumerate(value)]
    return checked


def _dict(tp: Any) -> Checker:
    key_tp, item_tp = typing.get_args(tp)
    key, item = _checker(key_tp), _checker(item_tp)

    def checked(value: Any, where: str) -> dict[Any, Any]:
        if not isinstance(value, dict):
            raise MalformedRecord(f"{where}: {_short(value)} is not {_name(tp)}")
        _count(value, where)
        if item_tp is Any:
            return {key(k, f"{where} key"): v for k, v in value.items()}
        return {key(k, f"{where} key"): item(v, f"{where}[{k!r}]") for k, v in value.items()}
    return checked


def _count(value: list[Any] | dict[str, Any], where: str) -> None:
    if len(value) > MAX_ITEMS:
        raise MalformedRecord(f"{where}: {len(value)} entries, more than {MAX_ITEMS}")


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def from_fields(cls: type[T], obj: Any, what: str) -> T:
    """Build the dataclass `cls` from the decoded JSON object `obj`, checking every field
    against its annotation (and, for a Record, its `check()`); unknown keys are ignored (a
    newer writer), a missing required field is refused."""
    if not isinstance(obj, dict):
        raise MalformedRecord(f"{what}: not a JSON object")
    kwargs: dict[str, Any] = {}
    for name, required, check in _shape(cls):
        if name not in obj:
            if required:
                raise MalformedRecord(f"{what}: field {name} missing")
            continue
        kwargs[name] = check(obj[name], f"{what} field {name}")
    try:
        return cls(**kwargs)  # a Record checks its ranges on construction
    except MalformedRecord:
        raise
    except (TypeError, ValueError, RaftflError) as exc:
        raise MalformedRecord(f"{what}: {exc}") from exc


class Record:
    """Mixin for a stored record (a dataclass): one `to_json`, one `from_json`, both checked.

    `check()` holds the range checks beyond the types; it runs when a record is built (so
    also on every decode) and before every encode, so a writer cannot store what its readers
    would refuse.
    """

    KIND: ClassVar[str] = "record"
    MAX_BYTES: ClassVar[int] = MAX_RECORD_BYTES

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Raise ValueError when a field is out of range (the types are checked already)."""

    def to_dict(self) -> dict[str, Any]:
        assert is_dataclass(self)
        return asdict(self)

    def to_json(self) -> str:
        self.check()
        text = json.dumps(self.to_dict(), sort_keys=True)
        if len(text.encode()) > self.MAX_BYTES:
            raise ValueError(f"{self.KIND} of {len(text.encode())} bytes, more than {self.MAX_BYTES}")
        return text

    @classmethod
    def from_json(cls: type[T], raw: bytes | str) -> T:
        kind = cls.KIND  # type: ignore[attr-defined]
        try:
            obj = loads_bounded(raw, cls.MAX_BYTES)  # type: ignore[attr-defined]
        except MalformedRecord as exc:
            raise MalformedRecord(f"{kind}: {exc}") from exc
        return from_fields(cls, obj, kind)


def require(ok: bool, message: str) -> None:
    """The one-line range check records use in `check()`."""
    if not ok:
        raise ValueError(message)


# -- skips ----------------------------------------------------------------------------------


class Skips:
    """Malformed records seen by this process: one warning per key and reason, counted by kind."""

    MAX_REMEMBERED = 10_000  # a flood of junk keys costs bounded memory, not a log per key

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self._seen: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def skip(self, kind: str, key: str, reason: str) -> None:
        with self._lock:
            if (key, reason) in self._seen:
                return
            self.counts[kind] += 1
            if len(self._seen) >= self.MAX_REMEMBERED:
                log.debug("skipping malformed %s at %s: %s", kind, key, reason)
                return
            self._seen.add((key, reason))
        log.warning("skipping malformed %s at %s: %s", kind, key, reason)


SKIPS = Skips()
