"""Typed records and bounded decoding: every stored record type round-trips through its one
`to_json`/`from_json`, and every hostile value is refused with a reason, never a crash.

Issue 7, defect 10: a 3 KB value of 1500 nested brackets under the event prefix made every
node exit with RecursionError.
"""

from __future__ import annotations

import json
import logging
import math

import pytest

from raftfl.core.errors import RaftflError
from raftfl.core.events import (
    EVENT_TYPES,
    AggregatorElected,
    CheckpointFallback,
    CheckpointSaved,
    FailoverPaused,
    FailoverResumed,
    FitResults,
    GridExchange,
    Handover,
    MalformedEvent,
    NodeJoined,
    NodeLeft,
    RoundCommitted,
    RoundStarted,
    RunCompleted,
    RunStarted,
    RunStopped,
    StepDown,
    decode,
    describe,
)
from raftfl.core.latency import Sample
from raftfl.core.member_record import MemberInfo
from raftfl.core.records import MAX_DEPTH, MalformedRecord, Skips, loads_bounded, nesting_depth
from raftfl.core.specs import ClusterConfig
from raftfl.etcd.checkpoint import Manifest

DEEP = b"[" * 1500 + b"]" * 1500  # the value from the issue

# -- bounded JSON ---------------------------------------------------------------------------


@pytest.mark.parametrize("raw,ok", [
    (b"[" * MAX_DEPTH + b"]" * MAX_DEPTH, True),
    (b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1), False),
    (DEEP, False),
    (b"[" * 60_000, False),  # unbalanced and deep: refused before parsing
    (json.dumps({"s": "[" * 500 + "{" * 500}).encode(), True),  # brackets in a string do not nest
    (json.dumps({"s": '\\"[[[' + "[" * 40}).encode(), True),  # nor after an escaped quote
    (b'{"a": {"b": [1, 2, {"c": []}]}}', True),
])
def test_nesting_is_bounded_before_parsing(raw: bytes, ok: bool) -> None:
    if ok:
        loads_bounded(raw)
    else:
        with pytest.raises(MalformedRecord, match="nested more than"):
            loads_bounded(raw)


def test_nesting_depth_counts_only_structure() -> None:
    assert nesting_depth('[{"a": "]]]"}, [[]]]', 100) == 3
    assert nesting_depth('"[[[\\"[[["', 100) == 0
    assert nesting_depth("[" * 50, 10) == 11  # stops counting once past the limit


@pytest.mark.parametrize("raw,reason", [
    (b"x" * 70_000, "bytes, more than"),
    (b"\xff\xfe", "not JSON: not UTF-8"),
    (b"{nope", "not JSON"),
])
def test_oversized_and_undecodable_values(raw: bytes, reason: str) -> None:
    with pytest.raises(MalformedRecord, match=reason):
        loads_bounded(raw)


def test_the_issue_value_is_a_skipped_event_not_a_recursion_error() -> None:
    with pytest.raises(MalformedEvent, match="nested"):
        decode(DEEP)


# -- events ---------------------------------------------------------------------------------
SAMPLES: list = [
    RunStarted(node="n1", term=5, rounds=3, initial_model="a" * 64),
    AggregatorElected(node="n1", term=5, flower_address="h:1", rank=0, score=2.5, revision=5,
                      ranking=[{"node": "n1", "score": 2.5, "rtt_ms": None}], previous=None),
    StepDown(node="n1", term=5, reason="lease lost"),
    RoundStarted(node="n1", term=5, round=1, base_model="a" * 64, clients=2),
    FitResults(node="n1", term=5, round=1, results=2, failures=0, num_examples=5000),
    CheckpointSaved(node="n1", term=5, round=1, sha256="b" * 64, size=248_024, chunks=1),
    RoundCommitted(node="n1", term=5, round=1, model_sha256="b" * 64, base_model="a" * 64,
                   loss=float("nan"), accuracy=0.417, results=2),
    CheckpointFallback(node="n2", term=9, bad_sha256="c" * 64, round=2, fallback_round=1,
                       fallback_sha256="b" * 64, reason="hash mismatch"),
    RunCompleted(node="n2", term=9, rounds=3, model_sha256="d" * 64),
    GridExchange(node="n2", term=9, call=3, kind="send_and_receive", request="e" * 64,
                 answer="f" * 64, replies=2),
    RunStopped(node="alice@host", reason="raftfl run stop"),
    NodeJoined(node="n3"),
    NodeLeft(node="n3"),
    Handover(node="n1", term=5, to="n2", round=2, ranked=True, requested_by="alice@host"),
    FailoverPaused(node="alice@host", revision=40, reason="etcd upgrade"),
    FailoverResumed(node="alice@host", revision=40, paused_s=12.5),
]


