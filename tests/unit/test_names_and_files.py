"""Safe names, quoted etcd configuration, private data dirs and atomic writes (issue 7, defect 12).

Before the fix, `--cluster "x'\\nenable-pprof: true"` added a setting to the member's YAML and
`--cluster ../../x` put the data dir outside the data root.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from raftfl.core.address import check_cluster_name, check_node_name, parse_address
from raftfl.core.errors import RaftflError
from raftfl.core.keys import Keys
from raftfl.etcd.member import MemberSpec
from raftfl.files import make_private_dir, write_atomic

yaml = pytest.importorskip("yaml")

INJECTION = "x'\nenable-pprof: true"


@pytest.mark.parametrize("name,ok", [
    ("default", True), ("demo", True), ("t0a1b2c3d4-9f8e7d6c", True), ("a.b_c-d", True),
    ("x" * 63, True), ("x" * 64, False), ("", False), ("../../x", False), ("..", False),
    (".hidden", False), ("a/b", False), (INJECTION, False), ("a b", False), ("a'b", False),
    ("a:b", False), ("ü", False), ("-rf", False),
])
def test_cluster_names(name: str, ok: bool) -> None:
    if ok:
        assert check_cluster_name(name) == name
        assert Keys(name).root == f"/raftfl/{name}/"
    else:
        with pytest.raises(RaftflError, match="invalid cluster name"):
            check_cluster_name(name)
        with pytest.raises(RaftflError):
            Keys(name)  # no code path builds keys (or data dirs) from it


@pytest.mark.parametrize("text,ok", [
    ("localhost:5000", True), ("127.0.0.1:5000", True), ("node-1.lan:5000", True),
    ("x'y:5000", False), ("a\nb:5000", False), ("../x:5000", False), ("a b:5000", False),
    ("[::1]:5000", False), (":5000", False), ("a=b:5000", False), ("a,b:5000", False),
])
def test_node_addresses(text: str, ok: bool) -> None:
    if ok:
        assert check_node_name(parse_address(text).name) == text
    else:
        with pytest.raises(RaftflError, match="invalid node address"):
            parse_address(text)


def _spec(**kw: object) -> MemberSpec:
    args: dict = {"name": "127.0.0.1:5000", "cluster": "c", "data_dir": Path("/tmp/d"),
                  "ip": "127.0.0.1", "peer_port": 5000, "client_port": 5100,
                  "initial_cluster": {"127.0.0.1:5000": "http://127.0.0.1:5000"}}
    args.update(kw)
    return MemberSpec(**args)


@pytest.mark.parametrize("field,value", [("name", INJECTION), ("cluster", INJECTION),
                                         ("cluster", "../../x"),
                                         ("initial_cluster", {"a,b=c": "http://x:1"})])
def test_member_spec_refuses_unsafe_names(field: str, value: object) -> None:
    with pytest.raises(RaftflError):
        _spec(**{field: value})


def test_every_rendered_string_stays_one_value() -> None:
    """The data dir is any path the user gives: quoting, not validation, must hold it."""
    data_dir = Path(f"/tmp/{INJECTION}\\ \"quoted\" ü")
    rendered = yaml.safe_load(_spec(data_dir=data_dir).render())
    assert "enable-pprof" not in rendered
    assert rendered["data-dir"] == f"{data_dir}/member-data"
    assert rendered["log-outputs"] == [f"{data_dir}/etcd.log"]
    assert rendered["name"] == "127.0.0.1:5000"
    assert rendered["initial-cluster"] == "127.0.0.1:5000=http://127.0.0.1:5000"
    assert rendered["quota-backend-bytes"] == 2 * 1024**3


# -- files ----------------------------------------------------------------------------------


def test_private_dirs_are_created_0700(tmp_path: Path) -> None:
    os.chmod(tmp_path, 0o755)
    target = tmp_path / "root" / "cluster" / "node"
    old_umask = os.umask(0)  # even with a permissive umask
    try:
        make_private_dir(target)
    finally:
        os.umask(old_umask)
    for path in (tmp_path / "root", tmp_path / "root" / "cluster", target):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700, path
    assert stat.S_IMODE(tmp_path.stat().st_mode) == 0o755  # existing parents are left alone
    make_private_dir(target)  # idempotent
    (tmp_path / "file").write_text("x")
    with pytest.raises(OSError):
        make_private_dir(tmp_path / "file")


def test_write_atomic_replaces_whole_files(tmp_path: Path) -> None:
    target = tmp_path / "final_model.bin"
    write_atomic(target, b"first")
    write_atomic(target, b"second, longer")
    assert target.read_bytes() == b"second, longer"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    write_atomic(target, "text", mode=0o600)
    assert target.read_text() == "text" and stat.S_IMODE(target.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final_model.bin"]  # no temp left


def test_write_atomic_refuses_a_symlink_at_the_target(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious")
    link = tmp_path / "result.json"
    link.symlink_to(victim)
    with pytest.raises(RaftflError, match="symlink"):
        write_atomic(link, "{}")
    assert victim.read_text() == "precious" and link.is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json", "victim"]


def test_test_modules_have_unique_basenames() -> None:
    # pytest's default import mode puts each test dir on sys.path: two test files with one
    # basename abort collection on a fresh clone (a stale __pycache__ hides it locally).
    root = Path(__file__).resolve().parents[1]
    names = [p.name for p in root.rglob("test_*.py")]
    assert sorted(n for n in set(names) if names.count(n) > 1) == []
