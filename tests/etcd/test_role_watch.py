"""The role key between linearizable reads (issue 21, a leaner steady state).

Each cycle used to read the role key linearizably: a ReadIndex, that is a heartbeat round
from the Raft leader to every follower, per cycle per node. The observer now reads it
serializably from the member its watches use while the role is held and nothing acts on it,
and linearizably when the role is vacant or malformed, when its holder fails our probes,
and when for `recheck_s` the member has applied nothing new and the node's lease has not
been refreshed through it, so a member cut off from its peers (which answers serializable
reads, and whose watches stay silent) cannot keep a node on a stale role.

Real etcd members; the node is the real `Node` of test_ha_core, its cycles driven here.
The reads are counted by a spy around the real store, not a stand-in for etcd.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import EtcdCluster, free_port_base
from test_ha_core import make_node

from raftfl.core.keys import Keys, RunKeys
from raftfl.core.role import RoleHolder
from raftfl.etcd.member import MemberSpec, find_etcd, running_members
from raftfl.etcd.store import wait_until
from raftfl.files import make_private_dir
from raftfl.lab.bench import serves
from raftfl.lab.faults import Skip, netns_setup, netns_teardown
from raftfl.node.ha import Node

ROLE = '{{"node": "{node}", "flower_address": "127.0.0.1:{port}"}}'


@pytest.fixture
def keys(etcd_cluster_module: EtcdCluster) -> RunKeys:
    return Keys(f"rw-{os.urandom(4).hex()}").run(1)


@pytest.fixture
def nodes() -> Iterator[list[Node]]:
    made: list[Node] = []
    yield made
    for node in made:
        node.stop.set()
        node.worker.stop()
        node.session.close(revoke=True)
        node.observer.stop()
        shutil.rmtree(node.opts.dir, ignore_errors=True)


def count_role_reads(node: Node) -> list[bool]:
    """Spy on the node's store: one entry per read of the role key, True if linearizable."""
    reads: list[bool] = []
    real: Callable[..., Any] = node.store.range

    def range_(prefix: str, *args: Any, **kwargs: Any) -> Any:
        if prefix == node.keys.aggregator:
            reads.append(not kwargs.get("serializable") and not kwargs.get("revision"))
        return real(prefix, *args, **kwargs)

    node.store.range = range_  # type: ignore[method-assign]
    return reads


def hold_role(node: Node, holder: str, port: int) -> tuple[int, int]:
    """Another node's role key, on a lease of its own; returns the term and the lease."""
    store = node.store
    lease = store.grant(60)
    assert store.create_revision(node.keys.aggregator, ROLE.format(node=holder, port=port),
                                 lease=lease) is not None
    kv = store.get(node.keys.aggregator)
    assert kv is not None
    return kv.create_revision, lease


def test_a_held_role_is_read_serializably_between_rechecks(
        etcd_cluster_module: EtcdCluster, keys: RunKeys, nodes: list[Node]) -> None:
    node = make_node(etcd_cluster_module, keys, 23300)
    nodes.append(node)
    node.observer.recheck_s = 600.0
    node.observer.holder_probe.stop()  # the holder is not probed here: no evidence either way
    _, holder = hold_role(node, "127.0.0.1:23309", 1)
    reads = count_role_reads(node)
    views = [node.observer.observe() for _ in range(20)]
    assert all(isinstance(v.role, RoleHolder) and v.role.node == "127.0.0.1:23309"
               for v in views)
    assert reads == [True] + [False] * 19  # the first cycle reads linearizably, then once per recheck
    assert [v.revision for v in views] == sorted(v.revision for v in views)

    node.observer.recheck_s = 0.2
    time.sleep(0.3)
    node.observer.observe()
    assert reads[-1] is True  # the recheck is due

    node.store.revoke(holder)  # vacant: every cycle acts on it, so reads it linearizably
    node.observer.recheck_s = 600.0
    for _ in range(3):
        del reads[:]
        assert node.observer.observe().role is None
        assert reads[-1] is True
    assert reads == [True]  # the cycle after an unsettled one reads exactly at once


