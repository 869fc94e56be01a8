"""A ServerApp's state as one blob: the strategy's attributes, `context.state` and the
process-global RNGs, captured at a fenced commit and restored into a freshly built strategy.

Why: a successor re-runs the ServerApp from the last committed round, and without this the
strategy's own memory (FedAdam's m_t/v_t, FedAvgM's momentum, the adaptive clipping norm,
XGBoost's registered nodes, a privacy accountant) and the node-sampling RNG start over.

The blob is hostile input on restore (it crossed the network and the checkpoint store), so it
is never pickled: it is one raftfl codec Message (`codec.encode_message`). Its `extra` JSON
object describes the structure; numpy arrays, Flower Arrays and bytes values ride in
ArrayRecords and ConfigRecords of the content. Floats travel as float.hex (exact, nan/inf
too), ints as JSON ints, every other node as `[tag, ...]`:

    ["s", text]  ["f", hex]  ["y", i] bytes  ["a", i] ndarray  ["g", i] numpy scalar
    ["A", i] flwr Array  ["torch", i] tensor  ["AR"|"CR"|"MR", [[key, node], ...]] records
    ["l"|"t", [node, ...]] list, tuple  ["d"|"od", [[key, value], ...]] dict, OrderedDict
    ["rr", state] random.Random  ["rs", state] RandomState  ["rg", name, state] Generator
    ["o", class, [[attr, node], ...]] a (nested) strategy  ["sd", class, node] state_dict()

What is not data (functions, methods, classes, modules, callables) is skipped: re-importing
the app rebuilds it. Anything else is named in `Captured.lost` and left alone on restore; an
attribute any part of which is lost is not captured at all (half a container is worse).
Restore decodes and checks everything before it touches the strategy, runs the
`load_state_dict` calls (which may refuse) next, and only then sets attributes.
"""

from __future__ import annotations

import importlib
import random
import sys
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from types import BuiltinFunctionType, FunctionType, MethodType, ModuleType
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, Metadata, MetricRecord, RecordDict
from flwr.serverapp.strategy import Strategy

from raftfl.core.errors import RaftflError
from raftfl.flower.codec import MAX_ITEMS, CodecError, checked_numpy, decode_message, encode_message

MAX_BLOB_BYTES = 4 << 30  # FedAdam alone keeps three copies of a model of up to 1 GiB
MAX_DEPTH = 32  # nesting of containers and strategies
MAX_NODES = 1 << 22
MAX_INT_BITS = 1024
VERSION = 1
MESSAGE_TYPE = "query.raftfl_serverapp_state"  # Flower allows only train|evaluate|query[.action]
_ARRAYS, _BYTES = "arrays.", "bytes."
_BIT_GENERATORS = ("PCG64", "PCG64DXSM", "MT19937", "Philox", "SFC64")
_CODE = (FunctionType, BuiltinFunctionType, MethodType, ModuleType, type)
_RECORDS = {"AR": ArrayRecord, "CR": ConfigRecord, "MR": MetricRecord}


class DurableStateError(RaftflError):
    """A state blob that cannot be restored here (malformed, hostile, or another strategy's)."""


@dataclass(frozen=True)
class Captured:
    blob: bytes  # canonical: equal state -> equal bytes
    lost: tuple[str, ...]  # "path (type)" of what could not be captured; empty if nothing


def class_name(obj: object) -> str:
    kind = type(obj)
    return f"{kind.__module__}.{kind.__qualname__}"


def _describe(obj: object | None) -> str:
    return "no strategy" if obj is None else class_name(obj)


# ---------------------------------------------------------------- capture

_SKIP = object()  # an attribute not captured (code, or lost): None is a value's node


class _Lost(Exception):
    """Internal: one part of an attribute cannot be captured (path, reason)."""


def _is_code(value: object) -> bool:
    return isinstance(value, _CODE) or callable(value)


def _torch_tensor(value: object) -> bool:
    torch = sys.modules.get("torch")  # a tensor exists only if torch was imported
    return torch is not None and isinstance(value, torch.Tensor)


def _has_state_dict(value: object) -> bool:
    return (not isinstance(value, type) and callable(getattr(value, "state_dict", None))
            and callable(getattr(value, "load_state_dict", None)))


