"""The seed's three commands, verbatim, bring up a 3-member cluster and finish a run.

    raftfl node start -a self -r 3 -s HOST:P0 -n HOST:P1 HOST:P2
    raftfl node start -a HOST:P0 -s HOST:P1 -n HOST:P0 HOST:P2
    raftfl node start -a HOST:P0 -s HOST:P2 -n HOST:P0 HOST:P1

Only the data dirs, `--exit-on-complete` (so the nodes leave after the run, as the seed's
did) and, on the first node, a small synthetic dataset are added. The nodes
are real processes; the test only ever signals the PIDs it started, and checks that each
node's etcd member (a child of the node) is gone once its node is.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from raftfl.lab.localcluster import free_base_port

HOST = "localhost"
RAFTFL = [sys.executable, "-m", "raftfl"]
ETCDCTL = shutil.which("etcdctl") or "/usr/bin/etcdctl"
UP_TIMEOUT_S = 45.0
RUN_TIMEOUT_S = 120.0


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAFTFL_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def etcd_state(pid: int, data_dir: Path) -> str:
    """'gone', 'zombie', 'ours' (our member still running) or 'other' (a reused PID)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "gone"
    if stat.rsplit(")", 1)[1].split()[0] == "Z":
        return "zombie"
    return "ours" if str(data_dir).encode() in cmdline else "other"


def etcd_pid(data_dir: Path) -> int | None:
    try:
        return int((data_dir / "etcd.pid").read_text())
    except (OSError, ValueError):
        return None


