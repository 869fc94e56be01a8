"""Mutual TLS and RBAC on real etcd members and the real fleet transport (issue 9).

Three members run with client and peer TLS and --client-cert-auth under cluster CA "A";
RBAC is enabled by the admin (root) bundle. Outsiders (no certificate, plain text, or a
certificate from another CA "B") get nothing: no get, no put, no member add, no fleet
session. A node's certificate reads and writes /raftfl/<cluster>/ only, and there its own
member record and latency samples but no other node's (per-node roles); an operator's reads.
"""

from __future__ import annotations

import http.client
import shutil
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from etcd3 import etcdrpc

from raftfl import tls
from raftfl.core.errors import RaftflError
from raftfl.core.keys import Keys
from raftfl.etcd import rbac
from raftfl.etcd.store import Store
from raftfl.flower.fleet import FleetClient, FleetError, FleetServer
from tests.conftest import EtcdCluster, running_cluster

ETCDCTL = shutil.which("etcdctl")


@dataclass
class Secured:
    cluster: EtcdCluster
    bundles: dict[str, tls.Identity]
    base: Path | None = None  # the CA directories (A's holds every bundle of the cluster)

    @property
    def name(self) -> str:
        return self.cluster.name

    def store(self, who: str | None) -> Store:
        tls.configure(self.bundles[who] if who else None)
        try:
            return self.cluster.store(retry_for=1.0, timeout=1.0)
        finally:
            tls.configure(None)


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    base = tmp_path_factory.mktemp("sec")
    tls.init_ca(base / "A", "A")
    tls.init_ca(base / "B", "B")
    bundles = {
        "member": tls.load(tls.issue_bundle(base / "A", "member", "member", ["127.0.0.1"])),
        "node": tls.load(tls.issue_bundle(base / "A", "node", "127.0.0.1:5000", ["127.0.0.1"])),
        "node2": tls.load(tls.issue_bundle(base / "A", "node2", "127.0.0.1:5001", ["127.0.0.1"])),
        "joiner": tls.load(tls.issue_bundle(base / "A", "joiner", "127.0.0.1:5002",
                                            ["127.0.0.1"])),
        "ops": tls.load(tls.issue_bundle(base / "A", "operator-ops", "operator-ops", [])),
        "root": tls.load(tls.issue_bundle(base / "A", "root", "root", [])),
        "other": tls.load(tls.issue_bundle(base / "B", "node", "127.0.0.1:5000", ["127.0.0.1"])),
    }
    tls.configure(bundles["member"])  # the members' identity (MemberSpec's default)
    try:
        with running_cluster(base / "etcd") as cluster:
            tls.configure(None)
            sec = Secured(cluster, bundles)
            root = sec.store("root")
            assert rbac.node_role(cluster.name) == f"raftfl-{cluster.name}-node"
            proc = subprocess.run(
                [sys.executable, "-m", "raftfl", "certs", "rbac", "--certs", str(base / "A" / "root"),
                 "--endpoints", ",".join(cluster.endpoints), "--cluster", cluster.name,
                 "-n", "127.0.0.1:5000", "127.0.0.1:5001", "--operator", "ops"],
                capture_output=True, text=True, timeout=60)
            assert proc.returncode == 0, proc.stderr
            root.put(f"/raftfl/{cluster.name}/seed", "1")
            root.put("/elsewhere/seed", "1")
            sec.base = base
            yield sec
    finally:
        tls.configure(None)


def _denied(fn) -> bool:  # noqa: ANN001
    try:
        fn()
    except (grpc.RpcError, RaftflError, Exception):  # noqa: BLE001 - any refusal counts
        return True
    return False


@pytest.mark.parametrize("who", [None, "other"])
def test_outsiders_get_nothing(secured: Secured, who: str | None) -> None:
    store = secured.store(who)
    prefix = f"/raftfl/{secured.name}/"
    assert _denied(lambda: store.get(prefix + "seed"))
    assert _denied(lambda: store.put(prefix + "evil", "1"))
    assert _denied(lambda: store.call(lambda: store.client.add_member(["https://127.0.0.1:1"]),
                                      retry_for=1.0))
    assert secured.store("root").get(prefix + "evil") is None


def _etcdctl(secured: Secured, who: str | None, *args: str, scheme: str = "https") -> int:
    eps = ",".join(f"{scheme}://{ep}" for ep in secured.cluster.endpoints)
    cmd = [ETCDCTL, f"--endpoints={eps}", "--dial-timeout=2s", "--command-timeout=3s"]
    if who:
        b = secured.bundles[who]
        cmd += [f"--cacert={b.ca}", f"--cert={b.cert}", f"--key={b.key}"]
    elif scheme == "https":
        cmd += [f"--cacert={secured.bundles['member'].ca}"]  # trusts the server, no client cert
    proc = subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=30,
                          env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"})
    return proc.returncode