class _Encoder:
    def __init__(self) -> None:
        self.arrays: list[Array] = []
        self.blobs: list[bytes] = []
        self.lost: list[str] = []
        self.path_ids: set[int] = set()

    def _array(self, array: Array) -> int:
        self.arrays.append(array)
        return len(self.arrays) - 1

    def _ndarray(self, value: np.ndarray, path: str) -> int:
        if value.dtype.hasobject:
            raise _Lost(f"{path} (ndarray of dtype object)")
        # C order, so that equal arrays give equal bytes (a 0-d array is always C-contiguous)
        return self._array(Array(value if value.flags.c_contiguous else np.ascontiguousarray(value)))

    def _bytes(self, value: bytes) -> int:
        self.blobs.append(bytes(value))
        return len(self.blobs) - 1

    def value(self, value: Any, path: str, depth: int) -> Any:
        """The node of a data value; raises _Lost for anything that is not data."""
        kind = type(value)
        if value is None or kind is bool:
            return value
        if kind is int:
            if value.bit_length() > MAX_INT_BITS:
                raise _Lost(f"{path} (int of {value.bit_length()} bits)")
            return value
        if kind is float:
            return ["f", value.hex()]
        if kind is str:
            return ["s", value]
        if kind is bytes:
            return ["y", self._bytes(value)]
        if kind is np.ndarray:
            return ["a", self._ndarray(value, path)]
        if isinstance(value, np.generic):
            return ["g", self._ndarray(np.asarray(value), path)]
        if kind is Array:
            return ["A", self._array(value)]
        if _torch_tensor(value):
            try:
                array = value.detach().cpu().numpy()
            except (TypeError, RuntimeError) as exc:  # bfloat16 has no numpy dtype
                raise _Lost(f"{path} (tensor: {str(exc).splitlines()[0]})") from None
            return ["torch", self._ndarray(array, path)]
        if isinstance(value, random.SystemRandom):
            raise _Lost(f"{path} (SystemRandom)")
        if isinstance(value, random.Random):
            return ["rr", self.value(value.getstate(), f"{path}.getstate()", depth + 1)]
        if kind is np.random.RandomState:
            return ["rs", self.value(value.get_state(legacy=False), f"{path}.get_state()",
                                     depth + 1)]
        if kind is np.random.Generator:
            name = type(value.bit_generator).__name__
            if name not in _BIT_GENERATORS:
                raise _Lost(f"{path} (Generator over {name})")
            return ["rg", name, self.value(value.bit_generator.state, f"{path}.state", depth + 1)]
        if depth >= MAX_DEPTH:
            raise _Lost(f"{path} (nested deeper than {MAX_DEPTH})")
        if id(value) in self.path_ids:
            raise _Lost(f"{path} (a cycle)")
        self.path_ids.add(id(value))
        try:
            return self._container(value, path, depth)
        finally:
            self.path_ids.discard(id(value))

    def _container(self, value: Any, path: str, depth: int) -> Any:
        kind = type(value)
        if kind is ArrayRecord:
            return ["AR", [[key, self._array(arr)] for key, arr in value.items()]]
        if kind in (ConfigRecord, MetricRecord):
            tag = "CR" if kind is ConfigRecord else "MR"
            return [tag, [[key, self.value(item, f"{path}[{key!r}]", depth + 1)]
                          for key, item in value.items()]]
        if kind in (list, tuple):
            return ["l" if kind is list else "t",
                    [self.value(item, f"{path}[{i}]", depth + 1) for i, item in enumerate(value)]]
        if kind in (dict, OrderedDict):
            items = []
            for key, item in value.items():
                where = f"{path}[{key!r}]"
                items.append([self.value(key, f"{where} (key)", depth + 1),
                              self.value(item, where, depth + 1)])
            return ["d" if kind is dict else "od", items]
        raise _Lost(f"{path} ({kind.__name__})")

    def attribute(self, value: Any, path: str, depth: int) -> Any:
        """The node of one attribute, or _SKIP when it is code or lost."""
        if isinstance(value, Strategy):
            if depth >= MAX_DEPTH or id(value) in self.path_ids:
                self.lost.append(f"{path} ({type(value).__name__}: nested too deep or a cycle)")
                return _SKIP
            return self.strategy(value, path, depth + 1)
        stateful = _has_state_dict(value) and not _torch_tensor(value)
        try:
            if stateful:
                try:
                    state = value.state_dict()
                except Exception as exc:  # user code: any failure means the state is lost
                    raise _Lost(f"{path} ({type(value).__name__}: state_dict() raised "
                                f"{type(exc).__name__})") from None
                return ["sd", class_name(value), self.value(state, f"{path}.state_dict()",
                                                            depth + 1)]
            return self.value(value, path, depth)
        except _Lost as exc:
            if _is_code(value) and not stateful:  # a torch Module is callable, yet data
                return _SKIP  # rebuilt when the app is re-imported
            self.lost.append(str(exc))
            return _SKIP

    def strategy(self, obj: object, path: str, depth: int) -> list[Any]:
        try:
            attrs = vars(obj)
        except TypeError:
            self.lost.append(f"{path} ({type(obj).__name__} without __dict__)")
            attrs = {}
        self.path_ids.add(id(obj))
        try:
            nodes = [[name, node] for name, value in attrs.items()
                     if (node := self.attribute(value, f"{path}.{name}", depth)) is not _SKIP]
        finally:
            self.path_ids.discard(id(obj))
        return ["o", class_name(obj), nodes]


