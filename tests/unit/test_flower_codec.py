"""The Flower codec: Messages and records round-trip exactly; malformed bytes are one CodecError."""

from __future__ import annotations

import hashlib
import json
import struct

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, Metadata, MetricRecord, RecordDict

from raftfl.flower.codec import (
    MESSAGE_MAGIC,
    CodecError,
    arrays_from_bytes,
    arrays_sha256,
    arrays_to_bytes,
    checked_numpy,
    decode_message,
    encode_message,
    load_model,
    model_npz,
    save_model,
)
from raftfl.flower.grid import Stamp

CONFIG_VALUES = {
    "int": 3, "negative": -(2**62), "float": 0.25, "whole float": 2.0, "str": "héllo",
    "bool": True, "false": False, "bytes": b"\x00\xff", "empty bytes": b"",
    "ints": [1, 2, 3], "floats": [0.5, 1.5], "strs": ["a", ""], "bools": [True, False],
    "bytes list": [b"a", b"", b"\x01\x02"], "empty list": [],
}


def _metadata(**overrides: object) -> Metadata:
    fields = dict(run_id=7, message_id="m-1", src_node_id=1, dst_node_id=12,
                  reply_to_message_id="", group_id="g", created_at=1700000000.5, ttl=60.0,
                  message_type="train")
    fields.update(overrides)
    return Metadata(**fields)


def _arrays() -> ArrayRecord:
    return ArrayRecord({
        "conv.weight": Array(np.arange(24, dtype=np.float32).reshape(2, 3, 4)),
        "bias": Array(np.array([1, -2], dtype=np.int64)),
        "empty": Array(np.zeros((0, 3))),
        "raw": Array(dtype="bfloat16", shape=(2,), stype="custom", data=b"\x01\x02\x03\x04"),
    })


def _message() -> Message:
    content = RecordDict({"arrays": _arrays(), "config": ConfigRecord(dict(CONFIG_VALUES)),
                          "metrics": MetricRecord({"loss": 0.5, "n": 3, "hist": [0.1, 0.2]})})
    return Message(metadata=_metadata(), content=content)


def _same_values(a: object, b: object) -> bool:
    return type(a) is type(b) and (a == b if not isinstance(a, list)
                                   else all(_same_values(x, y) for x, y in zip(a, b, strict=True)))


def test_message_round_trip_keeps_every_type() -> None:
    message = _message()
    decoded, extra = decode_message(encode_message(message, {"term": 4}))
    assert extra == {"term": 4}
    assert decoded.metadata == message.metadata
    assert list(decoded.content.keys()) == ["arrays", "config", "metrics"]
    assert decoded.content["arrays"] == message.content["arrays"]
    for key, value in CONFIG_VALUES.items():
        assert _same_values(decoded.content["config"][key], value), key
    assert dict(decoded.content["metrics"]) == {"loss": 0.5, "n": 3, "hist": [0.1, 0.2]}
    np.testing.assert_array_equal(decoded.content["arrays"]["conv.weight"].numpy(),
                                  np.arange(24, dtype=np.float32).reshape(2, 3, 4))


def test_nan_and_infinity_survive() -> None:
    message = Message(metadata=_metadata(),
                      content=RecordDict({"m": MetricRecord({"a": float("nan"), "b": float("inf")})}))
    decoded, _ = decode_message(encode_message(message))
    assert np.isnan(decoded.content["m"]["a"]) and decoded.content["m"]["b"] == float("inf")


def test_error_reply_and_metadata_overrides() -> None:
    reply = Message(metadata=_metadata(reply_to_message_id="m-1", src_node_id=12, dst_node_id=1),
                    error=Error(2, "boom"))
    decoded, extra = decode_message(encode_message(reply, meta={"run_id": 9}),
                                    meta={"message_id": "assigned"})
    assert extra == {}
    assert decoded.has_error() and (decoded.error.code, decoded.error.reason) == (2, "boom")
    assert (decoded.metadata.run_id, decoded.metadata.message_id) == (9, "assigned")
    assert decoded.metadata.reply_to_message_id == "m-1"


def test_empty_content_round_trips() -> None:
    decoded, _ = decode_message(encode_message(Message(metadata=_metadata(), content=RecordDict())))
    assert decoded.has_content() and len(decoded.content) == 0