@pytest.mark.skipif(ETCDCTL is None, reason="etcdctl not installed")
def test_etcdctl_needs_a_cluster_certificate(secured: Secured) -> None:
    key = f"/raftfl/{secured.name}/seed"
    assert _etcdctl(secured, "ops", "get", key) == 0  # the README's flags work
    for who, scheme in ((None, "http"), (None, "https"), ("other", "https")):
        assert _etcdctl(secured, who, "get", key, scheme=scheme) != 0, (who, scheme)
        assert _etcdctl(secured, who, "put", key, "evil", scheme=scheme) != 0, (who, scheme)
        assert _etcdctl(secured, who, "member", "add", "x", "--peer-urls=https://127.0.0.1:1",
                        scheme=scheme) != 0, (who, scheme)
    assert secured.store("root").get(key).value == b"1"


def test_node_certificate_is_limited_to_its_cluster_prefix(secured: Secured) -> None:
    node = secured.store("node")
    prefix = f"/raftfl/{secured.name}/"
    node.put(prefix + "mine", "1")
    assert node.get(prefix + "mine").value == b"1"
    assert node.revision() > 0
    assert _denied(lambda: node.get("/elsewhere/seed"))
    assert _denied(lambda: node.put("/elsewhere/evil", "1"))
    assert _denied(lambda: node.put(f"/raftfl/{secured.name}x/evil", "1"))
    assert _denied(lambda: node.call(lambda: node.client.add_member(["https://127.0.0.1:1"]),
                                     retry_for=1.0))
    assert secured.store("root").get("/elsewhere/evil") is None


def test_operator_reads_only(secured: Secured) -> None:
    ops = secured.store("ops")
    prefix = f"/raftfl/{secured.name}/"
    assert ops.get(prefix + "seed").value == b"1"
    assert _denied(lambda: ops.put(prefix + "seed", "2"))
    assert _denied(lambda: ops.get("/elsewhere/seed"))


def _session(bundle: tls.Identity | None, address: str, node_id: int) -> tuple[FleetClient, list]:
    errors: list[BaseException] = []
    tls.configure(bundle)  # the client reads it per request: keep it for the session
    client = FleetClient(address, node_id, f"n{node_id}", silence_limit=2.0)

    def run() -> None:
        try:
            client.run(lambda _m, p: p)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threading.Thread(target=run, daemon=True).start()
    return client, errors


def test_fleet_admits_only_cluster_certificates(secured: Secured) -> None:
    tls.configure(secured.bundles["member"])
    server = FleetServer("127.0.0.1", 0).start()
    try:
        for who, node_id in ((None, 2), ("other", 3)):
            client, errors = _session(secured.bundles[who] if who else None, server.address,
                                      node_id)
            deadline = time.monotonic() + 10
            while not errors and time.monotonic() < deadline:
                time.sleep(0.05)
            assert errors and isinstance(errors[0], FleetError), who
            assert node_id not in server.node_ids()
        client, errors = _session(secured.bundles["node"], server.address, 4)
        deadline = time.monotonic() + 10
        while 4 not in server.node_ids() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.node_ids() == [4] and not errors
        client.abort()
    finally:
        server.stop()
        tls.configure(None)


def test_cli_reads_with_an_operator_bundle_only(secured: Secured) -> None:
    eps = ",".join(secured.cluster.endpoints)
    base = [sys.executable, "-m", "raftfl", "run", "list", "--endpoints", eps,
            "--cluster", secured.name, "--json"]
    ops = subprocess.run(base + ["--certs", str(secured.bundles["ops"].cert.parent)],
                         capture_output=True, text=True, timeout=60)
    assert ops.returncode == 0, ops.stderr
    plain = subprocess.run(base, capture_output=True, text=True, timeout=60)
    assert plain.returncode == 1
    assert len(plain.stderr.strip().splitlines()) == 1, plain.stderr


@pytest.mark.parametrize("who,admitted", [("member", True), ("node", True), ("ops", False),
                                          ("root", False)])
def test_the_peer_port_admits_node_bundles_only(secured: Secured, who: str,
                                                admitted: bool) -> None:
    """etcd's peer port takes only the peer certificate a node's bundle carries: an operator's
    or the admin's certificate of the same CA cannot speak Raft to the members."""
    bundle = secured.bundles[who]
    cert, key, _ = bundle.peer or (bundle.cert, bundle.key, bundle.ca)
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE  # we test the server's check
    ctx.load_cert_chain(str(cert), str(key))
    spec = secured.cluster.members[0].spec
    conn = http.client.HTTPSConnection(spec.ip, spec.peer_port, context=ctx, timeout=5)
    try:
        conn.request("GET", "/version")
        status = conn.getresponse().status
    except (OSError, http.client.HTTPException):
        status = None
    finally:
        conn.close()
    assert (status == 200) == admitted, (who, status)


