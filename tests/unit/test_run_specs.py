"""Runs without etcd: the run key layout, the run spec record, which run is active, and app
packages (what is packed; what unpacking refuses, and that a refusal writes nothing)."""

from __future__ import annotations

import io
import random
import stat
import sys
import warnings
import zipfile
from pathlib import Path

import pytest

from raftfl.core.errors import RaftflError
from raftfl.core.events import AggregatorElected, RunCompleted, RunStopped
from raftfl.core.keys import Keys
from raftfl.core.records import MalformedRecord
from raftfl.core.replay import FLState, Logged, replay
from raftfl.core.run_order import active, run_state
from raftfl.core.specs import RunSpec, spec_rounds
from raftfl.flower.app import load_app
from raftfl.node import runapp
from raftfl.node.package import MAX_PACKAGE_BYTES, PackageError, pack, unpack

SHA = "ab" * 32


def state(*events: object) -> FLState:
    return replay(Logged(i + 1, 100 + i, ev) for i, ev in enumerate(events))  # type: ignore[misc]


ELECTED = AggregatorElected(node="a", term=7, flower_address="h:1", rank=0, score=1.0,
                            revision=7, ranking=[])
COMPLETED = state(ELECTED, RunCompleted(node="a", term=7, rounds=2, model_sha256=SHA))
STOPPED = state(RunStopped(node="alice@h", reason="raftfl run stop"))
OPEN = state(ELECTED)


# -- keys -----------------------------------------------------------------------------------
def test_run_keys_live_under_runs_and_keep_the_cluster_keys() -> None:
    rk = Keys("c").run(12)
    assert rk.spec == "/raftfl/c/submissions/12/spec"
    assert rk.event(3) == "/raftfl/c/runs/12/events/000000000003"
    assert rk.checkpoint_meta(SHA) == f"/raftfl/c/runs/12/checkpoints/{SHA}/meta"
    assert rk.app.checkpoint_chunk(SHA, 0) == f"/raftfl/c/submissions/12/app/{SHA}/000000"
    assert rk.aggregator == Keys("c").aggregator and rk.config == "/raftfl/c/config"
    assert not Keys("c").run(1).events.startswith(Keys("c").run(12).run_root)  # no prefix clash
    assert not hasattr(Keys("c"), "events")  # a run's log is always a run's


@pytest.mark.parametrize("bad", [0, -1, 10**10, True, "1"])
def test_run_ids_are_positive_integers(bad: object) -> None:
    with pytest.raises(RaftflError, match="run id"):
        Keys("c").run(bad)  # type: ignore[arg-type]


# -- the spec -------------------------------------------------------------------------------
def test_run_spec_round_trips_and_is_range_checked() -> None:
    spec = RunSpec(app="quickstart", app_sha256=SHA, run_config={"num-server-rounds": 2,
                                                                  "lr": 0.1, "name": "x"},
                   rounds=2, by="alice@host")
    assert RunSpec.from_json(spec.to_json()) == spec
    with pytest.raises(MalformedRecord, match="app_sha256"):
        RunSpec.from_json(spec.to_json().replace(SHA, "x" * 64))
    with pytest.raises(MalformedRecord, match="rounds"):
        RunSpec.from_json(spec.to_json().replace('"rounds": 2', '"rounds": 0'))
    with pytest.raises(MalformedRecord, match="run_config"):
        RunSpec.from_json(spec.to_json().replace('"lr": 0.1', '"lr": [1]'))


@pytest.mark.parametrize("config,rounds", [({"num-server-rounds": 3}, 3), ({}, None),
                                           ({"num-server-rounds": "3"}, None),
                                           ({"num-server-rounds": True}, None)])
def test_spec_rounds(config: dict, rounds: int | None) -> None:
    assert spec_rounds(config) == rounds


# -- which run --------------------------------------------------------------------------------
@pytest.mark.parametrize("states,expected", [
    ({}, None),
    ({1: OPEN, 2: FLState()}, 1),
    ({1: COMPLETED, 2: FLState(), 3: FLState()}, 2),
    ({1: COMPLETED, 2: STOPPED, 3: FLState()}, 3),  # a stopped run is skipped
    ({1: COMPLETED, 2: STOPPED}, None),
    ({3: FLState(), 1: COMPLETED, 2: OPEN}, 2),  # by id, not by order given
], ids=["none", "first", "after-completed", "after-stopped", "all-finished", "unordered"])
def test_the_active_run_is_the_lowest_unfinished(states: dict, expected: int | None) -> None:
    assert active(states) == expected


def test_run_states() -> None:
    both = state(ELECTED, RunCompleted(node="a", term=7, rounds=2, model_sha256=SHA),
                 RunStopped(node="late"))
    assert [run_state(1, COMPLETED, 3), run_state(2, STOPPED, 3), run_state(3, OPEN, 3),
            run_state(4, FLState(), 3), run_state(5, both, 3)] == \
        ["completed", "stopped", "running", "queued", "completed"]
    assert STOPPED.finished and COMPLETED.finished and not OPEN.finished


# -- packages -------------------------------------------------------------------------------
def _app(root: Path, name: str = "demoapp") -> Path:
    (root / name).mkdir(parents=True)
    (root / "pyproject.toml").write_text(f'''[project]
name = "{name}"
[tool.flwr.app.components]
serverapp = "{name}.server_app:app"
clientapp = "{name}.client_app:app"
[tool.flwr.app.config]
num-server-rounds = 2
''')
    (root / name / "__init__.py").write_text("")
    (root / name / "server_app.py").write_text("VALUE = 'server'\n")
    (root / name / "client_app.py").write_text("VALUE = 'client'\n")
    return root