def _chunks(items: list[Any]) -> list[list[Any]]:
    return [items[i:i + MAX_ITEMS] for i in range(0, len(items), MAX_ITEMS)]


def _metadata() -> Metadata:
    # Fixed metadata: the blob must depend on the state only.
    return Metadata(run_id=0, message_id="", src_node_id=0, dst_node_id=0,
                    reply_to_message_id="", group_id="", created_at=0.0, ttl=0.0,
                    message_type=MESSAGE_TYPE)


def capture(strategy: object | None, context_state: RecordDict | None) -> Captured:
    """The state of `strategy` (None: a custom loop), `context_state` and the global RNGs.
    Raises DurableStateError only when the whole state is larger than MAX_BLOB_BYTES."""
    enc = _Encoder()
    tree = None if strategy is None else enc.strategy(strategy, "strategy", 0)
    context = None
    if context_state is not None:
        context = []
        for key, record in context_state.items():
            try:
                context.append([key, enc.value(record, f"context.state[{key!r}]", 0)])
            except _Lost as exc:
                enc.lost.append(str(exc))
    rngs = {"random": enc.value(random.getstate(), "random", 0),
            "numpy": enc.value(np.random.get_state(legacy=False), "numpy.random", 0)}
    content = RecordDict()
    for n, chunk in enumerate(_chunks(enc.arrays)):
        content[f"{_ARRAYS}{n}"] = ArrayRecord({str(n * MAX_ITEMS + i): a for i, a in enumerate(chunk)})
    for n, chunk in enumerate(_chunks(enc.blobs)):
        content[f"{_BYTES}{n}"] = ConfigRecord({str(n * MAX_ITEMS + i): b for i, b in enumerate(chunk)})
    extra = {"durable": VERSION, "class": None if strategy is None else class_name(strategy),
             "strategy": tree, "context": context, "rngs": rngs}
    try:
        blob = encode_message(Message(metadata=_metadata(), content=content), extra=extra)
    except CodecError as exc:
        raise DurableStateError(f"ServerApp state cannot be encoded: {exc}") from None
    if len(blob) > MAX_BLOB_BYTES:
        raise DurableStateError(f"ServerApp state of {len(blob)} bytes exceeds {MAX_BLOB_BYTES}")
    return Captured(blob=blob, lost=tuple(enc.lost))


# ---------------------------------------------------------------- restore

def _line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]


def _need(ok: bool, what: str) -> None:
    if not ok:
        raise DurableStateError(f"malformed ServerApp state: {what}")


def _check_npy(array: Array, what: str) -> np.ndarray:
    try:
        return checked_numpy(array)
    except CodecError as exc:
        raise DurableStateError(f"malformed ServerApp state: {what}: {exc}") from None


@dataclass
class _Obj:
    cls: str
    attrs: list[tuple[str, Any]]


@dataclass
class _StateDict:
    cls: str
    state: Any


