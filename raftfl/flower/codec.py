"""Flower records and Messages as bytes, built only from Flower's public record classes.

Why our own format: Flower's wire format (protobuf plus its "inflatable object" store) lives in
private modules, and raftfl may only use `flwr.app`. The format is small and explicit:

    MAGIC | uint32-LE header length | JSON header | binary blobs, in header order

The header names every record and item with a type tag, so ints stay ints, floats stay floats,
bools stay bools and bytes stay bytes; array data and bytes values travel as raw blobs. An
`Array` crosses unchanged (dtype, shape, stype, data bytes), whatever serialiser made it.

Everything decoded from the network is bounded (header size, record and item counts, list
lengths, shape ranks) and checked, and every malformed input raises one `CodecError` with a
one-line reason; nothing is unpickled.

The same array encoding gives checkpoints a canonical blob (`arrays_to_bytes`): the same arrays
always give the same bytes, hence the same sha256. The final model is written as a
deterministic `.npz` (`save_model`), which numpy and torch users load without raftfl:

    import numpy as np, torch
    state = {k: torch.from_numpy(v) for k, v in np.load("final_model.npz").items()}
    net.load_state_dict(state)          # keys are the ArrayRecord's keys (state_dict names)
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import struct
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, Metadata, MetricRecord, RecordDict

MESSAGE_MAGIC = b"RAFTFLM1"
ARRAYS_MAGIC = b"RAFTFLA1"
_LEN = struct.Struct("<I")

MAX_HEADER_BYTES = 64 << 20
MAX_RECORDS = 1024
MAX_ITEMS = 1 << 16  # per record
MAX_LIST = 1 << 22  # elements of one list value
MAX_NDIM = 32
MAX_NPY_HEADER = 10_000  # numpy's own default bound on a .npy header
MAX_TEXT = 1 << 16  # keys, dtypes, stypes, ids, message types, error reasons
_INT_BOUND = 1 << 64

META_FIELDS = {  # Metadata constructor argument -> type on the wire
    "run_id": int, "message_id": str, "src_node_id": int, "dst_node_id": int,
    "reply_to_message_id": str, "group_id": str, "created_at": float, "ttl": float,
    "message_type": str,
}

# Type tags of metric/config values. A list tag covers empty lists too (decoded as []).
_SCALARS: dict[str, type] = {"b": bool, "i": int, "f": float, "s": str, "y": bytes}
_KINDS = {"arrays": ArrayRecord, "metrics": MetricRecord, "configs": ConfigRecord}


class CodecError(ValueError):
    """Bytes that are not a well-formed raftfl encoding (or a record we cannot encode)."""


# ---------------------------------------------------------------- encoding

class _Writer:
    def __init__(self) -> None:
        self.blobs: list[bytes] = []

    def blob(self, data: bytes) -> int:
        self.blobs.append(bytes(data))
        return len(data)

    def frame(self, magic: bytes, header: dict[str, Any]) -> bytes:
        head = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
        if len(head) > MAX_HEADER_BYTES:
            raise CodecError(f"header of {len(head)} bytes exceeds {MAX_HEADER_BYTES}")
        return b"".join([magic, _LEN.pack(len(head)), head, *self.blobs])


def _tag(value: Any) -> str:
    for tag, kind in _SCALARS.items():  # bool before int: bool is an int subclass
        if isinstance(value, kind):
            return tag
    raise CodecError(f"unsupported record value of type {type(value).__name__}")


def _scalar_out(tag: str, value: Any, out: _Writer) -> Any:
    # Flower accepts subclasses (numpy.float64 is a float): send the plain Python value.
    return out.blob(value) if tag == "y" else _SCALARS[tag](value)


def _encode_value(value: Any, out: _Writer) -> list[Any]:
    if isinstance(value, list):
        tag = _tag(value[0]) if value else "i"
        if any(_tag(v) != tag for v in value):
            raise CodecError("a list value mixes element types")
        return ["l" + tag, [_scalar_out(tag, v, out) for v in value]]
    tag = _tag(value)
    return [tag, _scalar_out(tag, value, out)]


def _encode_arrays(record: ArrayRecord, out: _Writer) -> list[list[Any]]:
    return [[key, arr.dtype, list(arr.shape), arr.stype, out.blob(arr.data)]
            for key, arr in record.items()]


def _encode_record(record: Any, out: _Writer) -> tuple[str, list[list[Any]]]:
    if isinstance(record, ArrayRecord):
        return "arrays", _encode_arrays(record, out)
    kind = "metrics" if isinstance(record, MetricRecord) else "configs"
    return kind, [[key, *_encode_value(value, out)] for key, value in record.items()]


def encode_message(message: Message, extra: dict[str, Any] | None = None,
                   meta: dict[str, Any] | None = None) -> bytes:
    """Encode `message`; `extra` is a JSON object carried beside it (raftfl's stamp), and
    `meta` overrides metadata fields (the sender assigns ids the way a SuperLink would)."""
    md = message.metadata
    header_meta = {name: getattr(md, name) for name in META_FIELDS}
    header_meta.update(meta or {})
    out = _Writer()
    records = []
    if message.has_content():
        for key, record in message.content.items():
            records.append([key, *_encode_record(record, out)])
    error = None
    if message.has_error():
        error = {"code": message.error.code, "reason": message.error.reason}
    return out.frame(MESSAGE_MAGIC, {"v": 1, "meta": header_meta, "extra": extra or {},
                                     "records": records, "error": error})


def arrays_to_bytes(record: ArrayRecord) -> bytes:
    """Canonical bytes of an ArrayRecord: same keys, order and Arrays give the same bytes."""
    out = _Writer()
    return out.frame(ARRAYS_MAGIC, {"v": 1, "arrays": _encode_arrays(record, out)})


def arrays_sha256(record: ArrayRecord) -> str:
    return hashlib.sha256(arrays_to_bytes(record)).hexdigest()


# ---------------------------------------------------------------- decoding

def _need(ok: bool, what: str) -> None:
    if not ok:
        raise CodecError(f"malformed encoding: {what}")


def _text(value: Any, what: str) -> str:
    _need(isinstance(value, str) and len(value) <= MAX_TEXT, f"{what} is not a short string")
    return value


def _items(value: Any, limit: int, what: str) -> list[Any]:
    _need(isinstance(value, list), f"{what} is not a list")
    _need(len(value) <= limit, f"{what} has {len(value)} entries (limit {limit})")
    return value


class _Reader:
    """Walks the blob section as the header consumes it."""

    def __init__(self, data: memoryview):
        self.data = data
        self.pos = 0

    def blob(self, size: Any) -> bytes:
        _need(type(size) is int and 0 <= size <= len(self.data) - self.pos,
              f"blob size {size!r} runs past the end of the data")
        chunk = bytes(self.data[self.pos:self.pos + size])
        self.pos += size
        return chunk

    def finish(self) -> None:
        _need(self.pos == len(self.data), f"{len(self.data) - self.pos} trailing bytes")


def _unframe(blob: bytes | bytearray | memoryview, magic: bytes) -> tuple[dict[str, Any], _Reader]:
    if not isinstance(blob, bytes | bytearray | memoryview):
        raise CodecError(f"expected bytes, got {type(blob).__name__}")
    data = memoryview(blob).cast("B")
    _need(bytes(data[:len(magic)]) == magic, "bad magic (not a raftfl encoding of this kind)")
    pos = len(magic)
    _need(len(data) >= pos + _LEN.size, "truncated before the header length")
    (size,) = _LEN.unpack_from(data, pos)
    pos += _LEN.size
    _need(size <= MAX_HEADER_BYTES, f"header length {size} exceeds {MAX_HEADER_BYTES}")
    _need(len(data) >= pos + size, f"truncated header ({len(data) - pos} of {size} bytes)")
    try:
        header = json.loads(bytes(data[pos:pos + size]).decode())
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CodecError(f"malformed encoding: header is not JSON ({exc})") from None
    _need(isinstance(header, dict) and header.get("v") == 1, "unknown header version")
    return header, _Reader(data[pos + size:])


def _decode_arrays(items: Any, reader: _Reader) -> ArrayRecord:
    record = ArrayRecord()
    for item in _items(items, MAX_ITEMS, "array list"):
        _need(isinstance(item, list) and len(item) == 5, "array entry is not [key, dtype, shape, "
              "stype, size]")
        key, dtype, shape, stype, size = item
        _items(shape, MAX_NDIM, "array shape")
        _need(all(type(d) is int and 0 <= d < _INT_BOUND for d in shape), f"bad shape {shape!r}")
        record[_text(key, "array key")] = Array(
            dtype=_text(dtype, "dtype"), shape=tuple(shape), stype=_text(stype, "stype"),
            data=reader.blob(size))
    return record


def _scalar(tag: str, value: Any, reader: _Reader) -> Any:
    if tag == "y":
        return reader.blob(value)
    kind = _SCALARS[tag]
    if kind is float and type(value) is int:  # JSON may spell 1.0 as 1 if written by hand
        value = float(value)
    _need(type(value) is kind, f"value {value!r} is not of type {kind.__name__}")
    if kind is int:
        _need(-_INT_BOUND < value < _INT_BOUND, "integer out of the 64-bit range")
    if kind is str:
        _need(len(value) <= MAX_LIST, "string value too long")
    return value


def _decode_value(tag: Any, value: Any, reader: _Reader) -> Any:
    _need(isinstance(tag, str), f"bad value tag {tag!r}")
    if tag.startswith("l") and tag[1:] in _SCALARS:
        return [_scalar(tag[1:], v, reader) for v in _items(value, MAX_LIST, "list value")]
    _need(tag in _SCALARS, f"unknown value tag {tag!r}")
    return _scalar(tag, value, reader)


def _decode_record(kind: Any, items: Any, reader: _Reader) -> Any:
    _need(kind in _KINDS, f"unknown record kind {kind!r}")
    if kind == "arrays":
        return _decode_arrays(items, reader)
    record = _KINDS[kind]()
    for item in _items(items, MAX_ITEMS, f"{kind} record"):
        _need(isinstance(item, list) and len(item) == 3, "record item is not [key, tag, value]")
        key, tag, value = item
        record[_text(key, "record key")] = _decode_value(tag, value, reader)
    return record


def _decode_meta(raw: Any, meta: dict[str, Any] | None) -> Metadata:
    _need(isinstance(raw, dict) and set(raw) == set(META_FIELDS), "metadata fields missing")
    fields = {**raw, **(meta or {})}
    for name, kind in META_FIELDS.items():
        value = fields[name]
        if kind is float and type(value) is int:
            value = fields[name] = float(value)
        _need(type(value) is kind, f"metadata {name} is not {kind.__name__}")
        if kind is str:
            _text(value, f"metadata {name}")
        if kind is int:
            _need(-_INT_BOUND < value < _INT_BOUND, f"metadata {name} out of range")
    return Metadata(**fields)


def decode_message(blob: bytes | bytearray | memoryview,
                   meta: dict[str, Any] | None = None) -> tuple[Message, dict[str, Any]]:
    """Inverse of `encode_message`: (message, extra). `meta` overrides metadata fields."""
    header, reader = _unframe(blob, MESSAGE_MAGIC)
    try:
        metadata = _decode_meta(header.get("meta"), meta)
        extra = header.get("extra")
        _need(isinstance(extra, dict), "extra is not an object")
        error = header.get("error")
        records = _items(header.get("records"), MAX_RECORDS, "record list")
        if error is not None:
            _need(isinstance(error, dict) and not records, "an error message also has records")
            code, reason = error.get("code"), error.get("reason")
            _need(type(code) is int and -_INT_BOUND < code < _INT_BOUND, "error code is not int")
            if reason is not None:
                _text(reason, "error reason")
            reader.finish()
            return Message(metadata=metadata, error=Error(code, reason)), extra
        content = RecordDict()
        for entry in records:
            _need(isinstance(entry, list) and len(entry) == 3, "record is not [key, kind, items]")
            key, kind, items = entry
            content[_text(key, "record key")] = _decode_record(kind, items, reader)
        reader.finish()
        return Message(metadata=metadata, content=content), extra
    except CodecError:
        raise
    except (TypeError, ValueError, KeyError) as exc:  # rejected by a Flower constructor
        raise CodecError(f"malformed encoding: {str(exc).splitlines()[0]}") from None


def checked_numpy(array: Array) -> np.ndarray:
    """`array.numpy()` once its .npy header is known to describe exactly the bytes it carries:
    a hostile header could otherwise make numpy allocate any size before reading a byte.

    Each header's parse is kept, by its bytes: numpy parses it with `ast`, and a round's
    thousand updates carry the same few headers (checking and reading a 1,000-float update
    took 52 us, 1.8 us with the parse kept)."""
    data = array.data
    shape, fortran, dtype, offset = _npy_header(data)
    if dtype.hasobject or len(data) != offset + math.prod(shape) * dtype.itemsize:
        raise CodecError("the .npy header does not describe its data")
    if not dtype.itemsize:  # a zero-size dtype: frombuffer cannot count its items
        return array.numpy()
    flat = np.frombuffer(data, dtype, offset=offset).copy()  # writable, as np.load's
    return flat.reshape(shape[::-1]).transpose() if fortran else flat.reshape(shape)


_NpyHeader = tuple[tuple[int, ...], bool, np.dtype[Any], int]
_NPY_HEADERS: dict[bytes, _NpyHeader] = {}
_NPY_HEADERS_KEPT = 256


def _npy_header(data: bytes) -> _NpyHeader:
    """(shape, fortran order, dtype, offset of the data) of a .npy blob (1.0 or 2.0)."""
    key = _npy_header_bytes(data)
    known = _NPY_HEADERS.get(key) if key else None
    if known is not None:
        return known
    stream = io.BytesIO(data)
    fmt = np.lib.format
    try:
        version = fmt.read_magic(stream)
        read = {(1, 0): fmt.read_array_header_1_0, (2, 0): fmt.read_array_header_2_0}.get(version)
        if read is None:
            raise ValueError(f".npy version {version}")
        shape, fortran, dtype = read(stream, max_header_size=MAX_NPY_HEADER)
    except (ValueError, TypeError, SyntaxError) as exc:
        raise CodecError(f"malformed .npy: {str(exc).splitlines()[0][:200]}") from None
    parsed = (tuple(shape), bool(fortran), dtype, stream.tell())
    if key and parsed[3] == len(key):
        if len(_NPY_HEADERS) >= _NPY_HEADERS_KEPT:
            _NPY_HEADERS.clear()
        _NPY_HEADERS[key] = parsed
    return parsed


def _npy_header_bytes(data: bytes) -> bytes:
    """The magic, version and header of a .npy blob, the key its parse is kept under (b"" when
    they are not a well-formed 1.0 or 2.0 preamble within MAX_NPY_HEADER)."""
    size = {b"\x01\x00": 2, b"\x02\x00": 4}.get(data[6:8])  # of the header's length
    if data[:6] != b"\x93NUMPY" or size is None or len(data) < 8 + size:
        return b""
    end = 8 + size + int.from_bytes(data[8:8 + size], "little")
    return data[:end] if end <= min(len(data), 12 + MAX_NPY_HEADER) else b""


def arrays_from_bytes(blob: bytes | bytearray | memoryview) -> ArrayRecord:
    """Inverse of `arrays_to_bytes`."""
    header, reader = _unframe(blob, ARRAYS_MAGIC)
    try:
        record = _decode_arrays(header.get("arrays"), reader)
    except CodecError:
        raise
    except (TypeError, ValueError) as exc:
        raise CodecError(f"malformed encoding: {str(exc).splitlines()[0]}") from None
    reader.finish()
    return record


# ---------------------------------------------------------------- the final model file

def _npz_entries(record: ArrayRecord) -> Iterator[tuple[str, np.ndarray]]:
    for key, arr in record.items():
        try:
            yield key, arr.numpy()
        except (TypeError, ValueError) as exc:
            raise CodecError(f"array {key!r} cannot be saved as .npy: {exc}") from None


def model_npz(record: ArrayRecord) -> bytes:
    """A `.npz` archive of the arrays, byte-identical for identical arrays (fixed timestamps,
    no compression), so every node's final model file has the same sha256."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for key, array in _npz_entries(record):
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with archive.open(info, "w", force_zip64=True) as member:
                np.lib.format.write_array(member, array, allow_pickle=False)
    return buffer.getvalue()


def save_model(record: ArrayRecord, path: str | Path) -> str:
    """Write `path` (.npz) and `path.sha256` (`sha256sum -c` format), atomically; returns the
    file's sha256."""
    path = Path(path)
    data = model_npz(record)
    digest = hashlib.sha256(data).hexdigest()
    for target, content in ((path, data),
                            (path.with_name(path.name + ".sha256"),
                             f"{digest}  {path.name}\n".encode())):
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_bytes(content)
        os.replace(tmp, target)
    return digest


def load_model(path: str | Path) -> ArrayRecord:
    """Read a `.npz` written by `save_model` (or any `.npz` of plain numeric arrays)."""
    with np.load(path, allow_pickle=False) as archive:
        return ArrayRecord({key: Array(archive[key]) for key in archive.files})

