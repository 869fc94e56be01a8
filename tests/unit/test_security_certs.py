"""Certificates, bundles and the safe-by-default bind rule (issue 9, parts 1 and 4)."""

from __future__ import annotations

import ipaddress
import os
import stat
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from conftest import RpcFailure
from cryptography import x509

from raftfl import tls
from raftfl.core import certs
from raftfl.core.errors import RaftflError
from raftfl.etcd.member import MemberSpec
from raftfl.etcd.store import _retryable


@pytest.fixture(scope="module")
def ca() -> certs.Issued:
    return certs.make_ca("demo")


@pytest.mark.parametrize("hosts,ips,dns", [
    (["10.0.0.1"], ["10.0.0.1"], []),
    (["node-a.lan", "10.0.0.1"], ["10.0.0.1"], ["node-a.lan"]),
    (["localhost", "127.0.0.1", "127.0.0.1"], ["127.0.0.1"], ["localhost"]),
    (["[::1]"], ["::1"], []),
    ([], [], []),
])
def test_sans_from_the_address(ca: certs.Issued, hosts: list[str], ips: list[str],
                               dns: list[str]) -> None:
    issued = certs.issue(ca, "node-a:5000", hosts)
    cert = x509.load_pem_x509_certificate(issued.cert_pem)
    assert certs.common_name(issued.cert_pem) == "node-a:5000"
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        assert not ips and not dns
        return
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address(i) for i in ips]
    assert san.get_values_for_type(x509.DNSName) == dns


def test_signed_by_own_ca_only(ca: certs.Issued) -> None:
    other = certs.make_ca("demo")
    issued = certs.issue(ca, "n:1", ["127.0.0.1"])
    assert certs.signed_by(issued.cert_pem, ca.cert_pem)
    assert not certs.signed_by(issued.cert_pem, other.cert_pem)


@pytest.mark.parametrize("ip,secured,insecure,ok", [
    ("127.0.0.1", False, False, True), ("127.0.1.1", False, False, True),
    ("::1", False, False, True), ("10.0.0.1", False, False, False),
    ("10.0.0.1", True, False, True), ("10.0.0.1", False, True, True),
    ("0.0.0.0", False, False, False), ("garbage", False, False, False),
])
def test_bind_rule(ip: str, secured: bool, insecure: bool, ok: bool) -> None:
    if ok:
        certs.check_bind(ip, secured, insecure)
    else:
        with pytest.raises(RaftflError, match="--certs DIR.*--insecure"):
            certs.check_bind(ip, secured, insecure)


def test_bundle_files_modes_and_no_overwrite(tmp_path: Path) -> None:
    tls.init_ca(tmp_path, "demo")
    assert stat.S_IMODE(os.stat(tmp_path / "ca.key").st_mode) == 0o600
    with pytest.raises(RaftflError, match="--force"):
        tls.init_ca(tmp_path, "demo")
    bundle = tls.issue_bundle(tmp_path, "127.0.0.1_5000", "127.0.0.1:5000", ["127.0.0.1"])
    assert stat.S_IMODE(os.stat(bundle / "tls.key").st_mode) == 0o600
    before = (bundle / "tls.key").read_bytes()
    with pytest.raises(RaftflError, match="--force"):
        tls.issue_bundle(tmp_path, "127.0.0.1_5000", "127.0.0.1:5000", ["127.0.0.1"])
    assert (bundle / "tls.key").read_bytes() == before
    tls.issue_bundle(tmp_path, "127.0.0.1_5000", "127.0.0.1:5000", ["127.0.0.1"], force=True)
    assert (bundle / "tls.key").read_bytes() != before
    identity = tls.load(bundle)
    assert (identity.name, identity.cluster) == ("127.0.0.1:5000", "demo")


def test_load_refuses_bad_bundles(tmp_path: Path) -> None:
    tls.init_ca(tmp_path / "a", "demo")
    tls.init_ca(tmp_path / "b", "demo")
    bundle = tls.issue_bundle(tmp_path / "a", "n", "n:1", [])
    with pytest.raises(RaftflError, match="not issued by ca.crt"):
        (bundle / "ca.crt").write_bytes((tmp_path / "b" / "ca.crt").read_bytes())
        tls.load(bundle)
    (bundle / "ca.crt").write_bytes((tmp_path / "a" / "ca.crt").read_bytes())
    os.chmod(bundle / "tls.key", 0o644)
    with pytest.raises(RaftflError, match="chmod 600"):
        tls.load(bundle)
    (bundle / "tls.crt").unlink()
    with pytest.raises(RaftflError, match="tls.crt missing"):
        tls.load(bundle)


def test_member_config_with_and_without_tls(tmp_path: Path) -> None:
    yaml = pytest.importorskip("yaml")
    tls.init_ca(tmp_path, "demo")
    identity = tls.load(tls.issue_bundle(tmp_path, "n", "n:1", ["127.0.0.1"]))
    common = dict(name="n:1", cluster="demo", data_dir=tmp_path / "d", ip="127.0.0.1",
                  peer_port=5000, client_port=5100, initial_cluster={"n:1": "http://127.0.0.1:5000"})
    plain = yaml.safe_load(MemberSpec(**common, identity=None).render())
    assert plain["listen-client-urls"].startswith("http://")
    assert "client-transport-security" not in plain
    secured = yaml.safe_load(MemberSpec(**common, identity=identity).render())
    assert secured["listen-client-urls"] == "https://127.0.0.1:5100"
    assert secured["initial-cluster"] == "n:1=https://127.0.0.1:5000"
    assert identity.peer is not None  # a node's bundle: the peer port has a CA of its own
    for side, (cert, _, ca) in (("client-transport-security", (identity.cert, None, identity.ca)),
                                ("peer-transport-security", identity.peer)):
        assert secured[side]["client-cert-auth"] is True
        assert secured[side]["trusted-ca-file"] == str(ca)
        assert secured[side]["cert-file"] == str(cert)
    assert identity.peer[2].read_bytes() != identity.ca.read_bytes()
    operator = tls.load(tls.issue_bundle(tmp_path, "o", "operator-o", []))
    assert operator.peer is None  # no certificate the peer port would take


def test_node_refuses_a_public_address_without_certs(tmp_path: Path) -> None:
    """Validation happens before anything binds: one line, exit 1, no data dir made."""
    cmd = [sys.executable, "-m", "raftfl", "node", "start", "-a", "self", "-r", "1",
           "-s", "10.213.9.1:5000", "-n", "10.213.9.2:5000", "--data-dir", str(tmp_path / "d")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--certs DIR" in lines[0] and "--insecure" in lines[0], proc.stderr
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("code,details,retry", [
    (grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: revision of auth store is old", True),
    (grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: key is not provided", False),
    (grpc.StatusCode.PERMISSION_DENIED, "etcdserver: permission denied", False),
    (grpc.StatusCode.UNAVAILABLE, "", True),
])
def test_store_retries_a_request_that_raced_an_rbac_change(code: grpc.StatusCode, details: str,
                                                            retry: bool) -> None:
    """Found by `raftfl demo --secure`: RBAC turned on while nodes ran failed a request."""
    assert _retryable(RpcFailure(code, details)) is retry