def test_a_member_that_keeps_applying_needs_no_recheck(
        etcd_cluster_module: EtcdCluster, keys: RunKeys, nodes: list[Node]) -> None:
    """A member whose revision moved since the previous read has applied an entry the leader
    committed since then, so it was not cut off: no ReadIndex for the recheck (at 16 nodes
    the rechecks were 5 of 13 ReadIndex rounds a second). Once it applies nothing for
    `recheck_s`, the read is exact again."""
    node = make_node(etcd_cluster_module, keys, 23340)
    nodes.append(node)
    node.observer.recheck_s = 0.5
    node.observer.holder_probe.stop()
    hold_role(node, "127.0.0.1:23349", 1)
    reads = count_role_reads(node)
    node.observer.observe()
    for i in range(10):  # 2 s, four recheck intervals: another node writes between cycles
        node.store.put(node.keys.root + "tick", str(i))
        time.sleep(0.2)
        assert node.observer.observe().role.node == "127.0.0.1:23349"  # type: ignore[union-attr]
    assert reads == [True] + [False] * 10

    time.sleep(0.6)  # nothing applied for longer than recheck_s
    node.observer.observe()
    assert reads[-1] is True
    node.observer.observe()  # current again: serializable
    assert reads[-1] is False


def test_a_refreshed_lease_defers_the_recheck(
        etcd_cluster_module: EtcdCluster, keys: RunKeys, nodes: list[Node]) -> None:
    """Our lease's keepalives reach the Raft leader through the member we read from, so that
    member was in touch: no ReadIndex while they succeed, even when the member applies
    nothing (a long round's training: 47 rechecks a 16-node round). Once no refresh has
    succeeded for `recheck_s`, the read is exact again."""
    node = make_node(etcd_cluster_module, keys, 23350)
    nodes.append(node)
    node.observer.recheck_s = 1.0
    node.observer.holder_probe.stop()
    hold_role(node, "127.0.0.1:23359", 1)
    node.session.open()
    node.session.start()  # keepalives every 0.5 s; its prober's first cycle is an hour away
    reads = count_role_reads(node)
    node.observer.observe(node.session.state.leader_heard_at)
    revision = node.store.revision()
    for _ in range(10):  # 2.5 s, nothing written
        time.sleep(0.25)
        view = node.observer.observe(node.session.state.leader_heard_at)
        assert view.role.node == "127.0.0.1:23359"  # type: ignore[union-attr]
    assert node.store.revision() == revision, "a write moved the revision: proves nothing"
    assert reads == [True] + [False] * 10

    node.session.stop.set()  # no refresh from now on
    time.sleep(1.1)
    node.observer.observe(node.session.state.leader_heard_at)
    assert reads[-1] is True


def test_a_failing_holder_is_read_linearizably(etcd_cluster_module: EtcdCluster, keys: RunKeys,
                                               nodes: list[Node]) -> None:
    """Evidence leads to a suspicion and a takeover: acted on, so read exactly."""
    node = make_node(etcd_cluster_module, keys, 23310)
    nodes.append(node)
    node.observer.recheck_s = 600.0
    term, _ = hold_role(node, "127.0.0.1:23319", 1)  # port 1: every probe is refused
    reads = count_role_reads(node)
    node.observer.observe()
    probe = node.observer.holder_probe
    assert wait_until(lambda: probe.latest is not None and probe.latest.term == term
                      and probe.latest.failed > 0, 10)
    del reads[:]
    node.observer.observe()
    assert reads[-1] is True  # the cycle that finds the evidence reads exactly
    for _ in range(3):
        del reads[:]
        node.observer.observe()
        assert reads == [True]  # and so does every one after it, at once


def _nft(ns: str, rules: str) -> None:
    subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=rules, text=True,
                   check=True, capture_output=True, timeout=10)