@dataclass
class _Rng:
    """A validated RNG: `fresh` already carries the state; `apply` sets it on a like object."""
    fresh: Any
    like: Callable[[Any], bool]
    apply: Callable[[Any], None]


class _Decoder:
    def __init__(self, content: RecordDict) -> None:
        self.arrays: dict[int, Array] = {}
        self.blobs: dict[int, bytes] = {}
        self.nodes = 0
        self.torch: Any = None
        for name, record in content.items():
            store = self.arrays if name.startswith(_ARRAYS) else self.blobs
            kind = ArrayRecord if store is self.arrays else ConfigRecord
            _need(name.startswith((_ARRAYS, _BYTES)) and isinstance(record, kind),
                  f"unexpected record {name!r}")
            for key, item in record.items():
                _need(key.isascii() and key.isdigit() and len(key) < 12, f"store key {key!r:.40}")
                _need(isinstance(item, Array | bytes), f"store item {key!r}")
                store[int(key)] = item

    def _ref(self, store: dict[int, Any], index: Any) -> Any:
        _need(type(index) is int and index in store, f"dangling reference {index!r:.40}")
        return store[index]

    def _ndarray(self, index: Any) -> np.ndarray:
        return _check_npy(self._ref(self.arrays, index), f"array {index}")

    def _array(self, index: Any) -> Array:
        array = self._ref(self.arrays, index)
        if array.stype == "numpy.ndarray":
            _check_npy(array, f"array {index}")
        return array

    def _list(self, items: Any, what: str) -> list[Any]:
        _need(type(items) is list, f"{what} is not a list")
        return items

    def _pairs(self, items: Any, what: str) -> list[list[Any]]:
        pairs = self._list(items, what)
        _need(all(type(p) is list and len(p) == 2 for p in pairs), f"{what} item is not a pair")
        return pairs

    def value(self, node: Any, depth: int) -> Any:
        self.nodes += 1
        _need(self.nodes <= MAX_NODES, f"more than {MAX_NODES} values")
        _need(depth <= MAX_DEPTH + 4, f"nested deeper than {MAX_DEPTH}")
        if node is None or type(node) is bool:
            return node
        if type(node) is int:
            _need(node.bit_length() <= MAX_INT_BITS, "integer too large")
            return node
        _need(type(node) is list and bool(node) and type(node[0]) is str, f"bad node {node!r:.40}")
        tag, args = node[0], node[1:]
        handler = self._handlers.get(tag)
        _need(handler is not None, f"unknown tag {tag!r:.40}")
        return handler(self, args, depth + 1)

    def _one(self, args: list[Any], n: int = 1) -> Any:
        _need(len(args) == n, "wrong number of node arguments")
        return args[0] if n == 1 else args

    def _float(self, args: list[Any], depth: int) -> float:
        text = self._one(args)
        _need(type(text) is str and len(text) < 64, "bad float")
        return float.fromhex(text)

    def _str(self, args: list[Any], depth: int) -> str:
        text = self._one(args)
        _need(type(text) is str, "bad string")
        return text

    def _torch(self, args: list[Any], depth: int) -> Any:
        array = self._ndarray(self._one(args))
        if self.torch is None:
            try:
                self.torch = importlib.import_module("torch")
            except ImportError:
                self.torch = False
        return self.torch.from_numpy(array) if self.torch else array

    def _random(self, args: list[Any], depth: int) -> _Rng:
        state = self.value(self._one(args), depth)
        fresh = random.Random()
        fresh.setstate(state)
        return _Rng(fresh, lambda old: (isinstance(old, random.Random)  # a user's subclass too
                                        and not isinstance(old, random.SystemRandom)),
                    lambda old: old.setstate(state))

    def _random_state(self, args: list[Any], depth: int) -> _Rng:
        state = self.value(self._one(args), depth)
        fresh = np.random.RandomState()
        fresh.set_state(state)
        return _Rng(fresh, lambda old: type(old) is np.random.RandomState,
                    lambda old: old.set_state(state))

    def _generator(self, args: list[Any], depth: int) -> _Rng:
        name, node = self._one(args, 2)
        _need(name in _BIT_GENERATORS, f"bit generator {name!r:.40}")
        state = self.value(node, depth)
        bits = getattr(np.random, name)()
        bits.state = state
        return _Rng(np.random.Generator(bits),
                    lambda old: (type(old) is np.random.Generator
                                 and type(old.bit_generator).__name__ == name),
                    lambda old: setattr(old.bit_generator, "state", state))

    def _object(self, args: list[Any], depth: int) -> _Obj:
        cls, attrs = self._one(args, 2)
        _need(type(cls) is str, "class name is not a string")
        pairs = self._pairs(attrs, "attributes")
        _need(all(type(k) is str and k.isidentifier() and not k.startswith("__") for k, _ in pairs),
              "attribute name is not an identifier")
        return _Obj(cls, [(k, self.value(v, depth)) for k, v in pairs])

    def _state_dict(self, args: list[Any], depth: int) -> _StateDict:
        cls, node = self._one(args, 2)
        _need(type(cls) is str, "class name is not a string")
        return _StateDict(cls, self.value(node, depth))

    _handlers: dict[str, Callable[[_Decoder, list[Any], int], Any]] = {
        "f": _float, "s": _str,
        "y": lambda self, args, depth: self._ref(self.blobs, self._one(args)),
        "a": lambda self, args, depth: self._ndarray(self._one(args)),
        "g": lambda self, args, depth: self._ndarray(self._one(args))[()],
        "A": lambda self, args, depth: self._array(self._one(args)),
        "torch": _torch, "rr": _random, "rs": _random_state, "rg": _generator,
        "o": _object, "sd": _state_dict,
    }