def test_every_event_type_round_trips_and_is_described() -> None:
    assert {type(ev) for ev in SAMPLES} == set(EVENT_TYPES.values())
    for ev in SAMPLES:
        back = decode(ev.to_json())
        assert type(back) is type(ev)
        # NaN != NaN: compare the encodings instead
        assert back.to_json() == ev.to_json()
        line = describe(ev)
        assert line and "\n" not in line and not line.startswith(ev.type), line
    assert len({describe(ev) for ev in SAMPLES}) == len(SAMPLES)  # one line per type


def test_describe_lines_are_the_demo_lines() -> None:
    committed = RoundCommitted(node="a", term=72, round=2, model_sha256="f" * 64, base_model="e" * 64,
                               loss=1.0, accuracy=0.4172, results=2)
    assert describe(committed) == "round 2 committed: accuracy 0.417 (term 72)"
    elected = AggregatorElected(node="127.0.0.1:29322", term=72, flower_address="h:1", rank=0,
                                score=1.0, revision=70, ranking=[])
    assert describe(elected) == "elected 127.0.0.1:29322 (term 72, rank 0)"
    started = RoundStarted(node="x:1", term=9, round=1, base_model="m", clients=3)
    assert describe(started) == "round 1 started by x:1 with 3 workers"
    assert describe(RunCompleted(node="x", term=9, rounds=4, model_sha256="a602ac8eb7981142" * 4)) \
        == "run completed, model a602ac8eb798"


def _committed(**change: object) -> bytes:
    obj = json.loads(SAMPLES[6].to_json())
    obj.update(change)
    return json.dumps(obj).encode()


@pytest.mark.parametrize("raw,reason", [
    (_committed(round="2"), "field round"),
    (_committed(round=True), "field round"),
    (_committed(round=-1), "negative"),
    (_committed(term=2**70), "field term"),
    (_committed(node=""), "node name"),
    (_committed(node=["a"]), "field node"),
    (_committed(accuracy="high"), "field accuracy"),
    (_committed(model_sha256="x" * 5000), "characters, more than"),
    (_committed(v=2), "schema version 2"),
    (_committed(type="launch_missiles"), "unknown event type"),
    (_committed(type=["round_committed"]), "unknown event type"),
    (json.dumps({k: v for k, v in json.loads(SAMPLES[6].to_json()).items() if k != "round"}).encode(),
     "field round missing"),
    (b'"just a string"', "not a JSON object"),
])
def test_hostile_event_values_are_refused_with_a_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(MalformedEvent, match=reason):
        decode(raw)


def test_unknown_fields_are_ignored_for_newer_writers() -> None:
    newer = decode(_committed(extra={"future": 1}))
    assert isinstance(newer, RoundCommitted)
    assert newer.to_json() == SAMPLES[6].to_json()


# -- the other record types -----------------------------------------------------------------
MEMBER = MemberInfo(node="127.0.0.1:5000", ip="127.0.0.1", client_port=5100,
                    flower_address="127.0.0.1:5200", priority=1.0, cpu_free=0.5, mem_free_mb=900.0)
SAMPLE = Sample("127.0.0.1:5000", 7, 1000.0, {"127.0.0.1:5001": 0.3, "127.0.0.1:5002": None}, "tcp")
CONFIG = ClusterConfig(rounds=3, nodes=["127.0.0.1:5000", "127.0.0.1:5001"], weights={"rtt": 2.0})
MANIFEST = Manifest("a" * 64, 3, 248_024, 1)


def test_records_round_trip() -> None:
    assert MemberInfo.from_json(MEMBER.to_json()) == MEMBER
    assert Sample.from_json(SAMPLE.to_json(), seq=7) == SAMPLE
    assert "seq" not in json.loads(SAMPLE.to_json())  # the key holds it
    assert ClusterConfig.from_json(CONFIG.to_json()) == CONFIG
    assert Manifest.from_json(MANIFEST.to_json()) == MANIFEST


def _with(record: object, **change: object) -> bytes:
    obj = json.loads(record.to_json())  # type: ignore[attr-defined]
    obj.update(change)
    return json.dumps(obj).encode()


