"""Signed apps on a secured 3-node federation of real node processes (mutual TLS, etcd RBAC),
every node started with --trusted-entities naming one operator key.

Run 1 (node 0's `-r`, unsigned) and run 2 (signed by a key the nodes do not trust) are
refused: each is stopped with the reason, one line says so, and no node unpacks their app.
A node's certificate cannot submit a run at all (etcd: permission denied). Run 3, signed by
the trusted key, trains to completion on every node.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from raftfl import signing
from raftfl.core.replay import replay
from raftfl.etcd.eventlog import EventLog
from raftfl.lab.localcluster import LocalCluster
from raftfl.node import runapp

pytestmark = pytest.mark.slow
WAIT = 240
SMALL = "train-size=600 test-size=200 num-server-rounds=2"


def cli(c: LocalCluster, bundle: str, command: str, *args: str,
        ok: bool = True) -> subprocess.CompletedProcess[str]:
    assert c.workdir is not None
    proc = subprocess.run([sys.executable, "-m", "raftfl", *command.split(), "--cluster",
                           c.cluster, "--certs", str(c.workdir / "certs" / bundle),
                           "-n", *[n.name for n in c.nodes], *args],
                          capture_output=True, text=True, timeout=60)
    assert (proc.returncode == 0) is ok, f"raftfl {command} {' '.join(args)}: {proc.stderr}"
    return proc


def wait_state(c: LocalCluster, run: int, state: str) -> dict[str, Any]:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        assert all(n.alive for n in c.nodes), c.tail_logs()
        listed = {r["run"]: r for r in json.loads(cli(c, "root", "run list", "--json").stdout)}
        if listed.get(run, {}).get("state") == state:
            return listed[run]
        time.sleep(1.0)
    raise AssertionError(f"timed out waiting for run {run} to be {state}\n{c.tail_logs()}")


def logs(c: LocalCluster) -> str:
    return "".join(n.log_path.read_text(errors="replace") for n in c.nodes)


def test_nodes_run_only_apps_signed_by_a_key_they_trust(tmp_path: Path) -> None:
    alice = signing.new_key_pair("alice", tmp_path / "alice")
    mallory = signing.new_key_pair("mallory", tmp_path / "mallory")[0]
    trusted = tmp_path / "trusted-entities.yaml"
    trusted.write_text(alice[2] + "\n")
    app = str(runapp.bundled_app())
    with LocalCluster(n=3, rounds=2, cluster="t-signed", exit_on_complete=False, secure=True,
                      train_size=600, test_size=200,
                      extra_args=["--trusted-entities", str(trusted)]) as c:
        store = c.store()
        # Run 1: node 0's -r submitted it unsigned.
        wait_state(c, 1, "stopped")
        first = replay(EventLog(store, c.keys.run(1)).read().events)
        assert first.stopped is not None and "refused: it is not signed" in first.stopped.reason
        assert not first.committed and first.completed is None
        c.wait_for(lambda: "run 1 stopped: its app cannot be used: RunRefused: refused: it is "
                   "not signed" in logs(c), 30, "the aggregator's line")

        # A node's certificate cannot submit a run (RBAC), whoever signed it.
        denied = cli(c, "node0", "run submit", "--app", app, "--sign-key", str(alice[0]),
                     ok=False)
        assert len(denied.stderr.strip().splitlines()) == 1, denied.stderr
        assert "permission denied" in denied.stderr

        # Run 2: signed, by a key the nodes do not trust.
        second = json.loads(cli(c, "root", "run submit", "--app", app, "--run-config", SMALL,
                                "--sign-key", str(mallory), "--json").stdout)
        assert second["run"] == 2
        wait_state(c, 2, "stopped")
        stopped = replay(EventLog(store, c.keys.run(2)).read().events).stopped
        assert stopped is not None and "refused: signed by unknown key id" in stopped.reason

        # Run 3: signed by the trusted key: it trains, and every node saves its final model.
        third = json.loads(cli(c, "root", "run submit", "--app", app, "--run-config", SMALL,
                               "--sign-key", str(alice[0]), "--json").stdout)
        assert third["run"] == 3 and third["signed_by"] == signing.key_id(
            signing.load_private_key(alice[0]).public_key())
        done = wait_state(c, 3, "completed")
        assert done["rounds_committed"] == 2
        c.wait_for(lambda: all((n.data_dir / "runs" / "3" / "result.json").is_file()
                               for n in c.nodes), 60, "every node to save run 3's model")

        text = logs(c)
        assert "its app cannot be used (refused: signed by unknown key id" in text, c.tail_logs()
        assert signing.UNSIGNED_WARNING not in text  # every node has trusted keys
        for node in c.nodes:  # the refused runs' packages were never unpacked
            assert not (node.data_dir / "apps" / "1").exists()
            assert not (node.data_dir / "apps" / "2").exists()
            assert (node.data_dir / "apps" / "3" / "pyproject.toml").is_file()
        assert all(n.alive for n in c.nodes), c.tail_logs()