_Handler = Callable[[_Decoder, list[Any], int], Any]


def _record(tag: str) -> _Handler:
    def decode(dec: _Decoder, args: list[Any], depth: int) -> Any:
        items = dec._pairs(dec._one(args), "record")
        _need(all(type(k) is str for k, _ in items), "record key is not a string")
        if tag == "AR":
            return ArrayRecord({k: dec._array(v) for k, v in items})
        return _RECORDS[tag]({k: dec.value(v, depth) for k, v in items})
    return decode


def _seq(kind: type) -> _Handler:
    def decode(dec: _Decoder, args: list[Any], depth: int) -> Any:
        return kind(dec.value(v, depth) for v in dec._list(dec._one(args), "sequence"))
    return decode


def _map(kind: type) -> _Handler:
    def decode(dec: _Decoder, args: list[Any], depth: int) -> Any:
        out = kind()
        for key_node, value in dec._pairs(dec._one(args), "mapping"):
            key = dec.value(key_node, depth)
            _need(key is None or isinstance(key, bool | int | float | str | bytes | tuple),
                  f"unhashable key of type {type(key).__name__}")
            out[key] = dec.value(value, depth)
        return out
    return decode


_Decoder._handlers.update({tag: _record(tag) for tag in _RECORDS})
_Decoder._handlers.update({"l": _seq(list), "t": _seq(tuple), "d": _map(dict), "od": _map(OrderedDict)})


def _plain(value: Any) -> bool:
    """No strategy or state_dict nodes inside: they exist only as attributes."""
    if isinstance(value, _Obj | _StateDict):
        return False
    if isinstance(value, list | tuple):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(_plain(k) and _plain(v) for k, v in value.items())
    return True


def _fresh(value: Any) -> Any:
    """A decoded value with its RNGs as new objects."""
    if isinstance(value, _Rng):
        return value.fresh
    if type(value) in (list, tuple):
        return type(value)(_fresh(v) for v in value)
    if type(value) in (dict, OrderedDict):
        return type(value)((k, _fresh(v)) for k, v in value.items())
    return value


class _Plan:
    """What restore will do, decided before anything is touched."""

    def __init__(self) -> None:
        self.loads: list[tuple[Any, Any, str]] = []
        self.sets: list[Callable[[], None]] = []

    def target(self, obj: _Obj, target: object, path: str) -> None:
        if obj.cls != class_name(target):
            raise DurableStateError(f"ServerApp state of {path} was captured from {obj.cls}, "
                                    f"not {class_name(target)}: not restored")
        for name, value in obj.attrs:
            old = getattr(target, name, None)
            where = f"{path}.{name}"
            if isinstance(value, _Obj):
                if old is None:
                    continue  # the new strategy has no such part: nothing to restore into
                self.target(value, old, where)
            elif isinstance(value, _StateDict):
                _need(_plain(value.state), f"{where} holds a strategy in its state_dict")
                if _has_state_dict(old):
                    self.loads.append((old, _fresh(value.state), where))
            else:
                _need(_plain(value), f"{where} holds a strategy inside a container")
                if isinstance(value, _Rng) and value.like(old):
                    self.sets.append(partial(value.apply, old))
                else:
                    self.sets.append(partial(setattr, target, name, _fresh(value)))


