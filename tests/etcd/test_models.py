"""Models out of Raft (node/models.py): real etcd, real model services on loopback.

A commit's model is held by `replicas` nodes and etcd holds only its manifest; a node without
the file fetches it from any holder and verifies it; a holder with a rotten file, a dead
holder or a forged upload never yields other bytes than the manifest names; uploads anyone
can make (junk that hashes to its name, oversized, forged) never evict a committed model.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import EtcdCluster, free_port_base
from test_foundation import fresh_keys

from raftfl.core.errors import FencedOut, RaftflError
from raftfl.core.specs import RunSpec
from raftfl.etcd import checkpoint, run_store
from raftfl.etcd.checkpoint import CorruptCheckpoint, Manifest
from raftfl.etcd.store import Fence
from raftfl.node.models import (
    KEEP_FILES,
    MAX_MODEL_BYTES,
    ModelFiles,
    Models,
    ModelServer,
    committed_models,
    fetch,
)


@pytest.fixture
def services(tmp_path: Path) -> Iterator[list[ModelServer]]:
    base = free_port_base(3)
    servers = [ModelServer("127.0.0.1", base + i, ModelFiles(tmp_path / f"n{i}")).start()
               for i in range(3)]
    try:
        yield servers
    finally:
        for server in servers:
            server.stop()


def models(servers: list[ModelServer], i: int, replicas: int = 2, **kw: int) -> Models:
    """Node i's Models: the others are its live peers, in order."""
    peers = [s.address for j, s in enumerate(servers) if j != i]
    return Models(servers[i].files, servers[i].address, lambda: peers, replicas, **kw)


def test_a_commit_is_held_by_the_replicas_and_etcd_keeps_only_the_manifest(
        etcd_cluster_module: EtcdCluster, services: list[ModelServer]) -> None:
    store = etcd_cluster_module.store()
    keys = fresh_keys(etcd_cluster_module)
    blob = os.urandom(300_000)
    manifest = models(services, 0).save(store, keys, blob, 4, None)
    assert manifest.chunks == 0
    assert manifest.holders == [services[0].address, services[1].address]
    kvs, _ = store.range(keys.checkpoints)
    assert [kv.key for kv in kvs] == [keys.checkpoint_meta(manifest.sha256)]
    assert sum(len(kv.value) for kv in kvs) < 300  # bytes in etcd, for a 300 kB model
    assert services[1].files.get(manifest.sha256) == blob  # pushed before the commit
    assert services[2].files.get(manifest.sha256) is None

    # Node 2 has no copy: it fetches from a holder, verifies and keeps it.
    assert models(services, 2).load(store, keys, manifest.sha256) == blob
    assert services[2].files.get(manifest.sha256) == blob


def test_load_skips_a_rotten_or_dead_holder_and_fails_when_none_is_left(
        etcd_cluster_module: EtcdCluster, services: list[ModelServer]) -> None:
    store = etcd_cluster_module.store()
    keys = fresh_keys(etcd_cluster_module)
    blob = os.urandom(50_000)
    sha = models(services, 0).save(store, keys, blob, 1, None).sha256
    (services[1].files.root / sha).write_bytes(b"bit rot" + blob[7:])  # same size, other bytes
    reader = models(services, 2)
    assert reader.load(store, keys, sha) == blob  # from holder 0; holder 1 answered 404
    assert not (services[1].files.root / sha).exists()  # the rotten file was removed

    (services[2].files.root / sha).unlink()
    services[0].stop()  # the last good holder is gone
    with pytest.raises(CorruptCheckpoint, match="no holder has it"):
        reader.load(store, keys, sha)


