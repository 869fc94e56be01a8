"""The seed's three commands with no security flag run over mutual TLS (issue 18, item 2).

    raftfl node start -a self -r 3 -s localhost:P0 -n localhost:P1 localhost:P2
    raftfl node start -a localhost:P0 -s localhost:P1 -n localhost:P0 localhost:P2
    raftfl node start -a localhost:P0 -s localhost:P2 -n localhost:P0 localhost:P1

started at once in a fresh working directory (only a small synthetic dataset is added, on the
first node; the data dirs are the default ones, where each node saves run 1's result). The
first node makes the cluster's CA in `.raftfl/default/ca` (0700, keys 0600), each node its
bundle there, and the run trains to completion over mutual TLS. `raftfl status` with no flag, from the same
directory, works (it issues itself a `root` bundle there); etcd's client port refuses a client
without a certificate, and serves one with the CA's.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from raftfl.cli.quickstart import CA_DIR
from raftfl.lab.localcluster import free_base_port

pytestmark = pytest.mark.slow
HOST = "localhost"
RAFTFL = [sys.executable, "-m", "raftfl"]
ETCDCTL = shutil.which("etcdctl") or "/usr/bin/etcdctl"
UP_TIMEOUT_S = 60.0
RUN_TIMEOUT_S = 150.0
SAID = "quick start: mutual TLS under the cluster's own CA"


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAFTFL_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _raftfl(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*RAFTFL, *args], cwd=cwd, env=_env(), capture_output=True,
                          text=True, timeout=60)


def _etcdctl(endpoint: str, ca: Path, bundle: Path | None) -> subprocess.CompletedProcess[str]:
    """`etcdctl get` over TLS trusting the cluster's CA, with `bundle`'s certificate or none."""
    cert = ["--cert", str(bundle / "tls.crt"), "--key", str(bundle / "tls.key")] if bundle else []
    return subprocess.run([ETCDCTL, f"--endpoints=https://{endpoint}", "--cacert", str(ca),
                           *cert, "--dial-timeout=10s", "--command-timeout=15s", "get",
                           "--prefix", "--keys-only", "/raftfl/default/members/"],
                          env={**os.environ, "ETCDCTL_API": "3"}, capture_output=True,
                          text=True, timeout=30)


def _modes(root: Path) -> dict[str, int]:
    """Permission bits of the CA folder and every key file under it, by relative path."""
    out = {".": stat.S_IMODE(root.stat().st_mode)}
    for path in root.rglob("*.key"):
        out[str(path.relative_to(root))] = stat.S_IMODE(path.stat().st_mode)
    return out


def test_the_seed_commands_with_no_flags_train_over_mutual_tls(tmp_path: Path) -> None:
    base = free_base_port(3)
    names = [f"{HOST}:{base + i}" for i in range(3)]
    n0, n1, n2 = names
    endpoint = f"127.0.0.1:{base + 100}"
    commands = [
        ["node", "start", "-a", "self", "-r", "3", "-s", n0, "-n", n1, n2,
         "--dataset", "synthetic", "--train-size", "1500", "--test-size", "300"],
        ["node", "start", "-a", n0, "-s", n1, "-n", n0, n2],
        ["node", "start", "-a", n0, "-s", n2, "-n", n0, n1],
    ]
    procs: list[tuple[subprocess.Popen[bytes], Path]] = []
    data = [tmp_path / ".raftfl" / "default" / n.replace(":", "_") for n in names]  # defaults

    def logs() -> str:
        return "\n".join(f"--- {log.name} ---\n{log.read_text(errors='replace')[-3000:]}"
                         for _, log in procs)

    try:
        for i, args in enumerate(commands):  # three terminals at once
            log = tmp_path / f"node{i}.log"
            with open(log, "ab") as out:
                procs.append((subprocess.Popen([*RAFTFL, *args],
                                               cwd=tmp_path, env=_env(),
                                               stdin=subprocess.DEVNULL, stdout=out,
                                               stderr=subprocess.STDOUT,
                                               start_new_session=True), log))
        ca = tmp_path / ".raftfl" / "default" / CA_DIR
        deadline = time.monotonic() + UP_TIMEOUT_S
        info: dict[str, Any] | None = None
        while info is None:
            assert time.monotonic() < deadline, f"no aggregator and 3 members\n{logs()}"
            assert all(p.poll() is None for p, _ in procs), f"a node exited early\n{logs()}"
            status = _raftfl(tmp_path, "status", "-n", *names, "--json")
            if status.returncode == 0:
                got = json.loads(status.stdout)
                if got["aggregator"] and len(got["members"]) == 3:
                    info = got
            time.sleep(0.5)
        assert info["aggregator"]["node"] == n0
        assert sorted(m["name"] for m in info["members"]) == sorted(names)

        refused = _etcdctl(endpoint, ca / "ca.crt", None)  # the CA trusted, no certificate
        assert refused.returncode != 0, refused.stdout
        served = _etcdctl(endpoint, ca / "ca.crt", ca / "root")  # the status command's bundle
        assert served.returncode == 0 and "/raftfl/default/members/" in served.stdout, \
            served.stderr

        results = [d / "runs" / "1" / "result.json" for d in data]  # each node saves run 1's
        deadline += RUN_TIMEOUT_S
        while not all(r.is_file() for r in results):
            assert time.monotonic() < deadline, f"run 1 did not complete\n{logs()}"
            assert all(p.poll() is None for p, _ in procs), f"a node exited\n{logs()}"
            time.sleep(0.5)
    finally:
        for proc, _ in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc, _ in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    for _, log in procs:
        assert log.read_text(errors="replace").count(SAID) == 1, logs()
    finals = [json.loads(r.read_text()) for r in results]
    assert len({r["final_model_sha256"] for r in finals}) == 1, finals
    assert all(r["committed"] == [1, 2, 3] for r in finals), finals
    modes = _modes(ca)
    assert modes.pop(".") == 0o700
    assert {"ca.key", "peer-ca.key", "root/tls.key"} <= set(modes), modes
    assert {f"{n.replace(':', '_')}/{k}" for n in names for k in ("tls.key", "peer.key")} \
        <= set(modes), modes
    assert set(modes.values()) == {0o600}, modes