def test_numpy_scalars_flower_accepts_are_sent_as_python_values() -> None:
    record = MetricRecord({"mean": np.float64(0.25), "list": [np.float64(1.5), np.float64(2.0)]})
    message = Message(metadata=_metadata(), content=RecordDict({"m": record}))
    decoded, _ = decode_message(encode_message(message))
    assert _same_values(decoded.content["m"]["mean"], 0.25)
    assert _same_values(decoded.content["m"]["list"], [1.5, 2.0])


def _frame(header: dict, blobs: bytes = b"", magic: bytes = MESSAGE_MAGIC) -> bytes:
    head = json.dumps(header).encode()
    return magic + struct.pack("<I", len(head)) + head + blobs


def _header(**changes: object) -> dict:
    header = json.loads(encode_message(_message())[12:12 + struct.unpack_from(
        "<I", encode_message(_message()), 8)[0]])
    header.update(changes)
    return header


GOOD = encode_message(_message())
META = _header()["meta"]

MALFORMED = {
    "empty": b"",
    "not bytes": "text",
    "bad magic": b"RAFTFLX1" + GOOD[8:],
    "arrays magic": arrays_to_bytes(_arrays()),
    "truncated length": GOOD[:10],
    "truncated header": GOOD[:40],
    "truncated blobs": GOOD[:-1],
    "trailing bytes": GOOD + b"\x00",
    "header not json": MESSAGE_MAGIC + struct.pack("<I", 3) + b"{x}",
    "header length huge": MESSAGE_MAGIC + struct.pack("<I", 0xFFFFFFFF),
    "header is a list": _frame([]),  # type: ignore[arg-type]
    "unknown version": _frame(_header(v=2)),
    "metadata missing": _frame(_header(meta={"run_id": 1})),
    "metadata wrong type": _frame(_header(meta={**META, "run_id": "7"})),
    "bad message type": _frame(_header(meta={**META, "message_type": "rm -rf"})),
    "records not a list": _frame(_header(records={"a": 1})),
    "record bad kind": _frame(_header(records=[["r", "pickles", []]])),
    "record short": _frame(_header(records=[["r", "configs"]])),
    "value bad tag": _frame(_header(records=[["r", "configs", [["k", "z", 1]]]])),
    "value wrong type": _frame(_header(records=[["r", "configs", [["k", "i", "1"]]]])),
    "bool as int": _frame(_header(records=[["r", "configs", [["k", "i", True]]]])),
    "int too large": _frame(_header(records=[["r", "metrics", [["k", "i", 2**70]]]])),
    "list mixed": _frame(_header(records=[["r", "configs", [["k", "li", [1, "a"]]]]])),
    "bytes past end": _frame(_header(records=[["r", "configs", [["k", "y", 5]]]]), b"ab"),
    "negative size": _frame(_header(records=[["r", "configs", [["k", "y", -1]]]])),
    "array bad shape": _frame(_header(records=[["a", "arrays", [["w", "f4", [-1], "s", 0]]]])),
    "array shape rank": _frame(_header(records=[["a", "arrays", [["w", "f4", [1] * 40, "s", 0]]]])),
    "array entry short": _frame(_header(records=[["a", "arrays", [["w", "f4"]]]])),
    "too many records": _frame(_header(records=[["r", "metrics", []]] * 2000)),
    "error and records": _frame(_header(error={"code": 1, "reason": "x"})),
    "error code text": _frame(_header(records=[], error={"code": "1", "reason": None})),
    "extra not object": _frame(_header(extra=[1])),
    "non-string key": _frame(_header(records=[[5, "metrics", []]])),
}


