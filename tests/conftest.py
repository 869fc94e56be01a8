"""Shared fixtures: real etcd members on 127.0.0.1, started and always stopped by PID.

`etcd_cluster` (per test) and `etcd_cluster_module` (per test module) start a 3-member etcd
cluster with `raftfl.etcd.member`, the same code a node uses. Teardown stops every member it
started through `EtcdMember.stop` (SIGTERM, then SIGKILL, always reaped) and removes the data
dirs, also when startup or the test failed. Nothing here ever signals a process by name.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from raftfl.core.errors import RaftflError
from raftfl.etcd.member import EtcdMember, MemberSpec, find_etcd, prepare_data_dir, wait_healthy
from raftfl.etcd.store import Store
from raftfl.lab.bench import serves
from raftfl.lab.localcluster import port_slice
from raftfl.net.ports import check_port_free

HOST = "127.0.0.1"
PORT_RANGE = (20000, 32000)
START_ATTEMPTS = 5
HEALTHY_DEADLINE_S = 20.0


def free_port_base(n: int, attempts: int = 100) -> int:
    """A random base port such that base .. base+n-1 are all free on 127.0.0.1 right now."""
    rng = random.Random()
    low, high = port_slice(*PORT_RANGE)
    for _ in range(attempts):
        base = rng.randrange(low, high - n)
        try:
            for port in range(base, base + n):
                check_port_free(HOST, port, "test")
        except RaftflError:
            continue
        return base
    raise RuntimeError(f"no {n} consecutive free ports found in {PORT_RANGE}")


def in_thread(fn: Callable[[], None], timeout: float = 10.0) -> None:
    """Run `fn` in a new thread (one with no etcd request origin named yet) and re-raise its
    error here."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)

    t = threading.Thread(target=run)
    t.start()
    t.join(timeout)
    assert not t.is_alive()
    if errors:
        raise errors[0]


def member_specs(base_dir: Path, cluster: str, n: int, base_port: int) -> list[MemberSpec]:
    """`n` members: peer ports base..base+n-1, client ports base+n..base+2n-1."""
    names = [f"m{i}" for i in range(n)]
    initial = {name: f"http://{HOST}:{base_port + i}" for i, name in enumerate(names)}
    return [
        MemberSpec(name=name, cluster=cluster, data_dir=base_dir / name, ip=HOST,
                   peer_port=base_port + i, client_port=base_port + n + i,
                   initial_cluster=initial)
        for i, name in enumerate(names)
    ]


