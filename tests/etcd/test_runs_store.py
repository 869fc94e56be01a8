"""Runs in a real etcd cluster: id allocation (create-only, first free, never shared), the app
package stored and verified beside its spec, stop, and the node's view of the active run."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path

import pytest
from conftest import EtcdCluster
from test_bad_input import assert_one_line_error, run_cli

from raftfl.core.errors import RaftflError
from raftfl.core.events import AggregatorElected, RunCompleted
from raftfl.core.keys import Keys
from raftfl.core.specs import RunSpec
from raftfl.etcd import checkpoint, run_store
from raftfl.etcd.eventlog import EventLog
from raftfl.node import runapp
from raftfl.node.package import pack
from raftfl.node.runs import Runs


def fresh_keys(cluster: EtcdCluster) -> Keys:
    return Keys(f"{cluster.name}-{os.urandom(4).hex()}")


def spec_for(blob: bytes, app: str = "quickstart") -> RunSpec:
    return RunSpec(app=app, app_sha256=hashlib.sha256(blob).hexdigest(), run_config={})


def test_ids_are_allocated_create_only_first_free_and_never_shared(
        etcd_cluster_module: EtcdCluster) -> None:
    keys = fresh_keys(etcd_cluster_module)
    blob = pack(runapp.bundled_app())
    got: list[int] = []
    errors: list[BaseException] = []

    def submit() -> None:
        try:
            got.append(run_store.submit(etcd_cluster_module.store(), keys, spec_for(blob), blob))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=submit) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and sorted(got) == [1, 2, 3, 4, 5, 6]
    store = etcd_cluster_module.store()
    assert run_store.ids(store, keys) == [1, 2, 3, 4, 5, 6] and run_store.ids(store, keys, after=4) == [5, 6]
    # Run 1 exists: the first node's -r (a restart of it) submits nothing more.
    assert run_store.submit(store, keys, spec_for(blob, "other"), blob, run_id=1) is None
    assert run_store.spec(store, keys, 1).app == "quickstart"
    assert run_store.package(store, keys, 3, hashlib.sha256(blob).hexdigest()) == blob
    with pytest.raises(run_store.NoSuchRun, match="run 7 does not exist"):
        run_store.spec(store, keys, 7)


def test_a_tampered_package_or_spec_is_refused(etcd_cluster_module: EtcdCluster) -> None:
    keys = fresh_keys(etcd_cluster_module)
    store = etcd_cluster_module.store()
    blob = b"not really a package, but bytes with a hash"
    sha = hashlib.sha256(blob).hexdigest()
    with pytest.raises(ValueError, match="another package"):
        run_store.submit(store, keys, spec_for(b"other bytes"), blob)
    assert run_store.submit(store, keys, spec_for(blob), blob) == 1
    store.put(keys.run(1).app.checkpoint_chunk(sha, 0), b"bit rot")
    with pytest.raises(checkpoint.CorruptCheckpoint):
        run_store.package(store, keys, 1, sha)
    store.put(keys.run(1).spec, "[" * 100)
    with pytest.raises(RaftflError, match="run 1's spec is unreadable"):
        run_store.spec(store, keys, 1)


def test_stop_records_once_and_the_node_moves_on(etcd_cluster_module: EtcdCluster,
                                                 tmp_path: Path) -> None:
    keys = fresh_keys(etcd_cluster_module)
    store = etcd_cluster_module.store()
    blob = pack(runapp.bundled_app())
    for _ in range(3):
        run_store.submit(store, keys, spec_for(blob), blob)
    node = Runs(store, keys, tmp_path, None)  # type: ignore[arg-type] # loads no model
    first = node.refresh()
    assert (first.active, first.latest, first.elected_before) == (1, 3, False)

    # Run 1 completes (an elected term, then run_completed): run 2 is next.
    log = EventLog(store, keys.run(1))
    log.append(AggregatorElected(node="a", term=1, flower_address="h:1", rank=0, score=1.0,
                                 revision=1, ranking=[]))
    log.append(RunCompleted(node="a", term=1, rounds=0, model_sha256="0" * 64))
    after = node.refresh()
    assert (after.active, after.elected_before) == (2, True) and list(node.finished) == [1]

    assert run_store.stop(store, keys, 3, "alice@host") == "run 3 stopped"  # queued: skipped
    assert run_store.stop(store, keys, 3, "bob@host").startswith("run 3 was stopped already")
    assert run_store.stop(store, keys, 1, "alice@host") == "run 1 has completed already"
    with pytest.raises(run_store.NoSuchRun):
        run_store.stop(store, keys, 4, "alice@host")
    assert node.refresh().active == 2
    assert run_store.stop(store, keys, 2, "alice@host") == "run 2 stopped"
    done = node.refresh()
    assert done.active is None and done.latest == 3 and done.state.stopped is not None

    # Each run's app unpacks into <data-dir>/apps/<id>/, and loads as the app it names.
    app = node.app(2)
    assert app.flower_app is not None and app.flower_app.root == tmp_path / "apps" / "2"
    assert app.flower_app.name == runapp.load(None).name
    app.apps.cancel()  # no need to import torch here


def test_the_run_commands_answer_bad_input_in_one_line(etcd_cluster_module: EtcdCluster,
                                                        tmp_path: Path) -> None:
    keys = fresh_keys(etcd_cluster_module)
    args = ["--endpoints", ",".join(etcd_cluster_module.endpoints), "--cluster", keys.cluster]
    app = tmp_path / "app"
    app.mkdir()
    (app / "pyproject.toml").write_text(
        (runapp.bundled_app() / "pyproject.toml").read_text())
    (app / "leak.py").symlink_to("/etc/passwd")
    proc = run_cli(["run", "submit", *args, "--app", str(app)], tmp_path)
    assert_one_line_error(proc, 1, "symlink", "leak.py")
    proc = run_cli(["run", "submit", *args, "--app", str(runapp.bundled_app()),
                    "--run-config", "no-such-key=1"], tmp_path)
    assert_one_line_error(proc, 1, "no-such-key")
    for command in (["run", "stop", *args, "4"], ["history", *args, "--run", "4"],
                    ["status", *args, "--run", "4"]):
        assert_one_line_error(run_cli(command, tmp_path), 1, "run 4 does not exist")
    assert run_store.ids(etcd_cluster_module.store(), keys) == []  # nothing was submitted

    proc = run_cli(["run", "submit", *args, "--app", str(runapp.bundled_app()), "--json"],
                   tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["run"] == 1
    proc = run_cli(["run", "list", *args, "--json"], tmp_path)
    assert [(r["run"], r["state"]) for r in json.loads(proc.stdout)] == [(1, "running")]