@pytest.fixture
def namespaced(tmp_path: Path) -> Iterator[tuple[EtcdCluster, dict[str, Any]]]:
    """Three members, each in a network namespace of its own (the lab's bridge and veths):
    a member can be cut off from its peers and still answer this process, its client."""
    if os.geteuid() != 0 or shutil.which("nft") is None:
        pytest.skip("needs root and nft to cut a member off")
    try:
        ctx = netns_setup(3, f"10.216.{os.getpid() % 250}")
    except Skip as exc:
        pytest.skip(str(exc))
    try:
        script = tmp_path / "etcd-in-netns"  # the member's data dir names its namespace
        script.write_text('#!/bin/sh\nexec ip netns exec "$(cat "$(dirname "$2")/netns")" '
                          f'{find_etcd()} "$@"\n')
        script.chmod(0o755)
        base = free_port_base(6)
        ips = ctx["ips"]
        initial = {f"m{i}": f"http://{ips[i]}:{base + i}" for i in range(3)}
        specs = [MemberSpec(name=f"m{i}", cluster="rolewatch", data_dir=tmp_path / f"m{i}",
                            ip=ips[i], peer_port=base + i, client_port=base + 3 + i,
                            initial_cluster=initial) for i in range(3)]
        for i, spec in enumerate(specs):
            make_private_dir(spec.data_dir)
            (spec.data_dir / "netns").write_text(ctx["ns"][i])
        with running_members(specs, str(script), serves) as members:
            cluster = EtcdCluster("rolewatch", members, tmp_path)
            try:
                yield cluster, ctx
            finally:
                cluster.close_stores()
    finally:
        netns_teardown(ctx)


def test_a_member_cut_off_cannot_keep_a_stale_role(
        namespaced: tuple[EtcdCluster, dict[str, Any]], nodes: list[Node]) -> None:
    """The node's own member (its first endpoint) is cut off from its peers: it still answers
    serializable reads, with the role as it was. The recheck's linearizable read cannot
    complete there, fails over to a member with a quorum, and sees the new holder."""
    cluster, ctx = namespaced
    keys = Keys(f"rw-{os.urandom(4).hex()}").run(1)
    node = make_node(cluster, keys, 23320)
    nodes.append(node)
    node.observer.holder_probe.stop()
    node.observer.recheck_s = 2.0
    _, old = hold_role(node, "127.0.0.1:23328", 1)
    assert node.observer.observe().role.node == "127.0.0.1:23328"  # type: ignore[union-attr]

    peers = ", ".join(ctx["ips"][1:])
    _nft(ctx["ns"][0], f"table inet cut {{\n chain i {{ type filter hook input priority 0; "
                       f"ip saddr {{ {peers} }} drop; }}\n chain o {{ type filter hook output "
                       f"priority 0; ip daddr {{ {peers} }} drop; }}\n}}\n")
    others = cluster.store(cluster.endpoints[1:])

    def moved() -> bool:  # the other two elect a leader if the cut one led
        others.revoke(old)
        return others.get(keys.aggregator) is None

    assert wait_until(moved, 20, 0.5)
    new = others.grant(60)
    assert others.create_revision(keys.aggregator, ROLE.format(node="127.0.0.1:23329", port=1),
                                  lease=new) is not None
    kvs, _ = node.store.range(keys.aggregator, serializable=True)  # the cut-off member
    assert b"23328" in kvs[0].value, "the member was not cut off: the test proves nothing"

    started = time.monotonic()
    seen: object = None
    while time.monotonic() - started < 30:
        role = node.observer.observe().role
        seen = role.node if isinstance(role, RoleHolder) else role
        if seen == "127.0.0.1:23329":
            break
        time.sleep(0.2)
    took = time.monotonic() - started
    assert seen == "127.0.0.1:23329", f"still {seen} after {took:.1f}s"
    # one recheck interval, plus the linearizable read's timeout on the cut-off member
    assert took < node.observer.recheck_s + 2 * node.store.timeout + 3.0