class RpcFailure(grpc.RpcError):
    """A gRPC error as etcd's client raises it: a status code and etcd's details."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


def stop_members(members: list[EtcdMember]) -> None:
    """Stop (by PID, via EtcdMember.stop) every member; keep going if one stop fails."""
    errors: list[BaseException] = []
    for member in members:
        try:
            member.stop()
        except BaseException as exc:  # noqa: BLE001 - stop the others first, then report
            errors.append(exc)
    if errors:
        raise errors[0]


@dataclass
class EtcdCluster:
    name: str
    members: list[EtcdMember]
    base_dir: Path
    _stores: list[Store] = field(default_factory=list)

    @property
    def endpoints(self) -> list[str]:
        return [m.spec.client_endpoint for m in self.members]

    @property
    def pids(self) -> list[int]:
        return [m.proc.pid for m in self.members if m.proc is not None]

    def kill(self, i: int) -> int:
        """SIGKILL member `i` by its own PID and reap it; returns the PID."""
        proc = self.members[i].proc
        assert proc is not None
        proc.kill()
        proc.wait()
        return proc.pid

    def store(self, endpoints: list[str] | None = None, **kwargs) -> Store:
        """A new Store (over all members unless `endpoints` is given), closed at teardown."""
        store = Store(list(endpoints) if endpoints else self.endpoints, **kwargs)
        self._stores.append(store)
        return store

    def store_for(self, i: int, **kwargs) -> Store:
        """A Store bound only to member `i`."""
        return self.store([self.endpoints[i]], **kwargs)

    def rotated_endpoints(self, i: int) -> list[str]:
        """All endpoints, member `i` first (how a node orders them: its own member first)."""
        eps = self.endpoints
        return eps[i:] + eps[:i]

    def close_stores(self) -> None:
        for store in self._stores:
            with contextlib.suppress(Exception):
                store.close()
        self._stores.clear()


@contextlib.contextmanager
def running_cluster(base_dir: Path, n: int = 3) -> Iterator[EtcdCluster]:
    """Start an `n`-member cluster under `base_dir`; always stop it and remove its data."""
    binary = find_etcd()
    name = f"t{uuid.uuid4().hex[:10]}"
    last_error: Exception | None = None
    for attempt in range(START_ATTEMPTS):
        attempt_dir = base_dir / f"{name}-{attempt}"  # fresh dirs: never reuse a failed start
        members: list[EtcdMember] = []
        cluster: EtcdCluster | None = None
        try:
            try:
                specs = member_specs(attempt_dir, name, n, free_port_base(2 * n))
                for spec in specs:
                    prepare_data_dir(spec)
                for spec in specs:
                    member = EtcdMember(spec, binary)
                    members.append(member)
                    member.start()
                for member in members:
                    wait_healthy(member, lambda ep=member.spec.client_endpoint: serves(ep),
                                 HEALTHY_DEADLINE_S)
            except RaftflError as exc:  # most likely a port clash: retry on other ports
                last_error = exc
                continue
            cluster = EtcdCluster(name, members, attempt_dir)
            yield cluster
            return
        finally:
            if cluster is not None:
                cluster.close_stores()
            try:
                stop_members(members)
            finally:
                shutil.rmtree(attempt_dir, ignore_errors=True)
    raise RuntimeError(f"could not start a {n}-member etcd cluster: {last_error}")


@pytest.fixture
def etcd_cluster(tmp_path: Path) -> Iterator[EtcdCluster]:
    with running_cluster(tmp_path / "etcd") as cluster:
        yield cluster


@pytest.fixture(scope="module")
def etcd_cluster_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    with running_cluster(tmp_path_factory.mktemp("etcd")) as cluster:
        yield cluster


# The longest test files (`--durations` in CI), longest first. scripts/test.sh hands whole
# files to the xdist workers in collection order (`--dist loadfile --no-loadscope-reorder`;
# xdist's default order, most tests first, left the 8-node test to start last, alone).
LONGEST_FIRST = ("test_voter_replacement.py", "test_membership.py", "test_signed_apps.py",
                 "test_handover.py", "test_fault_matrix.py", "test_conformance.py",
                 "test_quickstart_app.py", "test_ops_api.py", "test_attacks.py",
                 "test_failover.py", "test_quorum.py", "test_hostile_updates.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark each test with its tier (the folder it lives in): `pytest -m unit` runs alone.
    Then put the longest files first (a stable sort: the rest keep their order)."""
    for item in items:
        tier = Path(str(item.fspath)).parent.name
        if tier in ("unit", "etcd", "e2e"):
            item.add_marker(getattr(pytest.mark, tier))
    first = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: first.get(Path(str(item.fspath)).name, len(first)))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """The fault matrix's rows (tests/e2e/test_fault_matrix.py), with their recovery times, as
    `raftfl faults` prints them: the reports carry them from xdist's workers."""
    rows = [value for key in ("passed", "failed") for report in terminalreporter.stats.get(key, [])
            if getattr(report, "when", "") == "call"
            for name, value in report.user_properties if name == "fault_matrix"]
    if rows:
        terminalreporter.write_sep("=", "fault matrix (scenario, fault, outcome, invariants, "
                                        "recovery s, wall s)")
        for row in rows:
            terminalreporter.write_line(str(row))
