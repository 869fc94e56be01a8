"""Signed runs on real etcd: a node with trusted keys verifies a run before it unpacks
anything, and under RBAC a node's certificate cannot write a run spec or an app package
(operators submit runs)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import EtcdCluster, running_cluster

from raftfl import signing, tls
from raftfl.core.keys import Keys
from raftfl.core.specs import RunSpec
from raftfl.etcd import rbac, run_store
from raftfl.etcd.store import Store
from raftfl.node import runapp
from raftfl.node.package import pack
from raftfl.node.runs import Runs


def spec_for(blob: bytes) -> RunSpec:
    return RunSpec(app="quickstart", app_sha256=hashlib.sha256(blob).hexdigest(),
                   run_config={"num-server-rounds": 1}, rounds=1, by="alice@host")


def test_a_node_with_trusted_keys_unpacks_only_runs_its_keys_signed(
        etcd_cluster_module: EtcdCluster, tmp_path: Path) -> None:
    keys = Keys(f"{etcd_cluster_module.name}-{os.urandom(4).hex()}")
    store = etcd_cluster_module.store()
    blob = pack(runapp.bundled_app())
    alice, mallory = signing.new_key_pair("alice", tmp_path / "a")[0], \
        signing.new_key_pair("mallory", tmp_path / "m")[0]
    trusted = tmp_path / "trusted.yaml"  # as the operator hands it to the nodes
    trusted.write_text(f"alice: '{(tmp_path / 'a' / 'alice.pub').read_text().strip()}'\n")
    trust = signing.load_trusted_entities(trusted)
    signed = signing.sign_run(spec_for(blob), blob, signing.load_private_key(alice), keys.cluster)
    run_store.submit(store, keys, spec_for(blob), blob)  # 1: unsigned
    run_store.submit(store, keys, signing.sign_run(  # 2: by a key the node does not trust
        spec_for(blob), blob, signing.load_private_key(mallory), keys.cluster), blob)
    run_store.submit(store, keys, signed, blob)  # 3: signed, then its spec rewritten in etcd
    store.put(keys.run(3).spec, replace(signed, run_config={"num-server-rounds": 9}).to_json())
    assert run_store.submit(store, keys, signed, blob) == 4  # 4: signed, untouched

    node = Runs(store, keys, tmp_path / "node", None, trust=trust)  # type: ignore[arg-type]
    for run_id, reason in ((1, "refused: it is not signed"),
                           (2, "refused: signed by unknown key id 'SHA256:"),
                           (3, "refused: bad signature by alice (SHA256:")):
        app = node.app(run_id)
        assert app.flower_app is None and isinstance(app.apps.exception(), signing.RunRefused)
        assert str(app.apps.exception()).startswith(reason), app.apps.exception()
        assert not (tmp_path / "node" / "apps" / str(run_id)).exists()  # nothing unpacked
    accepted = node.app(4)
    assert accepted.flower_app is not None and accepted.spec == signed
    assert (tmp_path / "node" / "apps" / "4" / "pyproject.toml").is_file()


def test_a_node_without_trusted_keys_runs_unsigned_apps(
        etcd_cluster_module: EtcdCluster, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """(The node says so once as it starts: tests/e2e/test_seed_commands.py.)"""
    keys = Keys(f"{etcd_cluster_module.name}-{os.urandom(4).hex()}")
    store = etcd_cluster_module.store()
    blob = pack(runapp.bundled_app())
    run_store.submit(store, keys, spec_for(blob), blob)
    with caplog.at_level(logging.WARNING, logger="raftfl.node.runs"):
        node = Runs(store, keys, tmp_path, None, trust=signing.Trust())  # type: ignore[arg-type]
        assert node.app(1).flower_app is not None
        node.refresh()
    assert not caplog.records


# -- RBAC: operators submit runs, nodes only read them -----------------------------------------
@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EtcdCluster, Path]]:
    base = tmp_path_factory.mktemp("signed")
    tls.init_ca(base / "ca", "A")
    for bundle, cn, hosts in (("member", "member", ["127.0.0.1"]),
                              ("node", "127.0.0.1:5000", ["127.0.0.1"]),
                              ("ops", "operator-ops", []), ("root", "root", [])):
        tls.issue_bundle(base / "ca", bundle, cn, hosts)
    tls.configure(tls.load(base / "ca" / "member"))
    try:
        with running_cluster(base / "etcd") as cluster:
            yield cluster, base
    finally:
        tls.configure(None)


def _as(cluster: EtcdCluster, base: Path, who: str) -> Store:
    """A store with `who`'s certificate (read when the store is made)."""
    tls.configure(tls.load(base / "ca" / who))
    try:
        return cluster.store(retry_for=1.0, timeout=2.0)
    finally:
        tls.configure(tls.load(base / "ca" / "member"))


