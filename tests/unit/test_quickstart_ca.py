"""The loopback quick start's own CA (raftfl/cli/quickstart.py): made once by whichever node
starts first, a bundle per node, a `root` bundle for the CLI, private to this Unix user."""

from __future__ import annotations

import multiprocessing
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from raftfl import tls
from raftfl.cli import quickstart
from raftfl.core import certs
from raftfl.core.address import parse_address
from raftfl.core.errors import RaftflError


@pytest.fixture(autouse=True)
def _no_identity() -> Iterator[None]:
    tls.configure(None)
    yield
    tls.configure(None)


def _issue(directory: str, name: str) -> None:
    quickstart.node_identity(Path(directory), "qs", parse_address(name))


def test_three_nodes_starting_at_once_share_one_ca(tmp_path: Path) -> None:
    ca = tmp_path / "cluster" / quickstart.CA_DIR
    names = ["localhost:5000", "localhost:5001", "127.0.0.1:5002"]
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_issue, args=(str(ca), name)) for name in names]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(30)
        assert proc.exitcode == 0
    ca_pem = (ca / tls.CA_CERT).read_bytes()
    for name in names:
        identity = tls.load(ca / name.replace(":", "_"))
        assert identity.name == name and identity.cluster == "qs"
        assert certs.signed_by(identity.cert.read_bytes(), ca_pem)
        assert identity.peer is not None  # a node bundle: it runs an etcd member
    assert stat.S_IMODE(ca.stat().st_mode) == 0o700
    keys = list(ca.rglob("*.key"))
    assert len(keys) == 2 + 2 * len(names)  # the CAs', and each node's TLS and peer keys
    assert {stat.S_IMODE(k.stat().st_mode) for k in keys} == {0o600}


def test_a_node_restarted_keeps_its_bundle(tmp_path: Path) -> None:
    me = parse_address("localhost:5000")
    first = quickstart.node_identity(tmp_path / "ca", "qs", me).cert.read_bytes()
    assert quickstart.node_identity(tmp_path / "ca", "qs", me).cert.read_bytes() == first


@pytest.mark.parametrize(("host", "resolved", "sans"), [
    ("localhost", "127.0.0.1", ["localhost", "127.0.0.1", "localhost", "127.0.0.1"]),
    ("127.0.0.2", "127.0.0.2", ["127.0.0.2", "127.0.0.2", "localhost", "127.0.0.1"]),
    ("node-a", "10.0.0.5", ["node-a", "10.0.0.5"]),
    ("nowhere", None, ["nowhere"]),
])
def test_node_certificates_name_what_peers_dial(monkeypatch: pytest.MonkeyPatch, host: str,
                                                resolved: str | None, sans: list[str]) -> None:
    def resolve(name: str) -> str:
        if resolved is None:
            raise RaftflError(f"{name} does not resolve")
        return resolved

    monkeypatch.setattr(quickstart, "resolve", resolve)
    assert quickstart.node_hosts(parse_address(f"{host}:5000")) == sans


def _open_dir(path: Path) -> None:
    path.mkdir(mode=0o755)
    path.chmod(0o755)


def _symlink(path: Path) -> None:
    target = path.with_name("elsewhere")
    target.mkdir(mode=0o700)
    path.symlink_to(target)


def _foreign(path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("giving a directory to another user needs root")
    path.mkdir(mode=0o700)
    os.chown(path, 65534, 65534)


@pytest.mark.parametrize("plant", [_open_dir, _symlink, _foreign],
                         ids=["group-and-world-open", "symlink", "another-users"])
def test_a_ca_folder_not_private_to_this_user_is_refused(tmp_path: Path, plant: Any) -> None:
    ca = tmp_path / quickstart.CA_DIR
    plant(ca)
    with pytest.raises(RaftflError, match="not a private directory of this user"):
        quickstart.node_identity(ca, "qs", parse_address("localhost:5000"))
    assert not (ca / tls.CA_KEY).exists()


def test_the_cli_issues_itself_root_once_and_only_beside_a_quick_start(tmp_path: Path) -> None:
    ca = tmp_path / quickstart.CA_DIR
    assert quickstart.client_identity(ca) is None  # no quick start here: nothing is made
    assert not ca.exists()
    quickstart.node_identity(ca, "qs", parse_address("localhost:5000"))
    root = quickstart.client_identity(ca)
    assert root is not None and root.name == certs.ROOT_CN and root.peer is None
    again = quickstart.client_identity(ca)
    assert again is not None and again.cert.read_bytes() == root.cert.read_bytes()


@pytest.mark.parametrize(("endpoints", "made", "configured"), [
    (["127.0.0.1:5100"], True, True),
    (["127.0.0.1:5100", "127.0.0.2:5101"], True, True),
    (["127.0.0.1:5100", "10.0.0.1:5100"], True, False),  # not only this host: --certs's job
    (["127.0.0.1:5100"], False, False),  # no quick start of this cluster here
])
def test_commands_use_the_quick_start_of_their_cluster(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, endpoints: list[str], made: bool,
        configured: bool) -> None:
    monkeypatch.chdir(tmp_path)
    if made:
        quickstart.node_identity(quickstart.cluster_ca("qs"), "qs",
                                 parse_address("localhost:5000"))
    quickstart.use_client_identity("qs", endpoints)
    identity = tls.current()
    assert (identity is not None) == configured
    if identity is not None:
        assert identity.name == certs.ROOT_CN
        assert identity.cert.parent == tmp_path / ".raftfl" / "qs" / quickstart.CA_DIR / "root"


def test_given_certs_win(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    mine = quickstart.node_identity(tmp_path / "mine", "qs", parse_address("localhost:5000"))
    quickstart.node_identity(quickstart.cluster_ca("qs"), "qs", parse_address("localhost:5000"))
    tls.configure(mine)
    quickstart.use_client_identity("qs", ["127.0.0.1:5100"])
    assert tls.current() is mine


def _opts(tmp_path: Path, host: str = "127.0.0.1", external: bool = False) -> Any:
    return SimpleNamespace(ip=host, etcd_endpoints=("127.0.0.1:2379",) if external else None,
                           dir=tmp_path / "c" / "node0", cluster="qs",
                           address=parse_address(f"{host}:5000"))


@pytest.mark.parametrize(("case", "insecure", "says", "secured"), [
    ("loopback", False, "quick start: mutual TLS", True),
    ("loopback", True, "every local user", False),
    ("other host", False, None, False),  # check_bind refused it already, or --insecure
    ("external etcd", False, None, False),  # --etcd-endpoints: that cluster's own terms
    ("certs given", False, None, True),
])
def test_a_loopback_node_is_safe_unless_told_otherwise(tmp_path: Path, case: str,
                                                       insecure: bool, says: str | None,
                                                       secured: bool) -> None:
    opts = _opts(tmp_path, "10.0.0.5" if case == "other host" else "127.0.0.1",
                 external=case == "external etcd")
    if case == "certs given":
        tls.configure(quickstart.node_identity(tmp_path / "given", "qs", opts.address))
    line = quickstart.secure_node(opts, insecure)
    assert (line is None) == (says is None) and (says is None or says in (line or ""))
    assert (tls.current() is not None) == secured
    made = tmp_path / "c" / quickstart.CA_DIR
    assert made.exists() == (case == "loopback" and not insecure)
    if made.exists():
        assert str(made) in (line or "")