@pytest.mark.parametrize("decode_fn,raw,reason", [
    (MemberInfo.from_json, _with(MEMBER, client_port="5100"), "client_port"),
    (MemberInfo.from_json, _with(MEMBER, client_port=0), "client_port 0"),
    (MemberInfo.from_json, _with(MEMBER, priority="high"), "priority"),
    (MemberInfo.from_json, _with(MEMBER, nofailover="no"), "nofailover"),
    (MemberInfo.from_json, _with(MEMBER, node="x'\nenable-pprof: true"), "invalid node name"),
    (MemberInfo.from_json, DEEP, "nested"),
    (MemberInfo.from_json, b"[]", "not a JSON object"),
    (lambda raw: Sample.from_json(raw, 1), _with(SAMPLE, rtt_ms={"p": -5.0}), "RTT to p"),
    (lambda raw: Sample.from_json(raw, 1), _with(SAMPLE, rtt_ms={"p": "fast"}), "rtt_ms"),
    (lambda raw: Sample.from_json(raw, 1), _with(SAMPLE, rtt_ms=[1, 2]), "rtt_ms"),
    (lambda raw: Sample.from_json(raw, 1), _with(SAMPLE, ts=None), "field ts"),
    (Manifest.from_json, _with(MANIFEST, chunks=0), "0 holders"),  # neither chunks nor holders
    (Manifest.from_json, _with(MANIFEST, chunks=0, holders=["h:1"] * 17), "17 holders"),
    (Manifest.from_json, _with(MANIFEST, chunks=0, holders=[""]), "holder address"),
    (Manifest.from_json, _with(MANIFEST, sha256="../../etc"), "not hex"),
    (Manifest.from_json, _with(MANIFEST, size=-1), "negative"),
])
def test_hostile_records_are_refused(decode_fn, raw: bytes, reason: str) -> None:
    with pytest.raises(MalformedRecord, match=reason):
        decode_fn(raw)


@pytest.mark.parametrize("change,reason", [
    ({"nodes": []}, "0 nodes"),
    ({"nodes": "abc"}, "field nodes"),
    ({"nodes": ["a", "a"]}, "twice"),
    ({"nodes": ["../../x"]}, "invalid node name"),
    ({"rounds": 0}, "rounds 0"),
    ({"rounds": 10**9}, "rounds"),
    ({"n_train": 10**9}, "n_train"),
    ({"n_test": 5}, "n_test"),
    ({"batch_size": 0}, "batch_size"),
    ({"epochs": 10**6}, "epochs"),
    ({"lr": float("nan")}, "lr"),
    ({"alpha": -1}, "alpha"),
    ({"seed": -1}, "seed"),
    ({"dataset": "imagenet"}, "dataset"),
    ({"partition": "by-vibes"}, "partition"),
    ({"weights": {"charisma": 1.0}}, "unknown ranking weight"),
    ({"weights": {"rtt": "1"}}, "weights"),
])
def test_run_config_is_range_checked(change: dict, reason: str) -> None:
    raw = _with(CONFIG, **change)
    with pytest.raises(RaftflError, match=reason) as info:
        ClusterConfig.from_json(raw)
    assert str(info.value).startswith("cluster config is unreadable: ")
    assert "\n" not in str(info.value)


def test_run_config_is_checked_when_built_too() -> None:
    with pytest.raises(RaftflError, match="invalid run configuration: 0 nodes"):
        ClusterConfig(rounds=3, nodes=[])
    with pytest.raises(RaftflError, match="n_train"):
        ClusterConfig(rounds=3, nodes=["a:1"], n_train=10**8)


def test_a_writer_cannot_store_what_readers_refuse() -> None:
    member = MemberInfo(node="n:1", ip="127.0.0.1", client_port=1, flower_address="h:1")
    member.cpu_free = math.inf  # mutated after construction, as the session does
    with pytest.raises(ValueError, match="cpu_free"):
        member.to_json()
    with pytest.raises(ValueError, match="negative"):
        RoundStarted(node="a", round=-1, base_model="m", clients=1)


def test_skips_warn_once_per_key_and_count(caplog: pytest.LogCaptureFixture) -> None:
    skips = Skips()
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            skips.skip("member record", "/k/a", "nested more than 16 deep")
        skips.skip("member record", "/k/b", "not JSON")
        skips.skip("latency sample", "/k/c", "not JSON")
    assert skips.counts == {"member record": 2, "latency sample": 1}
    assert len([r for r in caplog.records if "skipping malformed" in r.getMessage()]) == 3