def test_the_writer_is_asked_last(etcd_cluster_module: EtcdCluster,
                                  services: list[ModelServer]) -> None:
    """After a failover the first holder, the old aggregator, may be frozen: its kernel
    still accepts the connection, and a read would stall. The other holders go first."""
    store = etcd_cluster_module.store()
    keys = fresh_keys(etcd_cluster_module)
    blob = os.urandom(10_000)
    sha = models(services, 0).save(store, keys, blob, 1, None).sha256
    host, port = services[0].address.split(":")
    services[0].stop()
    with socket.socket() as frozen:  # accepts (in the kernel's backlog), never answers
        frozen.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        frozen.bind((host, int(port)))
        frozen.listen()
        assert models(services, 2).load(store, keys, sha) == blob
        frozen.setblocking(False)
        with pytest.raises(BlockingIOError):
            frozen.accept()  # nobody connected to it


def put(address: str, name: str, body: bytes) -> int:
    host, port = address.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("PUT", f"/models/{name}", body=body)
        return conn.getresponse().status
    finally:
        conn.close()


def raw_put(address: str, head: str, body: bytes = b"") -> bytes:
    """Send a PUT's head (and `body`, then end the upload), return the first response line."""
    host, port = address.split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(head.encode() + b"\r\n\r\n" + body)
        if body:
            sock.shutdown(socket.SHUT_WR)
        return sock.makefile("rb").readline()


def test_junk_uploads_never_evict_committed_models(
        etcd_cluster_module: EtcdCluster, tmp_path: Path) -> None:
    """Anyone can PUT bytes that hash to their name. Before, four such uploads per node
    pruned every committed model; now the manifests in etcd decide what stays."""
    store = etcd_cluster_module.store()
    keys = fresh_keys(etcd_cluster_module)
    run_store.submit(store, keys, RunSpec(app="a", app_sha256=hashlib.sha256(b"p").hexdigest(),
                                          run_config={}), b"p", run_id=1)
    base = free_port_base(3)
    servers = [ModelServer("127.0.0.1", base + i, ModelFiles(
        tmp_path / f"n{i}", committed=lambda: committed_models(store, keys))).start()
        for i in range(3)]
    try:
        blobs = {}
        for rnd in (1, 2, 3):  # each node aggregates a round: every node holds some
            blob = os.urandom(20_000)
            manifest = models(servers, rnd - 1).save(store, keys, blob, rnd, None)
            blobs[manifest.sha256] = (blob, manifest.holders)
        junk = [os.urandom(1000) for _ in range(3 * KEEP_FILES)]
        for server in servers:
            for body in junk:
                assert put(server.address, checkpoint.sha256(body), body) == 201
        for sha, (blob, holders) in blobs.items():
            for holder in holders:
                assert fetch(holder, sha) == blob
        for server in servers:  # ...and the junk is pruned down to KEEP_FILES per node
            deadline = time.monotonic() + 10
            while len(kept := set(os.listdir(server.files.root)) - blobs.keys()) > KEEP_FILES:
                assert time.monotonic() < deadline, f"{len(kept)} junk files kept"
                time.sleep(0.05)
        # The final-model path: a node that holds nothing fetches every committed model.
        reader = Models(ModelFiles(tmp_path / "reader"), "127.0.0.1:1",
                        lambda: [s.address for s in servers])
        for sha, (blob, _) in blobs.items():
            assert reader.load(store, keys, sha) == blob
    finally:
        for server in servers:
            server.stop()


def test_while_the_committed_models_are_unknown_no_file_is_deleted(tmp_path: Path) -> None:
    def unreachable() -> set[str]:
        raise RaftflError("etcd unreachable")

    files = ModelFiles(tmp_path, committed=unreachable)
    shas = {files.put(os.urandom(100)) for _ in range(2 * KEEP_FILES)}
    assert set(os.listdir(tmp_path)) == shas


def test_an_oversized_upload_is_refused_before_it_is_read(services: list[ModelServer]) -> None:
    sha = "0" * 64
    line = raw_put(services[0].address, f"PUT /models/{sha} HTTP/1.0\r\n"
                                        f"Content-Length: {MAX_MODEL_BYTES + 1}")
    assert line.startswith(b"HTTP/1.0 413"), line  # answered with no byte of the body sent
    assert not services[0].files.root.exists()  # nothing was written, not even a temp file


