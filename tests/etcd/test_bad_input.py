"""Bad input never produces a traceback or a hang: one line on stderr and a meaningful exit.

Usage errors exit 2, runtime problems exit 1, every message starts with `raftfl: error:`.
Every command runs as a real subprocess (`python -m raftfl`, or the installed `raftfl`
script) with a timeout, in a scratch working directory so nothing lands in the repository.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import free_port_base

from raftfl.core.events import NodeJoined, RunStarted, StepDown
from raftfl.core.keys import Keys
from raftfl.core.specs import RunSpec
from raftfl.etcd import run_store
from raftfl.etcd.eventlog import EventLog
from raftfl.lab.localcluster import free_base_port

TIMEOUT_S = 60
RAFTFL_SCRIPT = Path(sys.executable).parent / "raftfl"
ETCDCTL = shutil.which("etcdctl") or "/usr/bin/etcdctl"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAFTFL_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def run_cli(args: list[str], cwd: Path, env: dict[str, str] | None = None,
            script: bool = False, timeout: float = TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    """Run raftfl; a hang fails the test (TimeoutExpired) instead of blocking the suite."""
    cmd = [str(RAFTFL_SCRIPT)] if script else [sys.executable, "-m", "raftfl"]
    return subprocess.run([*cmd, *args], cwd=cwd, env=env or _env(), stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=timeout)


def assert_one_line_error(proc: subprocess.CompletedProcess[str], code: int, *needles: str) -> str:
    """Exit `code`, exactly one stderr line `raftfl: error: ...` containing every needle."""
    where = f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "Traceback" not in proc.stderr + proc.stdout, where
    assert proc.returncode == code, where
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, where
    line = lines[0]
    assert line.startswith("raftfl: error: "), where
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"
    return line


def _free_port_pair() -> int:
    """A raft port P with P, P+100 and P+200 free (the node's three ports)."""
    return free_base_port(1)


def _blocker() -> socket.socket:
    """A socket to hold a port: SO_REUSEADDR, so a port an earlier test left in TIME_WAIT
    can still be taken (a listener still blocks the node's own bind)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    return sock


def _tree_digest(root: Path) -> dict[str, tuple[str, float]]:
    """Relative path -> (sha256, mtime) of every file under `root`."""
    return {str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime)
            for p in sorted(root.rglob("*")) if p.is_file()}


def _port_bindable(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


# -- usage errors: exit 2, one line -------------------------------------------------------------

USAGE_CASES = {
    "unknown-option": (["node", "start", "--no-such-option"], ["--no-such-option"]),
    "unknown-top-option": (["--frobnicate"], ["--frobnicate"]),
    "unknown-command": (["frobnicate"], ["frobnicate"]),
    "rounds-zero": (["node", "start", "-a", "self", "-r", "0", "-s", "127.0.0.1:5000"],
                    ["--rounds", "0"]),
    "bad-address": (["node", "start", "-a", "self", "-r", "1", "-s", "nonsense"],
                    ["nonsense", "host:port"]),
    "bad-port": (["node", "start", "-a", "self", "-r", "1", "-s", "127.0.0.1:99999"],
                 ["127.0.0.1:99999"]),
    "bad-peer": (["node", "start", "-a", "self", "-r", "1", "-s", "127.0.0.1:5000",
                  "-n", "127.0.0.1:x"], ["127.0.0.1:x"]),
    "bad-dataset": (["node", "start", "-a", "self", "-r", "1", "-s", "127.0.0.1:5000",
                     "--dataset", "foo"], ["--dataset", "foo"]),
    "missing-self": (["node", "start", "-a", "self", "-r", "1"], ["--self"]),
    "status-without-nodes": (["status"], ["--endpoints"]),
    "history-without-nodes": (["history"], ["--endpoints"]),
}


@pytest.mark.parametrize("case", list(USAGE_CASES))
def test_usage_error_is_one_line_exit_2(case: str, tmp_path: Path) -> None:
    args, needles = USAGE_CASES[case]
    proc = run_cli(args, tmp_path)
    assert_one_line_error(proc, 2, *needles)
    assert proc.stdout == ""
    assert list(tmp_path.iterdir()) == [], "a usage error must not create anything"


def test_installed_script_reports_like_module(tmp_path: Path) -> None:
    if not RAFTFL_SCRIPT.exists():
        pytest.skip(f"{RAFTFL_SCRIPT} not installed")
    proc = run_cli(["node", "start", "-a", "self", "-r", "0", "-s", "127.0.0.1:5000"], tmp_path,
                   script=True)
    assert_one_line_error(proc, 2, "--rounds")


# -- runtime errors at startup: exit 1, one line, nothing left running --------------------------


def test_unresolvable_host(tmp_path: Path) -> None:
    proc = run_cli(["node", "start", "-a", "self", "-r", "1", "-s", "no-such-host.invalid:5000",
                    "--data-dir", str(tmp_path / "d")], tmp_path)
    assert proc.returncode != 0
    assert_one_line_error(proc, proc.returncode, "no-such-host.invalid", "resolve")
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("offset,what", [(100, "etcd client"), (0, "etcd peer"), (200, "Flower")])
def test_port_in_use(offset: int, what: str, tmp_path: Path) -> None:
    port = _free_port_pair()
    data = tmp_path / "d"
    with _blocker() as blocker:
        blocker.bind(("127.0.0.1", port + offset))
        blocker.listen()
        proc = run_cli(["node", "start", "-a", "self", "-r", "1", "-s", f"127.0.0.1:{port}",
                        "--data-dir", str(data)], tmp_path)
        assert_one_line_error(proc, 1, "already in use", f"127.0.0.1:{port + offset}", what)
    # Nothing was started: no etcd member, and the node's other ports are still free.
    assert not (data / "etcd.pid").exists()
    assert not (data / "member-data").exists()
    for extra in (0, 100, 200):
        assert _port_bindable(port + extra), f"port {port + extra} still taken after the failure"


def test_ctrl_c_while_waiting_for_a_quorum(tmp_path: Path) -> None:
    """The first of three nodes waits for its peers; a Ctrl-C ends the wait at once, in one
    line, and takes the node's etcd member with it."""
    port = _free_port_pair()
    data = tmp_path / "d"
    proc = subprocess.Popen(
        [sys.executable, "-m", "raftfl", "node", "start", "-a", "self", "-r", "1",
         "-s", f"127.0.0.1:{port}", "-n", f"127.0.0.1:{port + 1}", f"127.0.0.1:{port + 2}",
         "--data-dir", str(data)], cwd=tmp_path, env=_env(), stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while not (data / "etcd.pid").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        etcd_pid = int((data / "etcd.pid").read_text().split()[0])
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    where = f"exit {proc.returncode}\nstdout:\n{out}\nstderr:\n{err}"
    assert proc.returncode == 1 and "Traceback" not in err, where
    assert err.strip().splitlines() == [
        f"raftfl: error: stopped while etcd member 127.0.0.1:{port} waited for a quorum"], where
    assert not Path(f"/proc/{etcd_pid}").exists() or "zombie" in Path(
        f"/proc/{etcd_pid}/status").read_text(), "the etcd member outlived its node"


def test_missing_etcd_binary_flag(tmp_path: Path) -> None:
    port = _free_port_pair()
    proc = run_cli(["node", "start", "-a", "self", "-r", "1", "-s", f"127.0.0.1:{port}",
                    "--data-dir", str(tmp_path / "d"), "--etcd-bin", "/nonexistent/etcd"], tmp_path)
    assert_one_line_error(proc, 1, "/nonexistent/etcd")
    assert not (tmp_path / "d" / "etcd.pid").exists()


def test_missing_etcd_binary_env(tmp_path: Path) -> None:
    port = _free_port_pair()
    proc = run_cli(["node", "start", "-a", "self", "-r", "1", "-s", f"127.0.0.1:{port}",
                    "--data-dir", str(tmp_path / "d")], tmp_path,
                   env=_env(RAFTFL_ETCD_BIN="/nonexistent"))
    assert_one_line_error(proc, 1, "/nonexistent")
    assert not (tmp_path / "d" / "etcd.pid").exists()


def _fake_etcd(tmp_path: Path, output: str) -> Path:
    fake = tmp_path / "fake-etcd"
    fake.write_text(f"#!/bin/sh\nprintf '%s\\n' '{output}'\nexit 0\n")
    fake.chmod(0o755)
    return fake


def test_unsafe_etcd_version_refused(tmp_path: Path) -> None:
    fake = _fake_etcd(tmp_path, "etcd Version: 3.5.2")
    port = _free_port_pair()
    base = ["node", "start", "-a", "self", "-r", "1", "-s", f"127.0.0.1:{port}",
            "--data-dir", str(tmp_path / "d")]
    proc = run_cli([*base, "--etcd-bin", str(fake)], tmp_path)
    assert_one_line_error(proc, 1, "3.5.2", "3.5.0-3.5.5", "--allow-unsafe-etcd")
    # Same through the environment variable.
    proc = run_cli(base, tmp_path, env=_env(RAFTFL_ETCD_BIN=str(fake)))
    assert_one_line_error(proc, 1, "3.5.0-3.5.5", "--allow-unsafe-etcd")
    assert not (tmp_path / "d" / "etcd.pid").exists()


def test_not_etcd_refused(tmp_path: Path) -> None:
    fake = _fake_etcd(tmp_path, "hello, I am not etcd")
    port = _free_port_pair()
    proc = run_cli(["node", "start", "-a", "self", "-r", "1", "-s", f"127.0.0.1:{port}",
                    "--data-dir", str(tmp_path / "d"), "--etcd-bin", str(fake)], tmp_path)
    assert_one_line_error(proc, 1, "does not look like etcd")


def _fake_member_data(data: Path, marker: dict[str, str] | None) -> None:
    (data / "member-data" / "member" / "snap").mkdir(parents=True)
    (data / "member-data" / "member" / "snap" / "db").write_bytes(b"precious etcd data \x00\x01")
    if marker is not None:
        (data / "raftfl-member.json").write_text(json.dumps(marker))


@pytest.mark.parametrize("marker,needles", [
    ({"cluster": "a", "name": "NAME"}, ["cluster 'a'", "'b'", "--data-dir"]),
    ({"cluster": "b", "name": "127.0.0.1:1"}, ["'127.0.0.1:1'", "--data-dir"]),
    (None, ["unknown origin", "--data-dir"]),
], ids=["other-cluster", "other-node", "no-marker"])
def test_foreign_data_dir_refused_and_untouched(marker: dict[str, str] | None, needles: list[str],
                                                tmp_path: Path) -> None:
    port = _free_port_pair()
    name = f"127.0.0.1:{port}"
    data = tmp_path / "d"
    if marker is not None:
        marker = {k: (name if v == "NAME" else v) for k, v in marker.items()}
    _fake_member_data(data, marker)
    before = _tree_digest(data)
    proc = run_cli(["node", "start", "-a", "self", "-r", "1", "-s", name, "--cluster", "b",
                    "--data-dir", str(data)], tmp_path)
    assert_one_line_error(proc, 1, str(data), *needles)
    assert _tree_digest(data) == before, "a refused data dir must be left exactly as it was"


def test_bare_marker_of_another_cluster_refused(tmp_path: Path) -> None:
    """Just the marker (what a first run of cluster `a` writes) keeps cluster `b` out."""
    port = _free_port_pair()
    name = f"127.0.0.1:{port}"
    data = tmp_path / "d"
    (data / "raftfl-member.json").parent.mkdir(parents=True)
    (data / "raftfl-member.json").write_text(json.dumps({"cluster": "a", "name": name}))
    before = _tree_digest(data)
    proc = run_cli(["node", "start", "-a", "self", "-r", "1", "-s", name, "--cluster", "b",
                    "--data-dir", str(data)], tmp_path)
    assert_one_line_error(proc, 1, "cluster 'a'")
    assert _tree_digest(data) == before
    assert json.loads((data / "raftfl-member.json").read_text()) == {"cluster": "a", "name": name}


# -- a real cluster with junk under the event prefix --------------------------------------------


def _etcdctl(endpoints: list[str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([ETCDCTL, "--endpoints", ",".join(endpoints), *args],
                          env={**os.environ, "ETCDCTL_API": "3"}, capture_output=True, text=True,
                          timeout=30, check=True)


def _etcdctl_get(endpoints: list[str], key: str) -> str:
    out = _etcdctl(endpoints, "get", key, "--print-value-only").stdout
    return out[:-1] if out.endswith("\n") else out


def test_history_and_status_survive_junk_events(etcd_cluster, tmp_path: Path) -> None:
    eps = etcd_cluster.endpoints
    cluster = "junk"
    keys = Keys(cluster).run(1)
    log = EventLog(etcd_cluster.store(), keys)
    spec = RunSpec(app="junk", app_sha256=hashlib.sha256(b"pkg").hexdigest(), run_config={})
    assert run_store.submit(etcd_cluster.store(), keys, spec, b"pkg") == 1  # history reads run 1
    wrong_version = json.dumps({"v": 99, "type": "run_started", "node": "x", "term": 0,
                                "ts": 1.0, "id": "f" * 32, "rounds": 3, "initial_model": "0" * 64})
    junk: dict[str, str] = {}

    def put_junk(key: str, value: str) -> None:
        _etcdctl(eps, "put", key, value)
        junk[key] = value

    valid = [RunStarted(node="n1", rounds=3, initial_model="a" * 64), NodeJoined(node="n2"),
             StepDown(node="n1", term=7, reason="testing"), NodeJoined(node="n3")]
    seqs = [log.append(valid[0])]
    put_junk(keys.event(seqs[-1] + 1), "not json")
    seqs.append(log.append(valid[1]))
    put_junk(keys.event(seqs[-1] + 1), '{"hello": 1}')
    seqs.append(log.append(valid[2]))
    put_junk(keys.event(seqs[-1] + 1), wrong_version)
    put_junk(keys.events + "not-a-seq", '{"hello": 1}')  # a foreign key sorts after the seqs
    seqs.append(log.append(valid[3]))  # must find the next seq despite the foreign key
    assert seqs == [1, 3, 5, 7]
    stored_before = {k: _etcdctl_get(eps, k) for k in junk}
    assert stored_before == junk

    ep_arg = ["--endpoints", ",".join(eps), "--cluster", cluster]
    proc = run_cli(["history", *ep_arg], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [json.loads(ln) for ln in proc.stdout.splitlines()]
    events = [ln for ln in lines if "skipped" not in ln]
    skipped = [ln for ln in lines if "skipped" in ln]
    assert [(e["seq"], e["type"], e["node"]) for e in events] == [
        (s, ev.type, ev.node) for s, ev in zip(seqs, valid, strict=True)]
    for e, ev in zip(events, valid, strict=True):
        assert e["ts"] == pytest.approx(ev.ts) and e["id"] == ev.id
    assert len(skipped) == len(junk)
    reasons = {s["skipped"]: s["reason"] for s in skipped}
    assert reasons.keys() == junk.keys()
    assert "not JSON" in reasons[keys.event(2)]
    assert "schema version" in reasons[keys.event(4)]
    assert "99" in reasons[keys.event(6)]
    assert "sequence number" in reasons[keys.events + "not-a-seq"]

    proc = run_cli(["history", "--summary", *ep_arg], tmp_path)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["rounds"] == 3
    assert summary["skipped"] == len(junk)
    assert summary["completed"] is False and summary["committed_rounds"] == []

    proc = run_cli(["status", *ep_arg, "--json"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert len(info["members"]) == 3
    assert sorted(m["client_endpoint"] for m in info["members"]) == sorted(eps)
    assert all(m["healthy"] for m in info["members"])
    assert sum(m["leader"] for m in info["members"]) == 1
    assert info["rounds"] == 3 and info["aggregator"] is None

    proc = run_cli(["status", *ep_arg], tmp_path)  # the human-readable table too
    assert proc.returncode == 0, proc.stderr
    assert all(ep in proc.stdout for ep in eps)

    # A hand-written, malformed role key is shown as such, not a crash.
    put_junk(keys.aggregator, "garbage")
    proc = run_cli(["status", *ep_arg, "--json"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["aggregator"]["malformed"] == "garbage"
    proc = run_cli(["status", *ep_arg], tmp_path)
    assert proc.returncode == 0 and "malformed" in proc.stdout, proc.stderr

    # Reading never repaired, deleted or rewrote anything.
    assert {k: _etcdctl_get(eps, k) for k in junk} == junk
    keys_now = _etcdctl(eps, "get", "--prefix", keys.events, "--keys-only").stdout.split()
    assert len(keys_now) == len(junk) + len(valid) - 1  # the role key is not under events/


# -- nothing listening --------------------------------------------------------------------------


@pytest.mark.parametrize("command", [["status", "--json"], ["history"]])
def test_commands_against_dead_endpoints(command: list[str], tmp_path: Path) -> None:
    base = free_port_base(2)
    eps = f"127.0.0.1:{base},127.0.0.1:{base + 1}"
    start = time.monotonic()
    proc = run_cli([*command, "--endpoints", eps], tmp_path, timeout=30)
    took = time.monotonic() - start
    assert_one_line_error(proc, 1, "unreachable", f"127.0.0.1:{base}")
    assert proc.stdout == ""
    assert took < 30


# -- edge cases found while writing these tests ---------------------------------------------



@pytest.mark.parametrize("args", [
    ["status", "--endpoints", "nonsense"],
    ["history", "--endpoints", "127.0.0.1:abc"],
    ["node", "leave", "-s", "127.0.0.1:5000", "--endpoints", "bad"],
    ["node", "start", "-a", "self", "-r", "1", "-s", "127.0.0.1:5000", "--etcd-endpoints", ":"],
], ids=["status", "history", "leave", "etcd-endpoints"])
def test_malformed_endpoints_are_usage_errors(args: list[str], tmp_path: Path) -> None:
    proc = run_cli(args, tmp_path, timeout=30)
    assert_one_line_error(proc, 2, "endpoint")


@pytest.mark.parametrize("sub", ["", "sub"], ids=["is-a-file", "under-a-file"])
def test_data_dir_that_is_a_file(sub: str, tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("not a directory")
    data = afile / sub if sub else afile
    port = _free_port_pair()
    proc = run_cli(["node", "start", "-a", "self", "-r", "1", "-s", f"127.0.0.1:{port}",
                    "--data-dir", str(data)], tmp_path)
    assert_one_line_error(proc, 1, str(data))
    assert afile.read_text() == "not a directory"


def test_port_in_use_claims_no_data_dir(tmp_path: Path) -> None:
    port = _free_port_pair()
    data = tmp_path / "d"
    with _blocker() as blocker:
        blocker.bind(("127.0.0.1", port + 100))
        blocker.listen()
        proc = run_cli(["node", "start", "-a", "self", "-r", "1", "-s", f"127.0.0.1:{port}",
                        "--cluster", "a", "--data-dir", str(data)], tmp_path)
    assert_one_line_error(proc, 1, "already in use")
    assert not (data / "raftfl-member.json").exists(), "the failed start stamped the dir for cluster a"


@pytest.mark.parametrize("option,offset", [("--flower-port", 100), ("--client-port", 0)],
                         ids=["flower-on-client-port", "client-on-peer-port"])
def test_colliding_own_ports_refused_up_front(option: str, offset: int, tmp_path: Path) -> None:
    port = _free_port_pair()
    data = tmp_path / "d"
    proc = run_cli(["node", "start", "-a", "self", "-r", "1", "-s", f"127.0.0.1:{port}",
                    option, str(port + offset), "--data-dir", str(data), "--start-timeout", "20",
                    "--dataset", "synthetic", "--train-size", "100", "--test-size", "100"], tmp_path)
    assert proc.returncode in (1, 2), proc.stderr
    assert_one_line_error(proc, proc.returncode, str(port + offset))
    assert not (data / "etcd.pid").exists(), "etcd was started although the ports collide"


def test_busy_flower_port_with_external_etcd(etcd_cluster, tmp_path: Path) -> None:
    """With --etcd-endpoints no port is checked up front; Flower finds its port taken later."""
    port = _free_port_pair()
    with _blocker() as blocker:
        blocker.bind(("127.0.0.1", port + 200))
        blocker.listen()
        proc = run_cli(["node", "start", "-a", "self", "-r", "1", "-s", f"127.0.0.1:{port}",
                        "--etcd-endpoints", ",".join(etcd_cluster.endpoints), "--cluster", "busy",
                        "--data-dir", str(tmp_path / "d"), "--start-timeout", "20",
                        "--dataset", "synthetic", "--train-size", "100", "--test-size", "100"],
                       tmp_path)
    assert_one_line_error(proc, 1, f"127.0.0.1:{port + 200}")