# -- per-node roles: a node writes its own records only ------------------------------------
A, B, JOINER = "127.0.0.1:5000", "127.0.0.1:5001", "127.0.0.1:5002"  # "node", "node2", "joiner"


def _code(fn) -> grpc.StatusCode | None:  # noqa: ANN001
    """The gRPC code etcd refused `fn` with, None if it succeeded."""
    try:
        fn()
    except grpc.RpcError as exc:
        return exc.code()
    return None


DENIED = grpc.StatusCode.PERMISSION_DENIED


def test_a_node_cannot_write_or_revoke_another_nodes_records(secured: Secured) -> None:
    keys = Keys(secured.name)
    a, b, root = secured.store("node"), secured.store("node2"), secured.store("root")
    lease_a = a.grant(60)
    a.put(keys.member(A), '{"node": "a"}', lease=lease_a)
    a.create(keys.latency_sample(A, 1), '{"rtt_ms": {}}', lease=lease_a)
    a.put(keys.aggregator, "a", lease=lease_a)  # the shared role's keys ride on it too

    refused = {
        "put A's member record": lambda: b.put(keys.member(A), '{"node": "b"}'),
        "put a latency sample as A": lambda: b.put(keys.latency_sample(A, 2), "{}"),
        "overwrite A's sample": lambda: b.put(keys.latency_sample(A, 1), "{}"),
        "delete A's member record": lambda: b.delete(keys.member(A)),
        "delete A's samples": lambda: b.delete_prefix(keys.latency_of(A)),
        "revoke A's lease": lambda: b.call(lambda: b.client.revoke_lease(lease_a)),
        "attach a key to A's lease": lambda: b.put(keys.member(B), "{}", lease=lease_a),
    }
    got = {what: _code(fn) for what, fn in refused.items()}
    assert got == dict.fromkeys(refused, DENIED)
    assert root.get(keys.member(A)).value == b'{"node": "a"}'
    assert root.get(keys.latency_sample(A, 1)) is not None
    assert root.get(keys.latency_sample(A, 2)) is None and root.get(keys.member(B)) is None
    assert a.keepalive(lease_a) > 0  # A's lease, and the role on it, live on

    # B's own records: written, rewritten, deleted, and its own lease revoked.
    lease_b = b.grant(60)
    b.put(keys.member(B), '{"node": "b"}', lease=lease_b)
    b.create(keys.latency_sample(B, 1), "{}", lease=lease_b)
    b.create(keys.latency_sample(B, 2), "{}", lease=lease_b)
    assert b.delete(keys.latency_sample(B, 1))
    b.call(lambda: b.client.revoke_lease(lease_b))
    assert root.get(keys.member(B)) is None and root.get(keys.latency_sample(B, 2)) is None
    a.call(lambda: a.client.revoke_lease(lease_a))
    assert root.get(keys.member(A)) is None and root.get(keys.aggregator) is None


def test_a_node_cannot_raise_a_suspicion_as_another(secured: Secured) -> None:
    keys = Keys(secured.name)
    b = secured.store("node2")
    assert _code(lambda: b.put(keys.suspect(7, A), "{}")) == DENIED
    assert _code(lambda: b.delete_prefix(keys.suspicions_of(A))) == DENIED
    b.put(keys.suspect(7, B), "{}")
    assert b.delete(keys.suspect(7, B))


def test_a_node_added_later_gets_its_own_role(secured: Secured) -> None:
    """`node join` needs root while auth is on; the operator then admits the new node with
    `certs rbac --user HOST:PORT`, which gives it its own role as well."""
    keys = Keys(secured.name)
    joiner = secured.store("joiner")
    assert _code(lambda: joiner.put(keys.member(JOINER), "{}")) is not None  # no user yet
    assert secured.base is not None
    proc = subprocess.run(
        [sys.executable, "-m", "raftfl", "certs", "rbac", "--certs", str(secured.base / "A" / "root"),
         "--endpoints", ",".join(secured.cluster.endpoints), "--cluster", secured.name,
         "-n", A, B, "--user", JOINER, "--operator", "ops"],
        capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    joiner = secured.store("joiner")
    joiner.put(keys.member(JOINER), "{}")
    joiner.put(keys.latency_sample(JOINER, 1), "{}")
    assert _code(lambda: joiner.put(keys.member(A), "{}")) == DENIED
    assert _code(lambda: secured.store("node2").put(keys.member(JOINER), "{}")) == DENIED

    # A second run leaves each role with exactly its grants: nothing piled up or left over.
    root = secured.store("root")
    for role, grants in rbac.permissions(secured.name, [A, B, JOINER]).items():
        held = root.call(lambda r=role: root.client.authstub.RoleGet(
            etcdrpc.AuthRoleGetRequest(role=r), 5)).perm
        assert sorted((p.permType, p.key, p.range_end) for p in held) == sorted(grants), role