def _cli(cluster: EtcdCluster, base: Path, who: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "raftfl", *args, "--certs", str(base / "ca" / who),
                           "--endpoints", ",".join(cluster.endpoints), "--cluster", cluster.name],
                          capture_output=True, text=True, timeout=120)


def _denied(call: object) -> str:
    try:
        call()  # type: ignore[operator]
    except Exception as exc:  # noqa: BLE001 - the refusal, whatever wraps it
        return str(exc) + repr(getattr(exc, "code", lambda: None)())
    raise AssertionError("not denied")


def test_a_node_certificate_cannot_write_a_run_spec_or_app(
        secured: tuple[EtcdCluster, Path], tmp_path: Path) -> None:
    cluster, base = secured
    keys = Keys(cluster.name)
    root = _as(cluster, base, "root")
    # An older `certs rbac` let nodes write the whole prefix: the new grants narrow it.
    from etcd3 import etcdrpc, utils
    from etcd3.etcdrpc import auth_pb2

    prefix = keys.root.encode()
    root.call(lambda: root.client.authstub.RoleAdd(
        etcdrpc.AuthRoleAddRequest(name=rbac.node_role(cluster.name)), 5))
    root.call(lambda: root.client.authstub.RoleGrantPermission(etcdrpc.AuthRoleGrantPermissionRequest(
        name=rbac.node_role(cluster.name), perm=auth_pb2.Permission(
            permType=auth_pb2.Permission.READWRITE, key=prefix,
            range_end=utils.prefix_range_end(prefix))), 5))
    proc = _cli(cluster, base, "root", "certs", "rbac", "-n", "127.0.0.1:5000", "--operator", "ops")
    assert proc.returncode == 0, proc.stderr

    key = signing.new_key_pair("ops", tmp_path)[0]
    app = str(runapp.bundled_app())
    # The node's certificate: `run submit` is refused by etcd, one line, nothing stored.
    refused = _cli(cluster, base, "node", "run", "submit", "--app", app, "--sign-key", str(key))
    assert refused.returncode != 0 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert "permission denied" in refused.stderr.lower(), refused.stderr
    node = _as(cluster, base, "node")
    blob = pack(runapp.bundled_app())
    assert "permission denied" in _denied(lambda: run_store.submit(node, keys, spec_for(blob), blob))
    rk = keys.run(1)
    assert "PERMISSION_DENIED" in _denied(lambda: node.put(rk.spec, spec_for(blob).to_json()))
    assert "PERMISSION_DENIED" in _denied(
        lambda: node.put(rk.app.checkpoint_chunk(hashlib.sha256(blob).hexdigest(), 0), b"x"))
    assert "PERMISSION_DENIED" in _denied(lambda: node.delete(rk.spec))
    assert root.get(rk.spec) is None

    # An operator submits (signed); the node reads it, and still writes the run's own keys.
    ok = _cli(cluster, base, "ops", "run", "submit", "--app", app, "--sign-key", str(key), "--json")
    assert ok.returncode == 0, ok.stderr
    submitted = json.loads(ok.stdout)
    assert submitted["run"] == 1 and submitted["signed_by"].startswith("SHA256:")
    node = _as(cluster, base, "node")
    assert run_store.spec(node, keys, 1).signed_by == submitted["signed_by"]
    assert run_store.package(node, keys, 1, submitted["app_sha256"]) == blob
    node.put(rk.event(1), "{}")
    node.put(keys.aggregator, "{}")
    # A restarted first node (-r) finds run 1 and writes nothing: no permission needed.
    assert run_store.submit(node, keys, spec_for(blob), blob, run_id=1) is None
    assert "PERMISSION_DENIED" in _denied(lambda: _as(cluster, base, "ops").put(rk.event(2), "{}"))
