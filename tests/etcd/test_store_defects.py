"""Issue 7's defects at the etcd edge, on real etcd members: each test fails without its fix.

- #3 a watch whose resume revision was compacted resyncs instead of dying;
- #8 re-saving a checkpoint repairs what is stored (fenced);
- #10 hostile values (deep nesting, oversized, wrong types) are skipped and counted;
- #11 NOSPACE is one clear error, shown by `status`, and retention clears it and keeps the
  database bounded;
- #12 unsafe names are usage errors, and etcd runs from a config whose strings are quoted.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import EtcdCluster, free_port_base
from test_bad_input import _etcdctl, assert_one_line_error, run_cli

from raftfl.core.errors import FencedOut, RaftflError
from raftfl.core.events import AggregatorElected, NodeJoined, RunStarted
from raftfl.core.keys import Keys, RunKeys
from raftfl.core.latency import Sample
from raftfl.core.member_record import MemberInfo
from raftfl.core.records import SKIPS
from raftfl.core.specs import ClusterConfig, RunSpec
from raftfl.etcd import checkpoint, run_store
from raftfl.etcd.clusterconfig import ensure
from raftfl.etcd.context import read_members, read_samples
from raftfl.etcd.eventlog import EventLog
from raftfl.etcd.member import MemberSpec, find_etcd, loopback_specs, running_members
from raftfl.etcd.retention import Retention
from raftfl.etcd.store import Change, EtcdNoSpace, Fence, Resync, Store
from raftfl.inspection import cluster_status, format_status
from raftfl.lab.bench import measure_sizes, serves
from raftfl.node.recorder import KEEP_CHECKPOINTS

DEEP = "[" * 1500 + "]" * 1500  # the value from the issue


def fresh_keys(cluster: EtcdCluster) -> RunKeys:
    return Keys(f"{cluster.name}-{os.urandom(4).hex()}").run(1)


def _pull(it: Iterator, n: int, timeout: float = 20.0) -> list:
    """The next `n` items of a blocking iterator, or fail after `timeout` (never hang)."""
    got: list = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            for _ in range(n):
                got.append(next(it))
        except BaseException as exc:  # noqa: BLE001 - reported below
            error.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not error, error
    assert len(got) == n, f"only {got} within {timeout}s"
    return got


# -- #3 watches across compaction -----------------------------------------------------------


def test_watch_from_a_compacted_revision_starts_with_a_resync(etcd_cluster_module: EtcdCluster) -> None:
    store = etcd_cluster_module.store()
    prefix = fresh_keys(etcd_cluster_module).root + "w/"
    first = store.put(prefix + "k0", "v0")
    for i in range(1, 4):
        store.put(prefix + f"k{i}", f"v{i}")
    store.delete(prefix + "k0")
    store.compact(store.revision())
    stop = threading.Event()
    watch = store.watch(prefix, first, stop)
    try:
        (resync,) = _pull(watch, 1)
        assert isinstance(resync, Resync)
        assert resync.since == first and resync.revision >= first + 4
        assert [(kv.key, kv.value) for kv in resync.kvs] == [
            (prefix + f"k{i}", f"v{i}".encode()) for i in range(1, 4)]
        later = store.put(prefix + "k9", "v9")
        (change,) = _pull(watch, 1)
        assert change == Change(prefix + "k9", b"v9", later, later)
    finally:
        stop.set()
        watch.close()


def test_event_tail_survives_compaction_while_its_member_is_down(etcd_cluster: EtcdCluster) -> None:
    """The issue's case: the watch must resume (its member died) at a revision compacted
    meanwhile. Every event is delivered exactly once, in order; the tail never dies."""
    keys = fresh_keys(etcd_cluster)
    writer = EventLog(etcd_cluster.store(etcd_cluster.rotated_endpoints(1)), keys)
    reader = EventLog(etcd_cluster.store(etcd_cluster.rotated_endpoints(0)), keys)
    events = [NodeJoined(node=f"n{i}") for i in range(6)]
    stop = threading.Event()
    tail = reader.tail(writer.store.revision() + 1, stop)
    try:
        writer.append(events[0])
        assert [item.event for item in _pull(tail, 1)] == events[:1]
        etcd_cluster.kill(0)  # the tail's member: its watch must be re-created elsewhere
        for ev in events[1:4]:
            writer.append(ev)
        writer.store.compact(writer.store.revision())  # ... from a revision now compacted
        assert [item.event for item in _pull(tail, 3, timeout=30)] == events[1:4]
        for ev in events[4:]:
            writer.append(ev)
        assert [item.event for item in _pull(tail, 2)] == events[4:]
    finally:
        stop.set()
        tail.close()


# -- #8 checkpoint re-save -------------------------------------------------------------------


def test_resave_repairs_a_corrupt_checkpoint(etcd_cluster_module: EtcdCluster) -> None:
    store = etcd_cluster_module.store()
    keys = fresh_keys(etcd_cluster_module)
    blob = os.urandom(3 * 1024 + 5)
    manifest = checkpoint.save(store, keys, blob, 1, None, chunk_bytes=1024)
    assert manifest.chunks == 4
    store.put(keys.checkpoint_chunk(manifest.sha256, 1), b"bit rot")
    store.delete(keys.checkpoint_chunk(manifest.sha256, 3))
    store.put(keys.checkpoint_meta(manifest.sha256), DEEP)
    with pytest.raises(checkpoint.CorruptCheckpoint):
        checkpoint.load(store, keys, manifest.sha256)

    checkpoint.save(store, keys, blob, 1, None, chunk_bytes=1024)  # e.g. after a fallback
    assert checkpoint.load(store, keys, manifest.sha256) == blob

    # An intact checkpoint is verified, not rewritten.
    before = store.range(keys.checkpoints)[0]
    checkpoint.save(store, keys, blob, 5, None, chunk_bytes=1024)
    assert store.range(keys.checkpoints)[0] == before


def test_checkpoint_repair_is_fenced(etcd_cluster_module: EtcdCluster) -> None:
    store = etcd_cluster_module.store()
    keys = fresh_keys(etcd_cluster_module)
    store.create(keys.aggregator, "holder")
    role = store.get(keys.aggregator)
    assert role is not None
    fence = Fence(keys.aggregator, role.create_revision)
    blob = os.urandom(2048)
    manifest = checkpoint.save(store, keys, blob, 1, fence, chunk_bytes=1024)
    chunk = keys.checkpoint_chunk(manifest.sha256, 0)
    store.put(chunk, b"bit rot")
    deposed = Fence(keys.aggregator, role.create_revision - 1)
    with pytest.raises(FencedOut):
        checkpoint.save(store, keys, blob, 1, deposed, chunk_bytes=1024)
    assert store.get(chunk).value == b"bit rot"  # type: ignore[union-attr]
    checkpoint.save(store, keys, blob, 1, fence, chunk_bytes=1024)
    assert checkpoint.load(store, keys, manifest.sha256) == blob


# -- #10 hostile values ----------------------------------------------------------------------


def test_hostile_values_are_skipped_and_counted(etcd_cluster_module: EtcdCluster, tmp_path: Path) -> None:
    cluster = etcd_cluster_module
    store = cluster.store()
    keys = fresh_keys(cluster)
    log = EventLog(store, keys)
    term = store.revision()
    log.append(AggregatorElected(node="a:1", term=term, flower_address="h:1", rank=0, score=1.0,
                                 revision=term, ranking=[]))
    log.append(RunStarted(node="a:1", term=term, rounds=2, initial_model="m0"))
    stop = threading.Event()
    tail = log.tail(store.revision() + 1, stop)
    hostile = {keys.event(3): DEEP, keys.event(4): "x" * 70_000,
               keys.event(5): json.dumps({"v": 1, "type": "node_joined", "node": {"deep": [[]]}})}
    for key, value in hostile.items():
        _etcdctl(cluster.endpoints, "put", key, value)  # as in the issue: by hand, with etcdctl
    log.append(NodeJoined(node="b:1"))
    try:
        # A live reader (the tail every node runs) skips them and goes on.
        assert [item.event.node for item in _pull(tail, 1)] == ["b:1"]
    finally:
        stop.set()
        tail.close()
    read = log.read()
    assert [item.seq for item in read.events] == [1, 2, 6]
    assert dict(read.skipped).keys() == hostile.keys()
    assert "nested" in dict(read.skipped)[keys.event(3)]
    assert "bytes, more than" in dict(read.skipped)[keys.event(4)]
    state, _ = log.current()
    assert state.rounds == 2 and state.events == 3

    # Member records and latency samples of the wrong shape are skipped, counted, not ranked.
    good = MemberInfo(node="a:1", ip="127.0.0.1", client_port=1, flower_address="h:1")
    store.put(keys.member("a:1"), good.to_json())
    bad_members = {"b:1": DEEP, "c:1": json.dumps({**good.to_dict(), "node": "c:1", "client_port": "1"}),
                   "d:1": json.dumps({**good.to_dict(), "node": "someone-else:1"})}
    for node, value in bad_members.items():
        store.put(keys.member(node), value)
    store.put(keys.latency_sample("a:1", 1), Sample("a:1", 1, 1.0, {"c:1": 0.5}, "tcp").to_json())
    store.put(keys.latency_sample("b:1", 1), json.dumps({"node": "b:1", "ts": 1.0, "method": "tcp",
                                                         "rtt_ms": {"a:1": -100.0}}))
    store.put(keys.latency_sample("c:1", 1), DEEP)
    members_before = SKIPS.counts["member record"]
    assert list(read_members(store, keys)) == ["a:1"]
    assert [s.node for s in read_samples(store, keys)] == ["a:1"]
    assert SKIPS.counts["member record"] == members_before + 3
    read_members(store, keys)
    assert SKIPS.counts["member record"] == members_before + 3  # once per key, not per read

    # The CLI readers too (of run 1, given a spec): one line per skipped event, exit 0.
    spec = RunSpec(app="x", app_sha256=hashlib.sha256(b"pkg").hexdigest(), run_config={})
    assert run_store.submit(store, keys, spec, b"pkg", run_id=1) == 1
    args = ["--endpoints", ",".join(cluster.endpoints), "--cluster", keys.cluster]
    proc = run_cli(["history", *args], tmp_path)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert sum('"skipped"' in line for line in proc.stdout.splitlines()) == 3
    proc = run_cli(["status", *args], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "skipped as malformed: 3 events, 3 member record, 2 latency sample" in proc.stdout


@pytest.mark.parametrize("value,reason", [
    (DEEP, "nested more than 16 deep"),
    (json.dumps({"rounds": 3, "nodes": []}), "0 nodes"),
    (json.dumps({"rounds": 3, "nodes": ["a:1"], "n_train": 10**9}), "n_train"),
    (json.dumps({"rounds": 3, "nodes": ["a:1"], "weights": {"luck": 1}}), "unknown ranking weight"),
])
def test_a_hostile_run_config_is_refused_in_one_line(etcd_cluster_module: EtcdCluster, value: str,
                                                     reason: str) -> None:
    store = etcd_cluster_module.store()
    keys = fresh_keys(etcd_cluster_module)
    store.put(keys.config, value)
    with pytest.raises(RaftflError, match=reason) as info:
        ensure(store, keys, ClusterConfig(rounds=3, nodes=["a:1"]))
    assert str(info.value).startswith("cluster config is unreadable") and "\n" not in str(info.value)


# -- #11 NOSPACE and retention ---------------------------------------------------------------


def test_nospace_is_one_clear_error_shown_by_status_and_cleared_by_retention(tmp_path: Path) -> None:
    specs = loopback_specs(tmp_path / "etcd", "nospace", 1, free_port_base(2), quota_bytes=2**20)
    with running_members(specs, find_etcd(), serves):
        endpoint = specs[0].client_endpoint
        store = Store([endpoint], retry_for=5)
        keys = Keys("nospace").run(1)
        log = EventLog(store, keys)
        try:
            with pytest.raises(EtcdNoSpace) as info:
                for i in range(50):  # a 1 MiB quota: a few 200 kB values fill it
                    store.put(keys.root + f"fill/{i % 4}", os.urandom(200_000))
            message = str(info.value)
            assert "\n" not in message and "NOSPACE" in message
            for fix in (f"--endpoints={endpoint}", "compact", "defrag", "alarm disarm",
                        "quota-backend-bytes"):
                assert fix in message
            assert [kind for _, kind in store.alarms()] == ["NOSPACE"]
            with pytest.raises(EtcdNoSpace):  # what the aggregator's next append meets
                log.append(NodeJoined(node="a:1"))

            info_ = cluster_status([endpoint], "nospace")
            assert info_["alarms"] == [{"member": "m0", "alarm": "NOSPACE"}]
            assert "ALARM NOSPACE on m0: free space with" in format_status(info_)
            proc = run_cli(["status", "--endpoints", endpoint, "--cluster", "nospace"], tmp_path)
            assert proc.returncode == 0 and "ALARM NOSPACE on m0" in proc.stdout, proc.stderr

            store.delete_prefix(keys.root + "fill/")  # deletes are allowed under the alarm
            report = Retention(store, every=1).run()
            assert report.disarmed and report.defragmented == [endpoint]
            assert report.compacted_to is not None
            assert store.alarms() == []
            assert report.db_sizes[endpoint] < 2**20
            assert log.append(NodeJoined(node="a:1")) == 1
        finally:
            store.close()


def test_retention_keeps_the_database_bounded(tmp_path: Path) -> None:
    """40 rounds of 512 kB checkpoints: without retention the file passes 20 MiB."""
    every, model = 5, 512 * 1024
    rows, committed = measure_sizes(rounds=40, every=every, model_bytes=model, workdir=tmp_path)
    assert committed == list(range(1, 41))  # compaction never touches the event log
    sizes = [r.db_size_max for r in rows]
    bound = (KEEP_CHECKPOINTS + 2 * every) * model + 4 * 2**20
    assert max(sizes[20:]) <= bound, [round(s / 2**20, 1) for s in sizes]
    assert sizes[-1] <= 1.25 * max(sizes[10:20]), [round(s / 2**20, 1) for s in sizes]
    assert any(r.compacted_to for r in rows)


# -- #12 names and quoting -------------------------------------------------------------------

INJECTION = "x'\nenable-pprof: true"


@pytest.mark.parametrize("args,needle", [
    (["node", "start", "-a", "self", "-r", "1", "-s", "127.0.0.1:5000", "--cluster", INJECTION],
     "invalid cluster name"),
    (["node", "start", "-a", "self", "-r", "1", "-s", "127.0.0.1:5000", "--cluster", "../../x"],
     "invalid cluster name"),
    (["node", "start", "-a", "self", "-r", "1", "-s", "x'\nenable-pprof: true:5000"],
     "invalid node address"),
    (["status", "--endpoints", "127.0.0.1:1", "--cluster", "../../x"], "invalid cluster name"),
    (["node", "leave", "-s", "127.0.0.1:5000", "-n", "127.0.0.1:5001", "--cluster", "a/b"],
     "invalid cluster name"),
])
def test_unsafe_names_are_usage_errors(args: list[str], needle: str, tmp_path: Path) -> None:
    proc = run_cli(args, tmp_path)
    assert_one_line_error(proc, 2, needle)
    assert list(tmp_path.iterdir()) == []  # no data dir, inside the root or outside it


def test_etcd_runs_from_a_config_whose_strings_are_quoted(tmp_path: Path) -> None:
    """A data dir path with quotes and YAML syntax in it: etcd reads it as one string (the
    old single-quoted template ended the value at the quote). etcd itself refuses control
    characters in its log path, so the newline injection is checked on the rendering."""
    data_dir = tmp_path / "it's \"here\" ü" / "x': enable-pprof: true"
    base = free_port_base(2)
    spec = MemberSpec(name="m0", cluster="quoted", data_dir=data_dir, ip="127.0.0.1",
                      peer_port=base, client_port=base + 1,
                      initial_cluster={"m0": f"http://127.0.0.1:{base}"})
    with running_members([spec], find_etcd(), serves):
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(f"http://{spec.client_endpoint}/debug/pprof/", timeout=5)
        assert info.value.code == 404
        assert (data_dir / "member-data" / "member").is_dir()
    for path in (data_dir, data_dir.parent):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700, path
    assert stat.S_IMODE((data_dir / "etcd.yml").stat().st_mode) == 0o600