@pytest.mark.parametrize("blob", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_input_is_one_codec_error(blob: bytes) -> None:
    with pytest.raises(CodecError) as info:
        decode_message(blob)
    assert "\n" not in str(info.value)


def test_arrays_blob_is_canonical() -> None:
    blob = arrays_to_bytes(_arrays())
    assert arrays_to_bytes(_arrays()) == blob  # same arrays, same bytes
    assert arrays_sha256(_arrays()) == hashlib.sha256(blob).hexdigest()
    assert arrays_from_bytes(blob) == _arrays()
    changed = _arrays()
    changed["bias"] = Array(np.array([1, -3], dtype=np.int64))
    assert arrays_sha256(changed) != arrays_sha256(_arrays())
    renamed = ArrayRecord({("b" if k == "bias" else k): v for k, v in _arrays().items()})
    assert arrays_sha256(renamed) != arrays_sha256(_arrays())


@pytest.mark.parametrize("blob", [b"", b"RAFTFLA1", arrays_to_bytes(_arrays())[:-3],
                                  arrays_to_bytes(_arrays()) + b"!", GOOD])
def test_malformed_arrays_blob(blob: bytes) -> None:
    with pytest.raises(CodecError):
        arrays_from_bytes(blob)


def test_model_file_is_deterministic_and_loads(tmp_path) -> None:
    record = ArrayRecord({"a": Array(np.ones((2, 2), dtype=np.float32)),
                          "b": Array(np.arange(3))})
    digest = save_model(record, tmp_path / "final_model.npz")
    assert digest == hashlib.sha256((tmp_path / "final_model.npz").read_bytes()).hexdigest()
    assert (tmp_path / "final_model.npz.sha256").read_text() == f"{digest}  final_model.npz\n"
    assert hashlib.sha256(model_npz(record)).hexdigest() == digest  # same arrays, same file
    with np.load(tmp_path / "final_model.npz") as archive:  # plain numpy reads it
        np.testing.assert_array_equal(archive["b"], np.arange(3))
    assert load_model(tmp_path / "final_model.npz") == record
    with pytest.raises(CodecError, match="cannot be saved"):
        model_npz(ArrayRecord({"x": Array(dtype="f4", shape=(1,), stype="custom", data=b"1234")}))


@pytest.mark.parametrize("raw", [None, [], {"run_id": 1}, {"run_id": 1, "term": 2, "round": 3},
                                 {"run_id": 1, "term": "2", "round": 3, "base": ""},
                                 {"run_id": 1, "term": 2, "round": 3, "base": "", "x": 1}])
def test_malformed_stamp(raw: object) -> None:
    with pytest.raises(CodecError, match="stamp"):
        Stamp.from_json(raw)


def test_stamp_round_trip() -> None:
    stamp = Stamp(run_id=1, term=2, round=3, base="ab")
    assert Stamp.from_json(stamp.to_json()) == stamp


def _npy_v2(value: np.ndarray) -> Array:
    """`value` saved with a .npy 2.0 header (numpy writes 1.0 unless the header is large)."""
    import io

    buf = io.BytesIO()
    np.lib.format.write_array(buf, value, version=(2, 0))
    return Array(dtype=str(value.dtype), shape=tuple(value.shape), stype="numpy.ndarray",
                 data=buf.getvalue())


NPY_CASES = {
    "float32 vector": Array(np.arange(1000, dtype=np.float32)),
    "C-ordered matrix": Array(np.arange(12.0).reshape(3, 4)),
    "Fortran-ordered matrix": Array(np.asfortranarray(np.arange(12).reshape(3, 4))),
    "0-d": Array(np.array(3.5)),
    "empty": Array(np.zeros((0, 5), np.float32)),
    "big-endian": Array(np.arange(6, dtype=">i4").reshape(2, 3)),
    "bool": Array(np.array([True, False, True])),
    "a 2.0 header": _npy_v2(np.arange(4, dtype=np.int16)),
    "a zero-size dtype": _npy_v2(np.zeros(3, dtype=[])),
}


@pytest.mark.parametrize("array", NPY_CASES.values(), ids=NPY_CASES.keys())
def test_checked_numpy_is_array_numpy_also_from_its_kept_header(array: Array) -> None:
    expected = array.numpy()
    for _ in range(2):  # the second read takes the header's parse from the first
        got = checked_numpy(array)
        assert got.dtype == expected.dtype and got.shape == expected.shape
        assert np.array_equal(got, expected)
        assert got.flags.writeable and got.flags.f_contiguous == expected.flags.f_contiguous


def test_a_kept_header_over_other_bytes_is_still_refused() -> None:
    good = Array(np.arange(8, dtype=np.float32))
    checked_numpy(good)
    short = Array(dtype=good.dtype, shape=good.shape, stype=good.stype, data=good.data[:-4])
    with pytest.raises(CodecError, match="does not describe its data"):
        checked_numpy(short)
    long = Array(dtype=good.dtype, shape=good.shape, stype=good.stype, data=good.data + b"\0")
    with pytest.raises(CodecError, match="does not describe its data"):
        checked_numpy(long)