def _decode(blob: bytes) -> tuple[dict[str, Any], _Decoder]:
    _need(isinstance(blob, bytes | bytearray | memoryview), f"{type(blob).__name__} is not bytes")
    size = memoryview(blob).nbytes
    _need(size <= MAX_BLOB_BYTES, f"{size} bytes exceed {MAX_BLOB_BYTES}")
    try:
        message, extra = decode_message(blob)
    except CodecError as exc:
        raise DurableStateError(f"malformed ServerApp state: {exc}") from None
    _need(message.metadata.message_type == MESSAGE_TYPE and message.has_content(),
          "not a ServerApp state message")
    _need(extra.get("durable") == VERSION, f"unknown version {extra.get('durable')!r:.20}")
    _need(set(extra) == {"durable", "class", "strategy", "context", "rngs"}, "unexpected fields")
    return extra, _Decoder(message.content)


def restore(blob: bytes, strategy: object | None, context_state: RecordDict | None) -> None:
    """Set the captured state on `strategy` (in place) and `context_state` (its contents
    replaced), and the global RNGs. `strategy` None restores only context.state and the RNGs
    (the host does so before the ServerApp has built its strategy), whatever was captured.
    DurableStateError (one line) if the blob is malformed, or was captured from another
    strategy class (or none); then nothing was changed, except when a `load_state_dict`
    refuses (those run first, before any attribute is set)."""
    extra, dec = _decode(blob)
    try:
        cls, tree = extra["class"], extra["strategy"]
        _need(cls is None or type(cls) is str, "class name")
        if strategy is not None and cls != class_name(strategy):
            raise DurableStateError(f"ServerApp state was captured from {cls or 'no strategy'}, "
                                    f"not {_describe(strategy)}: not restored")
        plan = _Plan()
        if strategy is not None:
            obj = dec.value(tree, 0)
            _need(isinstance(obj, _Obj), "strategy is not an object")
            plan.target(obj, strategy, "strategy")
        context = None
        if extra["context"] is not None and context_state is not None:
            pairs = dec._pairs(extra["context"], "context")
            context = [(k, dec.value(v, 0)) for k, v in pairs]
            _need(all(type(k) is str and isinstance(v, ArrayRecord | ConfigRecord | MetricRecord)
                      for k, v in context), "context.state holds something that is not a record")
        rngs = extra["rngs"]
        _need(isinstance(rngs, dict) and set(rngs) == {"random", "numpy"}, "global RNGs")
        scratch = random.Random()
        py_state = dec.value(rngs["random"], 0)
        scratch.setstate(py_state)
        np_state = dec.value(rngs["numpy"], 0)
        np.random.RandomState().set_state(np_state)
    except DurableStateError:
        raise
    except (TypeError, ValueError, KeyError, IndexError, OverflowError, AttributeError,
            RecursionError) as exc:
        # a Flower record, numpy, torch or random refused a decoded value
        raise DurableStateError(f"malformed ServerApp state: {_line(exc)}") from None
    for old, state, where in plan.loads:
        try:
            old.load_state_dict(state)
        except Exception as exc:  # user code: any refusal is one line for the caller
            raise DurableStateError(f"{where}.load_state_dict refused the captured state: "
                                    f"{type(exc).__name__}: {_line(exc)}") from None
    for apply in plan.sets:
        try:
            apply()
        except (AttributeError, TypeError) as exc:  # a read-only property, __slots__
            raise DurableStateError(f"ServerApp state only partly restored: {_line(exc)}") from None
    if context is not None:
        context_state.clear()  # type: ignore[union-attr]
        for key, record in context:
            context_state[key] = record  # type: ignore[index]
    random.setstate(py_state)
    np.random.set_state(np_state)
