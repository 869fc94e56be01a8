"""Foundation tests on a real 3-member etcd cluster: the event log, fencing, failover,
lease-bound presence and latency, malformed data, ranking and the etcd member lifecycle.

Each test asserts an outcome that a broken implementation would get wrong.
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import EtcdCluster, free_port_base, running_cluster

from raftfl.core.errors import FencedOut, RaftflError
from raftfl.core.events import AggregatorElected, RoundCommitted, RoundStarted, RunStarted
from raftfl.core.keys import Keys, RunKeys
from raftfl.core.latency import Sample
from raftfl.core.member_record import MemberInfo
from raftfl.etcd.context import append_sample, read_members, read_samples
from raftfl.etcd.eventlog import EventLog
from raftfl.etcd.member import MemberSpec, check_version, find_etcd, prepare_data_dir
from raftfl.etcd.store import CreateResult, EtcdUnavailable, Fence, wait_until
from raftfl.net.ports import check_port_free
from raftfl.node.session import Session

ROOT = Path(__file__).resolve().parents[2]


def fresh_keys(cluster: EtcdCluster) -> RunKeys:
    """A key namespace of its own for each test sharing the module cluster (its run 1)."""
    return Keys(f"{cluster.name}-{os.urandom(4).hex()}").run(1)


def elected(term: int) -> AggregatorElected:
    return AggregatorElected(node="a", term=term, flower_address="a:1", rank=0, score=0.0,
                             revision=term, ranking=[])


def history(n_rounds: int) -> list:
    """A clean run: started, elected (term 1: no key is created before revision 2, so replay
    finds the term plausible), then each round started and committed on the previous model."""
    events: list = [RunStarted(node="a", rounds=n_rounds + 1, initial_model="m0"), elected(1)]
    for r in range(1, n_rounds + 1):
        events.append(RoundStarted(node="a", term=1, round=r, base_model=f"m{r - 1}", clients=3))
        events.append(RoundCommitted(node="a", term=1, round=r, model_sha256=f"m{r}",
                                     base_model=f"m{r - 1}", loss=1.0 / r, accuracy=0.5,
                                     results=3))
    return events


# -- event log -------------------------------------------------------------------------------
def test_append_then_state_replays_the_log(etcd_cluster_module: EtcdCluster) -> None:
    keys = fresh_keys(etcd_cluster_module)
    log = EventLog(etcd_cluster_module.store(), keys)
    events = history(2)
    seqs = [log.append(ev) for ev in events]
    assert seqs == [1, 2, 3, 4, 5, 6]

    state, revision = log.state()
    assert revision > 0
    assert state.rounds == 3
    assert state.initial_model == "m0"
    assert state.commit_order == [1, 2]
    assert state.last_model == "m2"
    assert state.next_round == 3
    assert state.started == {1: 1, 2: 1}
    assert state.chain_breaks == [] and state.duplicate_commits == [] and state.stale_commits == []
    assert state.last_seq == 6 and state.events == 6
    assert not state.done

    # What was read back is exactly what was appended, in order.
    read = log.read()
    assert [item.seq for item in read.events] == seqs
    assert [item.event for item in read.events] == events
    assert read.skipped == []

    # A second reader (another Store, another member first) sees the same state.
    other = EventLog(etcd_cluster_module.store(etcd_cluster_module.rotated_endpoints(2)), keys)
    assert other.state()[0] == state

    # The incremental view (what the HA loop uses) fetches only new events, same fold.
    assert other.current()[0] == state
    more = history(3)[len(events):]
    for ev in more:
        log.append(ev)
    assert more and other.current()[0] == log.state()[0]
    assert other.current()[0].commit_order == [1, 2, 3]


# -- never overwrite -------------------------------------------------------------------------
def test_create_never_overwrites(etcd_cluster_module: EtcdCluster) -> None:
    store = etcd_cluster_module.store()
    key = fresh_keys(etcd_cluster_module).root + "once"
    assert store.create(key, "first") is CreateResult.CREATED
    before = store.get(key)
    assert before is not None and before.value == b"first"

    assert store.create(key, "second") is CreateResult.EXISTS
    after = store.get(key)
    assert after == before  # value, create and mod revision all unchanged


def test_concurrent_appends_are_contiguous_and_lossless(etcd_cluster_module: EtcdCluster) -> None:
    cluster = etcd_cluster_module
    keys = fresh_keys(cluster)
    per_writer = 20
    writers = [EventLog(cluster.store(cluster.rotated_endpoints(i)), keys) for i in range(2)]
    appended: list[list[tuple[int, str]]] = [[], []]
    errors: list[BaseException] = []
    go = threading.Barrier(2)

    def write(i: int) -> None:
        try:
            go.wait(5)
            for n in range(per_writer):
                ev = RoundStarted(node=f"w{i}", round=n, base_model="m", clients=1)
                appended[i].append((writers[i].append(ev), ev.id))
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert not any(t.is_alive() for t in threads)

    read = EventLog(cluster.store(), keys).read()
    assert read.skipped == []
    assert [item.seq for item in read.events] == list(range(1, 2 * per_writer + 1))
    stored = {item.event.id: item.seq for item in read.events}
    mine = dict((ev_id, seq) for pairs in appended for seq, ev_id in pairs)
    assert len(stored) == 2 * per_writer  # no event written twice
    assert stored == mine  # every append landed, at the seq its writer was told
    for pairs in appended:  # each writer's events keep their order
        assert [seq for seq, _ in pairs] == sorted(seq for seq, _ in pairs)


# -- fencing ---------------------------------------------------------------------------------
def test_stale_fence_is_rejected(etcd_cluster_module: EtcdCluster) -> None:
    store = etcd_cluster_module.store()
    keys = fresh_keys(etcd_cluster_module)
    log = EventLog(store, keys)
    log.append(RunStarted(node="a", rounds=2, initial_model="m0"))

    lease = store.grant(10)
    assert store.create(keys.aggregator, "a", lease=lease) is CreateResult.CREATED
    old = store.get(keys.aggregator)
    assert old is not None
    old_term = old.create_revision
    assert store.delete(keys.aggregator)
    assert store.create(keys.aggregator, "b", lease=lease) is CreateResult.CREATED
    new = store.get(keys.aggregator)
    assert new is not None and new.create_revision > old_term
    before = log.read()

    with pytest.raises(FencedOut):
        log.append(RoundStarted(node="a", term=old_term, round=1, base_model="m0", clients=2),
                   fence=Fence(keys.aggregator, old_term))
    after = log.read()
    assert [i.event for i in after.events] == [i.event for i in before.events]
    assert after.revision == before.revision  # nothing at all was written
    assert store.get(keys.event(2)) is None

    ok = RoundStarted(node="b", term=new.create_revision, round=1, base_model="m0", clients=2)
    assert log.append(ok, fence=Fence(keys.aggregator, new.create_revision)) == 2
    assert [i.event for i in log.read().events][-1] == ok

    # A vacant role fences out everyone, including the last holder.
    store.revoke(lease)
    assert store.get(keys.aggregator) is None
    with pytest.raises(FencedOut):
        log.append(RoundStarted(node="b", term=new.create_revision, round=2, base_model="m1",
                                clients=2), fence=Fence(keys.aggregator, new.create_revision))
    assert len(log.read().events) == 2


# -- failover --------------------------------------------------------------------------------
def test_client_and_watch_survive_killing_their_member(etcd_cluster: EtcdCluster) -> None:
    cluster = etcd_cluster
    store = cluster.store(retry_for=15.0)
    prefix = fresh_keys(cluster).root + "watched/"
    store.put(prefix + "warmup", "0")
    victim_ep = store.client.endpoint_in_use.netloc
    victim = cluster.endpoints.index(victim_ep)
    _, rev = store.range(prefix)

    seen: list = []
    stop = threading.Event()
    failure: list[BaseException] = []

    def watch() -> None:
        try:
            for change in store.watch(prefix, rev + 1, stop):
                seen.append(change)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            failure.append(exc)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        written: list[tuple[str, int]] = []
        for i in range(5):
            written.append((f"{prefix}k{i:02d}", store.put(f"{prefix}k{i:02d}", f"v{i}")))
        assert wait_until(lambda: len(seen) >= 5, 10), "watch delivered nothing before the kill"
        assert store.client.endpoint_in_use.netloc == victim_ep  # the watch lives on the victim

        pid = cluster.kill(victim)
        assert not cluster.members[victim].alive()
        assert not Path(f"/proc/{pid}").exists()  # reaped: no zombie left behind

        started = time.monotonic()
        for i in range(5, 15):
            written.append((f"{prefix}k{i:02d}", store.put(f"{prefix}k{i:02d}", f"v{i}")))
        kv = store.get(f"{prefix}k14")
        assert kv is not None and kv.value == b"v14"
        assert time.monotonic() - started < store.retry_for
        assert store.client.endpoint_in_use.netloc != victim_ep

        assert wait_until(lambda: len(seen) >= len(written), 20), \
            f"watch stalled after the kill: {len(seen)}/{len(written)} changes"
        time.sleep(1.0)  # room for a duplicate to show up after a re-opened watch
    finally:
        stop.set()
        watcher.join(10)
    assert not failure, failure
    assert not watcher.is_alive()
    got = [(c.key, c.revision) for c in seen]
    assert got == written  # every change exactly once, in revision order
    assert all(c.value == f"v{i}".encode() for i, c in enumerate(seen))


# -- presence and latency --------------------------------------------------------------------
def _nodes_with_full_samples(samples: list[Sample], nodes: set[str]) -> set[str]:
    return {s.node for s in samples if set(s.rtt_ms) == nodes - {s.node}}


def test_latency_samples_replicate_and_vanish_with_the_lease(etcd_cluster_module: EtcdCluster) -> None:
    cluster = etcd_cluster_module
    keys = fresh_keys(cluster)
    nodes = [f"n{i}" for i in range(3)]
    lost: list[str] = []
    sessions = []
    for i, node in enumerate(nodes):
        info = MemberInfo(node=node, ip="127.0.0.1", client_port=cluster.members[i].spec.client_port,
                          flower_address=f"127.0.0.1:{cluster.members[i].spec.client_port + 1000}")
        sessions.append(Session(cluster.store(cluster.rotated_endpoints(i)), keys, info, ttl=5,
                                on_lost=lambda n=node: lost.append(n), probe_interval=0.3))
    own = [cluster.store_for(i) for i in range(3)]
    try:
        for s in sessions:
            s.open()
        for s in sessions:
            s.start()

        def everywhere() -> bool:
            return all(_nodes_with_full_samples(read_samples(st, keys), set(nodes)) == set(nodes)
                       for st in own)

        assert wait_until(everywhere, 15, 0.2), "samples of some node missing on some member"
        for st in own:
            assert set(read_members(st, keys)) == set(nodes)
            samples = read_samples(st, keys)
            assert {s.node for s in samples} == set(nodes)
            for s in samples:
                # Every member was published before any probe: each sample covers both peers,
                # all reachable, so every RTT is a positive number (never 0, never None).
                assert set(s.rtt_ms) == set(nodes) - {s.node}, s
                for rtt in s.rtt_ms.values():
                    assert isinstance(rtt, float) and rtt > 0, s
                assert s.method in ("icmp", "tcp")
        assert not lost

        # Leaving: revoking the lease removes the node's member record and latency stream.
        gone = sessions[0]
        gone.close()
        assert gone.lease is None

        def departed() -> bool:
            return all(st.get(keys.member("n0")) is None and not st.range(keys.latency_of("n0"))[0]
                       for st in own)

        assert wait_until(departed, 5), "n0's lease-bound keys outlived its lease"
        for st in own:  # the others are untouched
            assert set(read_members(st, keys)) == {"n1", "n2"}
            assert {s.node for s in read_samples(st, keys)} == {"n1", "n2"}
    finally:
        for s in sessions:
            s.close()
    assert wait_until(lambda: not cluster.store().range(keys.root)[0], 5)


def test_a_sample_and_the_delete_of_the_oldest_are_one_entry(
        etcd_cluster_module: EtcdCluster) -> None:
    """A sample's create and the delete of the sample that falls out of the kept window go
    in one transaction: one Raft entry, not two; a seq that exists is never overwritten, and
    then nothing is deleted either."""
    cluster = etcd_cluster_module
    keys = fresh_keys(cluster)
    store = cluster.store()
    lease = store.grant(30)
    value = json.dumps({"node": "n0", "ts": 1.0, "method": "tcp", "rtt_ms": {"n1": 0.2}})
    try:
        revisions = []
        for seq in range(1, 6):
            assert append_sample(store, keys, "n0", seq, value, lease, drop=seq - 3)
            revisions.append(store.revision())
        assert [r - revisions[0] for r in revisions] == [0, 1, 2, 3, 4]
        assert [s.seq for s in read_samples(store, keys)] == [3, 4, 5]
        assert not append_sample(store, keys, "n0", 5, value, lease, drop=3)
        assert [s.seq for s in read_samples(store, keys)] == [3, 4, 5]
    finally:
        store.revoke(lease)
    assert wait_until(lambda: not store.range(keys.root)[0], 5)


@pytest.mark.parametrize("how, revoked", [("expired in etcd", False),
                                           ("no refresh within TTL", True)])
def test_only_a_lease_given_up_locally_is_revoked_at_reopen(
        etcd_cluster_module: EtcdCluster, monkeypatch: pytest.MonkeyPatch, how: str,
        revoked: bool) -> None:
    """A lease that etcd says expired is gone there: revoking it again would be a Raft entry
    for nothing. One given up by our own clock may live on in etcd, and is revoked."""
    cluster = etcd_cluster_module
    keys = fresh_keys(cluster)
    store = cluster.store()
    info = MemberInfo(node="n0", ip="127.0.0.1", client_port=1, flower_address="127.0.0.1:2")
    lost: list[int] = []
    session = Session(store, keys, info, ttl=5, on_lost=lambda: lost.append(1))
    try:
        session.open()
        old = session.lease
        assert old is not None
        with monkeypatch.context() as patched:
            if how == "expired in etcd":
                store.revoke(old)
            else:  # etcd unreachable past the lease's local deadline
                def down(*_: object, **__: object) -> int:
                    raise EtcdUnavailable("down")
                patched.setattr(store, "keepalive", down)
                session._state = dataclasses.replace(session.state, valid_until=0.0)
            session.refresh(0.1)
        assert lost == [1] and session.lease is None
        revokes: list[int] = []
        real_revoke = store.revoke
        monkeypatch.setattr(store, "revoke", lambda lease: (revokes.append(lease),
                                                            real_revoke(lease))[1])
        session.open()
        assert revokes == ([old] if revoked else [])
    finally:
        session.close()
        store.delete_prefix(keys.root)


def test_close_during_probe_cycle_leaks_nothing(etcd_cluster_module: EtcdCluster) -> None:
    cluster = etcd_cluster_module
    keys = fresh_keys(cluster)
    store = cluster.store()
    peer = MemberInfo(node="peer", ip="127.0.0.1", client_port=cluster.members[1].spec.client_port,
                      flower_address="127.0.0.1:1")
    info = MemberInfo(node="n0", ip="127.0.0.1", client_port=cluster.members[0].spec.client_port,
                      flower_address="127.0.0.1:2")
    session = Session(store, keys, info, ttl=5, on_lost=lambda: None, probe_interval=0.1)
    session.open()
    store.put(keys.member("peer"), peer.to_json())
    probe = session.prober.probe
    in_probe = threading.Event()

    def slow_probe(host: str, port: int) -> float | None:
        in_probe.set()
        time.sleep(0.5)  # a slow peer: the cycle is still running when the node closes
        return probe(host, port)

    session.prober.probe = slow_probe  # type: ignore[method-assign]
    try:
        session.start()
        assert in_probe.wait(5)
        session.close()
        time.sleep(1.0)
        leaked = [kv.key for kv in store.range(keys.latency_of("n0"))[0]]
        leaked += [keys.member("n0")] if store.get(keys.member("n0")) else []
        assert leaked == []
    finally:
        session.stop.set()
        store.delete_prefix(keys.root)


# -- malformed data --------------------------------------------------------------------------
def test_malformed_values_are_skipped_and_counted(etcd_cluster_module: EtcdCluster) -> None:
    store = etcd_cluster_module.store()
    keys = fresh_keys(etcd_cluster_module)
    log = EventLog(store, keys)
    first = RunStarted(node="a", rounds=2, initial_model="m0")
    assert log.append(first) == 1
    junk = {
        keys.event(2): b"\xff\xfe\x00not json",
        keys.event(2) + ".bak": history(1)[1].to_json().encode(),  # valid value, foreign key
        keys.event(3): json.dumps({"hello": 1}).encode(),
        keys.event(4): json.dumps({**json.loads(history(1)[1].to_json()), "v": 99}).encode(),
    }
    for key, value in junk.items():
        store.put(key, value)

    second = elected(1)
    assert log.append(second) == 5  # continues after the junk seq keys
    third = RoundCommitted(node="a", term=1, round=1, model_sha256="m1", base_model="m0", loss=0.1,
                           accuracy=0.9, results=1)
    assert EventLog(store, keys).append(third) == 6  # so does a fresh writer

    for reader in (log, EventLog(store, keys)):
        read = reader.read()
        assert [(i.seq, i.event) for i in read.events] == [(1, first), (5, second), (6, third)]
        assert sorted(k for k, _ in read.skipped) == sorted(junk)
        reasons = dict(read.skipped)
        assert reasons[keys.event(2)].startswith("not JSON")
        assert "sequence number" in reasons[keys.event(2) + ".bak"]
        assert "schema version None" in reasons[keys.event(3)]
        assert "schema version 99" in reasons[keys.event(4)]
        state, _ = reader.state()
        assert state.events == 3 and state.commit_order == [1] and state.last_model == "m1"
    # Junk is skipped, never deleted or rewritten.
    assert all(store.get(k).value == v for k, v in junk.items())  # type: ignore[union-attr]


def test_append_after_trailing_foreign_key(etcd_cluster_module: EtcdCluster) -> None:
    store = etcd_cluster_module.store()
    keys = fresh_keys(etcd_cluster_module)
    raw = RunStarted(node="a", rounds=1, initial_model="m0").to_json()
    for seq in range(1, 61):
        store.put(keys.event(seq), raw)
    store.put(keys.events + "zz-foreign", b"junk")
    assert EventLog(store, keys).append(RunStarted(node="b", rounds=1, initial_model="m0")) == 61


def test_mistyped_event_fields_are_skipped(etcd_cluster_module: EtcdCluster) -> None:
    store = etcd_cluster_module.store()
    keys = fresh_keys(etcd_cluster_module)
    log = EventLog(store, keys)
    for ev in history(1):
        log.append(ev)
    bad = {**json.loads(history(2)[5].to_json()), "round": "2"}  # round 2, as a string
    store.put(keys.event(5), json.dumps(bad))
    good = history(2)[5]
    assert log.append(good) == 6
    state, _ = log.state()  # must not crash
    assert state.commit_order == [1, 2] and state.next_round == 3
    assert [k for k, _ in log.read().skipped] == [keys.event(5)]


# -- ranking ---------------------------------------------------------------------------------
# -- the etcd member -------------------------------------------------------------------------
def _spec(data_dir: Path, cluster: str, name: str = "m0") -> MemberSpec:
    return MemberSpec(name=name, cluster=cluster, data_dir=data_dir, ip="127.0.0.1",
                      peer_port=1, client_port=2, initial_cluster={name: "http://127.0.0.1:1"})


def test_data_dir_of_another_cluster_is_refused(tmp_path: Path) -> None:
    spec = _spec(tmp_path / "d", "alpha")
    assert prepare_data_dir(spec) is False
    assert prepare_data_dir(spec) is False  # same cluster and node: accepted again
    (spec.data_dir / "member-data" / "member").mkdir(parents=True)
    assert prepare_data_dir(spec) is True  # restart reuses its data
    with pytest.raises(RaftflError, match="belongs to node"):
        prepare_data_dir(_spec(spec.data_dir, "beta"))
    with pytest.raises(RaftflError, match="belongs to node"):
        prepare_data_dir(_spec(spec.data_dir, "alpha", name="m1"))
    assert json.loads((spec.data_dir / "raftfl-member.json").read_text()) == {
        "cluster": "alpha", "name": "m0"}  # the refusal did not restamp it

    alien = _spec(tmp_path / "alien", "alpha")
    (alien.data_dir / "member-data" / "member").mkdir(parents=True)
    with pytest.raises(RaftflError, match="unknown origin"):
        prepare_data_dir(alien)


def test_version_gate_and_binary_lookup() -> None:
    with pytest.raises(RaftflError, match="3.5.3"):
        check_version((3, 5, 3))
    check_version((3, 5, 3), allow_unsafe=True)
    check_version((3, 4, 23))
    check_version((3, 5, 6))
    with pytest.raises(RaftflError):
        check_version((3, 5, 0))
    with pytest.raises(RaftflError):
        find_etcd("/nonexistent/etcd")
    assert os.access(find_etcd(), os.X_OK)


def _proc_state(pid: int) -> str | None:
    """The /proc state letter of `pid`, or None when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def test_killed_member_leaves_no_zombie_and_frees_its_ports(tmp_path: Path) -> None:
    with running_cluster(tmp_path / "solo", n=1) as cluster:
        member = cluster.members[0]
        assert _proc_state(member.proc.pid) not in (None, "Z")  # type: ignore[union-attr]
        pid = cluster.kill(0)
        assert _proc_state(pid) is None  # reaped by proc.wait(), no zombie
        assert member.proc.returncode == -signal.SIGKILL  # type: ignore[union-attr]
        assert not member.alive()
        member.stop()  # stopping a dead member is harmless
        with pytest.raises(RaftflError, match="exited"):
            member.check_alive()
        for port in (member.spec.peer_port, member.spec.client_port):
            check_port_free("127.0.0.1", port, "etcd")  # no orphan holds its ports


