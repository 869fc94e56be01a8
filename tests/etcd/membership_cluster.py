"""A running etcd cluster named like raftfl nodes, and `raftfl node join/leave` subprocesses.

Member names are node addresses (127.0.0.1:PORT, etcd client port PORT+100), as a node's
embedded member is named, so the CLI can join and leave them. Everything started here is
stopped by PID at exit, also when a test fails.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from raftfl.core.keys import Keys
from raftfl.core.specs import ClusterConfig
from raftfl.etcd.cluster_api import Member, list_members
from raftfl.etcd.clusterconfig import ensure
from raftfl.etcd.member import EtcdMember, MemberSpec, find_etcd, running_members
from raftfl.etcd.store import Store
from raftfl.lab.bench import serves
from raftfl.lab.localcluster import free_base_port

HOST = "127.0.0.1"
RAFTFL = [sys.executable, "-m", "raftfl"]
SLOTS = 6  # ports for 3 members and up to 3 joiners


def env() -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith("RAFTFL_")}
    out["PYTHONUNBUFFERED"] = "1"
    return out


@dataclass
class Lab:
    base: int
    dir: Path
    cluster: str
    members: list[EtcdMember]
    procs: list[subprocess.Popen[str]] = field(default_factory=list)

    def addr(self, i: int) -> str:
        return f"{HOST}:{self.base + i}"

    @property
    def endpoints(self) -> list[str]:
        return [m.spec.client_endpoint for m in self.members]

    def store(self) -> Store:
        return Store(self.endpoints, retry_for=10)

    def members_now(self) -> list[Member]:
        store = self.store()
        try:
            return list_members(store)
        finally:
            store.close()

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*RAFTFL, *args], capture_output=True, text=True, timeout=timeout,
                              env=env(), cwd=self.dir)

    def join(self, i: int, *extra: str) -> subprocess.Popen[str]:
        """`raftfl node join` of slot `i` in the background (its output in a file)."""
        log = open(self.dir / f"join-{i}-{len(self.procs)}.log", "w")  # noqa: SIM115
        proc = subprocess.Popen(
            [*RAFTFL, "node", "join", "-s", self.addr(i), "-n", self.addr(0), self.addr(1),
             "--cluster", self.cluster, "--data-dir", str(self.dir / f"node{i}"), *extra,
             *([] if "--certs" in extra else ["--insecure"])],
            stdout=log, stderr=subprocess.STDOUT, text=True, env=env(), cwd=self.dir,
            start_new_session=True)
        log.close()
        proc.log_path = log.name  # type: ignore[attr-defined]
        self.procs.append(proc)
        return proc

    def leave(self, i: int, *extra: str) -> subprocess.CompletedProcess[str]:
        return self.cli("node", "leave", "-s", self.addr(i), "-n", self.addr(0), self.addr(1),
                        self.addr(2), "--cluster", self.cluster, *extra)


def output(proc: subprocess.Popen[str]) -> str:
    return Path(proc.log_path).read_text()  # type: ignore[attr-defined]


def wait_output(proc: subprocess.Popen[str], text: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = output(proc)
        if text in out:
            return out
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    raise AssertionError(f"{text!r} not in the joiner's output:\n{output(proc)}")


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)  # its own session: the node and its etcd
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@contextlib.contextmanager
def lab(tmp_path: Path, n: int = 3) -> Iterator[Lab]:
    """`n` voters named 127.0.0.1:PORT, with a cluster config so joiners start idle."""
    binary = find_etcd()
    base = free_base_port(SLOTS)
    cluster = f"t{uuid.uuid4().hex[:8]}"
    initial = {f"{HOST}:{base + i}": f"http://{HOST}:{base + i}" for i in range(n)}
    specs = [MemberSpec(name=name, cluster=cluster, data_dir=tmp_path / f"node{i}", ip=HOST,
                        peer_port=base + i, client_port=base + i + 100, initial_cluster=initial)
             for i, name in enumerate(initial)]
    try:
        with running_members(specs, binary, serves) as members:
            the_lab = Lab(base, tmp_path, cluster, members)
            try:
                store = the_lab.store()
                try:
                    ensure(store, Keys(cluster), ClusterConfig(rounds=1, nodes=sorted(initial)))
                finally:
                    store.close()
                yield the_lab
            finally:
                for proc in the_lab.procs:
                    _stop(proc)
    finally:
        for i in range(SLOTS):
            shutil.rmtree(tmp_path / f"node{i}", ignore_errors=True)