def test_pack_takes_pyproject_and_python_files_only_and_is_deterministic(tmp_path: Path) -> None:
    root = _app(tmp_path / "app")
    (root / "data.csv").write_text("1,2\n")
    (root / "demoapp" / "__pycache__").mkdir()
    (root / "demoapp" / "__pycache__" / "x.py").write_text("cached")
    (root / ".venv" / "lib").mkdir(parents=True)
    (root / ".venv" / "lib" / "big.py").write_text("no")
    blob = pack(root)
    assert pack(root) == blob  # same directory, same bytes, same sha256
    names = sorted(zipfile.ZipFile(io.BytesIO(blob)).namelist())
    assert names == ["demoapp/__init__.py", "demoapp/client_app.py", "demoapp/server_app.py",
                     "pyproject.toml"]
    out = unpack(blob, tmp_path / "apps" / "1")
    assert (out / "demoapp" / "server_app.py").read_text() == "VALUE = 'server'\n"
    assert load_app(out).name == "demoapp"


def test_the_bundled_app_packs_and_loads(tmp_path: Path) -> None:
    out = unpack(pack(runapp.bundled_app()), tmp_path / "apps" / "1")
    app = load_app(out)
    assert app.name == runapp.load(None).name and app.config == runapp.load(None).config


def test_pack_refuses_symlinks_and_oversized_apps(tmp_path: Path) -> None:
    root = _app(tmp_path / "app")
    (root / "demoapp" / "secrets.py").symlink_to("/etc/passwd")
    with pytest.raises(PackageError, match="symlink"):
        pack(root)
    (root / "demoapp" / "secrets.py").unlink()
    (root / "demoapp" / "big.py").write_bytes(random.Random(0).randbytes(MAX_PACKAGE_BYTES))
    with pytest.raises(PackageError, match="more than"):
        pack(root)
    with pytest.raises(PackageError, match="pyproject"):
        pack(tmp_path)


def _zip(entries: list[tuple[str, bytes, int]]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # zipfile's, on the duplicate we build
        for name, data, mode in entries:
            info = zipfile.ZipInfo(name)
            info.external_attr = mode << 16
            zf.writestr(info, data)
    return out.getvalue()


PYPROJECT = ("pyproject.toml", b"[project]\nname='x'\n", stat.S_IFREG | 0o644)


@pytest.mark.parametrize("entry,reason", [
    (("../evil.py", b"x", stat.S_IFREG | 0o644), "not a plain relative path"),
    (("pkg/../../evil.py", b"x", stat.S_IFREG | 0o644), "not a plain relative path"),
    (("/etc/evil.py", b"x", stat.S_IFREG | 0o644), "not a plain relative path"),
    (("pkg\\..\\evil.py", b"x", stat.S_IFREG | 0o644), "not a plain relative path"),
    (("C:evil.py", b"x", stat.S_IFREG | 0o644), "not a plain relative path"),
    (("pkg//evil.py", b"x", stat.S_IFREG | 0o644), "not a plain relative path"),
    (("link.py", b"/etc/passwd", stat.S_IFLNK | 0o777), "not a regular file"),
    (("run.sh", b"rm -rf /", stat.S_IFREG | 0o755), "only pyproject.toml and python"),
    (("pyproject.toml", b"again", stat.S_IFREG | 0o644), "twice"),
], ids=["dotdot", "inner-dotdot", "absolute", "backslash", "drive", "empty-part", "symlink",
        "not-python", "duplicate"])
def test_unpack_refuses_hostile_entries_and_writes_nothing(entry: tuple[str, bytes, int],
                                                           reason: str, tmp_path: Path) -> None:
    dest = tmp_path / "apps" / "1"
    with pytest.raises(PackageError, match=reason):
        unpack(_zip([PYPROJECT, entry]), dest)
    assert not (tmp_path / "apps").exists()  # checked before anything is written
    assert not (tmp_path / "evil.py").exists() and not Path("/etc/evil.py").exists()


def test_unpack_refuses_junk_bombs_and_missing_pyproject(tmp_path: Path) -> None:
    dest = tmp_path / "apps" / "1"
    with pytest.raises(PackageError, match="not an app package"):
        unpack(b"definitely not a zip", dest)
    with pytest.raises(PackageError, match="no pyproject.toml"):
        unpack(_zip([("a.py", b"x", stat.S_IFREG | 0o644)]), dest)
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("pyproject.toml", b"[project]\n")
        zf.writestr("bomb.py", b"\0" * (9 * 1024 * 1024))  # compresses to a few KB
    with pytest.raises(PackageError, match="more than"):
        unpack(bomb.getvalue(), dest)
    assert not dest.exists() and list(dest.parent.iterdir()) == []  # the work dir is gone


def test_unpack_replaces_an_earlier_extraction(tmp_path: Path) -> None:
    dest = tmp_path / "apps" / "1"
    dest.mkdir(parents=True)
    (dest / "stale.py").write_text("old")
    unpack(_zip([PYPROJECT]), dest)
    assert sorted(p.name for p in dest.iterdir()) == ["pyproject.toml"]


def test_two_apps_with_one_module_name_load_one_after_the_other(tmp_path: Path) -> None:
    """What two runs of the same app need in one node process: unload, then load again."""
    first = load_app(_app(tmp_path / "one"))
    second = load_app(_app(tmp_path / "two"))
    (tmp_path / "two" / "demoapp" / "server_app.py").write_text("VALUE = 'second'\n")
    try:
        assert first._load("demoapp.server_app:VALUE", str) == "server"
        with pytest.raises(RaftflError, match="already loaded"):
            second._load("demoapp.server_app:VALUE", str)
        first.unload()
        assert not any(name.startswith("demoapp") for name in sys.modules)
        assert second._load("demoapp.server_app:VALUE", str) == "second"
    finally:
        first.unload()
        second.unload()