def test_a_forged_or_truncated_upload_leaves_no_file(services: list[ModelServer]) -> None:
    good = os.urandom(5000)
    sha = checkpoint.sha256(good)
    address = services[0].address
    assert put(address, sha, b"x" * len(good)) == 400  # forged: the same length, other bytes
    line = raw_put(address, f"PUT /models/{sha} HTTP/1.0\r\nContent-Length: {len(good)}",
                   good[:100])  # ends early
    assert line.startswith(b"HTTP/1.0 400"), line
    assert os.listdir(services[0].files.root) == []  # no model, no temp file
    assert put(address, sha, good) == 201
    assert os.listdir(services[0].files.root) == [sha]


def test_uploads_must_hash_to_their_name(services: list[ModelServer]) -> None:
    host, port = services[0].address.split(":")
    good = os.urandom(1000)
    sha = checkpoint.sha256(good)
    for body, name, status in ((good, sha, 201), (b"forged", sha, 400),
                               (good, "../../etc/passwd", 400)):
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        conn.request("PUT", f"/models/{name}", body=body)
        assert conn.getresponse().status == status
        conn.close()
    assert sorted(p.name for p in services[0].files.root.iterdir()) == [sha]


def test_fewer_live_nodes_than_replicas_commits_with_all_there_are(
        etcd_cluster_module: EtcdCluster, services: list[ModelServer]) -> None:
    store = etcd_cluster_module.store()
    keys = fresh_keys(etcd_cluster_module)
    said: list[str] = []
    services[1].stop()
    services[2].stop()
    m = models(services, 0, replicas=3)
    m.say = said.append
    manifest = m.save(store, keys, os.urandom(1000), 2, None)
    assert manifest.holders == [services[0].address]
    assert said == ["round 2 model held by 1 of 3 replicas: no further live node took it"]


def test_small_models_stay_inline_and_manifests_are_fenced(
        etcd_cluster_module: EtcdCluster, services: list[ModelServer]) -> None:
    store = etcd_cluster_module.store()
    keys = fresh_keys(etcd_cluster_module)
    small = os.urandom(2000)
    manifest = models(services, 0, inline_max=4096).save(store, keys, small, 1, None)
    assert manifest.chunks == 1 and manifest.holders == []
    assert checkpoint.load(store, keys, manifest.sha256) == small  # no fetch needed

    store.create(keys.aggregator, "holder")
    role = store.get(keys.aggregator)
    assert role is not None
    deposed = Fence(keys.aggregator, role.create_revision - 1)
    with pytest.raises(FencedOut):
        models(services, 0).save(store, keys, os.urandom(9000), 3, deposed)
    # A re-save by the rightful writer updates the holders of an existing manifest.
    fence = Fence(keys.aggregator, role.create_revision)
    blob = os.urandom(9000)
    models(services, 0).save(store, keys, blob, 3, fence)
    again = models(services, 2).save(store, keys, blob, 3, fence)
    stored = store.get(keys.checkpoint_meta(again.sha256))
    assert stored is not None
    assert Manifest.from_json(stored.value).holders == [services[2].address, services[0].address]


def test_committed_models_as_of_a_revision_the_node_has_seen(
        etcd_cluster_module: EtcdCluster) -> None:
    """The run ids are read at a revision (serializable, no ReadIndex): a run created after
    it is not probed; without one, the cluster's current revision is taken."""
    store = etcd_cluster_module.store()
    root = fresh_keys(etcd_cluster_module)
    spec = RunSpec(app="a", app_sha256=hashlib.sha256(b"p").hexdigest(), run_config={})
    run_store.submit(store, root, spec, b"p", run_id=1)
    store.put(root.run(1).checkpoint_meta("1" * 64), "{}")
    seen = store.revision()
    run_store.submit(store, root, spec, b"p", run_id=2)
    store.put(root.run(2).checkpoint_meta("2" * 64), "{}")
    assert committed_models(store, root, seen) == {"1" * 64}
    assert committed_models(store, root) == {"1" * 64, "2" * 64}