CHILD = """
import sys, time
from pathlib import Path
from raftfl.etcd.member import EtcdMember, MemberSpec, find_etcd, prepare_data_dir
port = int(sys.argv[3])
spec = MemberSpec(name="solo", cluster=sys.argv[1], data_dir=Path(sys.argv[2]), ip="127.0.0.1",
                  peer_port=port, client_port=port + 1,
                  initial_cluster={"solo": f"http://127.0.0.1:{port}"})
prepare_data_dir(spec)
member = EtcdMember(spec, find_etcd())
member.start()
print(member.proc.pid, flush=True)
time.sleep(60)
"""
_PR_SET_CHILD_SUBREAPER = 36


def test_member_dies_with_its_node(tmp_path: Path) -> None:
    """PR_SET_PDEATHSIG: SIGKILL the Python process that started etcd, and etcd dies too."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    # Adopt orphans while this runs, so the test can reap etcd and see how it died.
    subreaper = libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    base = free_port_base(2)
    node = subprocess.Popen([sys.executable, "-c", CHILD, "pdeath", str(tmp_path / "m"), str(base)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    etcd_pid: int | None = None
    try:
        with selectors.DefaultSelector() as sel:
            sel.register(node.stdout, selectors.EVENT_READ)  # type: ignore[arg-type]
            assert sel.select(20), "child did not report the etcd pid"
        line = node.stdout.readline()  # type: ignore[union-attr]
        assert line.strip().isdigit(), f"child printed {line!r}, exit code {node.poll()}"
        etcd_pid = int(line)
        assert _proc_state(etcd_pid) not in (None, "Z")

        node.kill()
        node.wait(5)
        deadline = time.monotonic() + 5
        status = None
        while time.monotonic() < deadline:
            if subreaper:
                done, status = os.waitpid(etcd_pid, os.WNOHANG)
                if done:
                    break
            elif _proc_state(etcd_pid) in (None, "Z"):  # PID 1 may not reap: accept a zombie
                break
            time.sleep(0.05)
        else:
            raise AssertionError(f"etcd {etcd_pid} outlived its node by 5 s")
        if subreaper:
            assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
            etcd_pid = None
    finally:
        if node.poll() is None:
            node.kill()
            node.wait()
        if etcd_pid is not None and _proc_state(etcd_pid) not in (None, "Z"):
            os.kill(etcd_pid, signal.SIGKILL)  # the test failed: clean up by PID
            if subreaper:
                os.waitpid(etcd_pid, 0)
        if subreaper:
            libc.prctl(_PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
        shutil.rmtree(tmp_path / "m", ignore_errors=True)