class Nodes:
    """The node processes this test started, by PID; `close()` always stops and reaps them."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.procs: list[tuple[subprocess.Popen[bytes], Path, Path]] = []  # proc, data dir, log

    def start(self, i: int, args: list[str]) -> subprocess.Popen[bytes]:
        data_dir = self.workdir / f"node{i}"
        log_path = self.workdir / f"node{i}.log"
        with open(log_path, "ab") as log:
            proc = subprocess.Popen([*RAFTFL, *args, "--data-dir", str(data_dir), "--insecure"],
                                    cwd=self.workdir,
                                    env=_env(), stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append((proc, data_dir, log_path))
        return proc

    def logs(self, lines: int = 25) -> str:
        out = []
        for _, _, log_path in self.procs:
            try:
                text = log_path.read_text(errors="replace").splitlines()[-lines:]
            except OSError:
                text = []
            out.append(f"--- {log_path.name} ---\n" + "\n".join(text))
        return "\n".join(out)

    def lingering_members(self) -> list[tuple[Path, int]]:
        """Our etcd members still running although their node process has exited."""
        out = []
        for proc, data_dir, _ in self.procs:
            pid = etcd_pid(data_dir)
            if proc.poll() is not None and pid is not None and etcd_state(pid, data_dir) == "ours":
                out.append((data_dir, pid))
        return out

    def close(self) -> list[tuple[Path, int]]:
        """Stop our nodes (TERM, then KILL), reap them; returns members that outlived them."""
        for proc, _, _ in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc, _, _ in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        # PDEATHSIG should have taken each member along; allow the kernel a moment.
        deadline = time.monotonic() + 5
        while (lingering := self.lingering_members()) and time.monotonic() < deadline:
            time.sleep(0.1)
        for data_dir, pid in lingering:  # a child of our node, verified by its data dir
            if etcd_state(pid, data_dir) == "ours":
                os.kill(pid, signal.SIGKILL)
        return lingering


def _status(names: list[str], workdir: Path) -> dict[str, Any] | None:
    proc = subprocess.run([*RAFTFL, "status", "-n", *names, "--json"], cwd=workdir, env=_env(),
                          capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        return None
    return json.loads(proc.stdout)


def _etcdctl_prefix(endpoints: list[str], prefix: str) -> dict[str, Any]:
    """`etcdctl get --prefix`, plain output: each value must be one readable JSON line."""
    proc = subprocess.run([ETCDCTL, "--endpoints", ",".join(endpoints), "get", "--prefix", prefix],
                          env={**os.environ, "ETCDCTL_API": "3"}, capture_output=True, text=True,
                          timeout=30, check=True)
    lines = proc.stdout.splitlines()
    assert len(lines) % 2 == 0, proc.stdout
    return {key: json.loads(value) for key, value in zip(lines[0::2], lines[1::2], strict=True)}


def test_seed_commands_run_a_three_member_cluster(tmp_path: Path) -> None:
    base = free_base_port(3)
    p0, p1, p2 = base, base + 1, base + 2
    n0, n1, n2 = (f"{HOST}:{p}" for p in (p0, p1, p2))
    names = [n0, n1, n2]
    endpoints = [f"127.0.0.1:{p + 100}" for p in (p0, p1, p2)]
    nodes = Nodes(tmp_path)
    lingering: list[tuple[Path, int]] = []
    try:
        nodes.start(0, ["node", "start", "-a", "self", "-r", "3", "-s", n0, "-n", n1, n2,
                        "--dataset", "synthetic", "--train-size", "1500", "--test-size", "300",
                        "--exit-on-complete"])
        nodes.start(1, ["node", "start", "-a", n0, "-s", n1, "-n", n0, n2, "--exit-on-complete"])
        nodes.start(2, ["node", "start", "-a", n0, "-s", n2, "-n", n0, n1, "--exit-on-complete"])

        def up() -> dict[str, Any] | None:
            for proc, _, _ in nodes.procs:
                assert proc.poll() is None, f"a node exited early\n{nodes.logs()}"
            info = _status(names, tmp_path)
            if info is None or not info["aggregator"] or info["rounds"] is None:
                return None  # the role key lands just before run_started is logged
            if len(info["members"]) != 3 or not all(m["live"] for m in info["members"]):
                return None
            return info

        info = wait_for(up, UP_TIMEOUT_S, "3 live members and an aggregator")
        assert sorted(m["name"] for m in info["members"]) == sorted(names)
        assert sorted(m["client_endpoint"] for m in info["members"]) == sorted(endpoints)
        assert all(m["healthy"] for m in info["members"])
        assert info["aggregator"]["node"] == n0
        assert info["aggregator"]["flower_address"] == f"127.0.0.1:{p0 + 200}"
        assert info["rounds"] == 3

        # Readable JSON through etcdctl (a node whose run already ended has revoked its record).
        members = _etcdctl_prefix(endpoints, "/raftfl/default/members/")
        assert members and set(members) <= {f"/raftfl/default/members/{n}" for n in names}
        assert all(k.endswith(v["node"]) for k, v in members.items())

        def sampled() -> dict[str, Any] | None:
            samples = _etcdctl_prefix(endpoints, "/raftfl/default/latency/")
            writers = {k.split("/")[4] for k in samples}
            return samples if writers >= set(names) or all(p.poll() is not None
                                                          for p, _, _ in nodes.procs) else None

        samples = wait_for(sampled, 20, "latency samples from every node")
        assert samples and all(isinstance(v, dict) for v in samples.values())

        deadline = time.monotonic() + RUN_TIMEOUT_S
        for proc, _, _ in nodes.procs:
            try:
                code = proc.wait(max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pytest.fail(f"the run did not finish within {RUN_TIMEOUT_S:.0f}s\n{nodes.logs()}")
            assert code == 0, f"node exited {code}\n{nodes.logs()}"

        for _, _, log_path in nodes.procs:  # the quick start runs unsigned apps, and says so
            assert log_path.read_text(errors="replace").count("apps are not signed") == 1
        results = [json.loads((d / "result.json").read_text()) for _, d, _ in nodes.procs]
        assert [r["node"] for r in results] == names
        assert len({r["final_model_sha256"] for r in results}) == 1, results
        assert all(r["rounds"] == 3 and r["committed"] == [1, 2, 3] for r in results), results
        for _, data_dir, _ in nodes.procs:
            pid = etcd_pid(data_dir)
            assert pid is not None, f"{data_dir} has no etcd.pid"
            assert etcd_state(pid, data_dir) in ("gone", "zombie", "other")
    finally:
        lingering = nodes.close()
    assert not lingering, f"etcd members outlived their nodes: {lingering}"


def test_sigkilled_node_takes_its_etcd_member_along(tmp_path: Path) -> None:
    """PR_SET_PDEATHSIG: SIGKILL a node (no chance to clean up) and its member dies too."""
    port = free_base_port(1)
    nodes = Nodes(tmp_path)
    lingering: list[tuple[Path, int]] = []
    try:
        proc = nodes.start(0, ["node", "start", "-a", "self", "-r", "1", "-s", f"127.0.0.1:{port}",
                               "--dataset", "synthetic", "--train-size", "200", "--test-size", "100"])
        data_dir = tmp_path / "node0"
        pid = wait_for(lambda: (p := etcd_pid(data_dir)) and etcd_state(p, data_dir) == "ours" and p,
                       30, "the node's etcd member", interval=0.1)
        wait_for(lambda: "etcd healthy" in (tmp_path / "node0.log").read_text(errors="replace"),
                 30, "the member to serve", interval=0.2)
        assert proc.poll() is None, nodes.logs()
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(10) == -signal.SIGKILL
        wait_for(lambda: etcd_state(pid, data_dir) in ("gone", "zombie"), 5,
                 f"etcd member {pid} to die with its node", interval=0.05)
    finally:
        lingering = nodes.close()
    assert not lingering, f"etcd members outlived their nodes: {lingering}"
