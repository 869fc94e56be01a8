"""A local N-node cluster of real `raftfl node` processes on loopback.

Used by `raftfl demo`, the fault harness, the benchmarks and the end-to-end tests. Its nodes
train one run (run 1, submitted by node 0's `-r`) and leave (`--exit-on-complete`); set
`exit_on_complete=False` for a federation that stays up for `raftfl run submit`. It only
ever signals the PIDs it started, and `close()` always reaps them and removes its data.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raftfl.core.address import (
    API_PORT_OFFSET,
    CLIENT_PORT_OFFSET,
    FLOWER_PORT_OFFSET,
    MODELS_PORT_OFFSET,
)
from raftfl.core.certs import is_loopback
from raftfl.core.errors import RaftflError
from raftfl.core.keys import Keys, RunKeys
from raftfl.core.quorum import DEFAULT_MAX_VOTERS, initial_voters
from raftfl.core.replay import FLState, Logged, replay
from raftfl.etcd.eventlog import EventLog
from raftfl.etcd.store import Change, Store
from raftfl.net.ports import check_port_free


@dataclass
class NodeProc:
    name: str
    ip: str
    port: int
    data_dir: Path
    log_path: Path
    args: list[str]
    env: dict[str, str]
    wrapper: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None
    stopped: bool = False
    frozen_member: int | None = None  # PID of its etcd member while frozen with it
    api_scheme: str = "http"  # https when the cluster has certificates

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def client_endpoint(self) -> str:
        return f"{self.ip}:{self.port + CLIENT_PORT_OFFSET}"

    def api_url(self, path: str = "/") -> str:
        """The URL of `path` on this node's HTTP API (raftfl/ops; raft port + 400)."""
        return f"{self.api_scheme}://{self.ip}:{self.port + API_PORT_OFFSET}{path}"

    def etcd_pid(self) -> int | None:
        """PID of this node's etcd member, if it is still our member (not a reused PID)."""
        try:
            pid = int((self.data_dir / "etcd.pid").read_text())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return None
        return pid if str(self.data_dir).encode() in cmdline else None

    def result(self) -> dict[str, Any] | None:
        try:
            return json.loads((self.data_dir / "result.json").read_text())
        except (OSError, ValueError):
            return None


def port_slice(start: int, stop: int) -> tuple[int, int]:
    """This test worker's share of [start, stop): pytest-xdist's workers (and the processes
    they start, which inherit its variables) probe disjoint ranges, so two tests running at
    once never pick the same ports."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    if not worker.startswith("gw") or not worker[2:].isdigit() or count < 2:
        return start, stop
    width = (stop - start) // count
    first = start + int(worker[2:]) % count * width
    return first, first + width


def free_base_port(n: int, start: int = 21000, stop: int = 32000) -> int:
    """A base port such that base..base+n-1 and their +100/+200/+300/+400 ports are all free."""
    start, stop = port_slice(start, stop - API_PORT_OFFSET)
    rng = range(start, stop, 10)
    offset = (os.getpid() * 7) % len(rng)
    for base in list(rng[offset:]) + list(rng[:offset]):
        try:
            for i in range(n):
                for extra in (0, CLIENT_PORT_OFFSET, FLOWER_PORT_OFFSET, MODELS_PORT_OFFSET,
                              API_PORT_OFFSET):
                    check_port_free("127.0.0.1", base + i + extra, "probe")
            return base
        except RaftflError:
            continue
    raise RaftflError("no free port range on 127.0.0.1")


@dataclass
class LocalCluster:
    n: int
    rounds: int
    cluster: str = "local"
    dataset: str = "synthetic"
    lease_ttl: int = 3
    train_size: int = 5000
    test_size: int = 1000
    workdir: Path | None = None
    keep: bool = False
    node_args: dict[int, list[str]] = field(default_factory=dict)
    node_env: dict[int, dict[str, str]] = field(default_factory=dict)
    extra_args: list[str] = field(default_factory=list)
    aggregator: str = "self"  # the bootstrap node's -a; the others follow it (or "auto")
    bootstrap: int = 0  # the node that starts as the aggregator and submits run 1 (its -r)
    exit_on_complete: bool = True  # the nodes leave after run 1 (the collector follows it)
    ips: list[str] | None = None  # one address per node (network-namespace clusters)
    wrappers: list[list[str]] | None = None  # command prefix per node, e.g. ip netns exec
    secure: bool = False  # a cluster CA, one bundle per node (--certs), etcd RBAC; we are root
    # No security flag at all, as a user types the quick start: the nodes make their own CA
    # (workdir/ca, raftfl/cli/quickstart.py) and speak mutual TLS; we are that CA's root.
    # Otherwise loopback nodes get --insecure: the harness runs plain text, as it always did.
    quickstart: bool = False
    max_voters: int = DEFAULT_MAX_VOTERS  # the nodes' --max-voters: the rest are etcd clients
    nodes: list[NodeProc] = field(default_factory=list)
    kills: dict[str, float] = field(default_factory=dict)
    log: list[Logged] = field(default_factory=list)  # every event, as the collector saw it
    vacancies: list[float] = field(default_factory=list)  # when the role key was deleted

    def __post_init__(self) -> None:
        self._own_dir = self.workdir is None
        self.workdir = Path(self.workdir or tempfile.mkdtemp(prefix="raftfl-"))
        self.base = free_base_port(self.n)
        ips = self.ips or ["127.0.0.1"] * self.n
        names = [f"{ips[i]}:{self.base + i}" for i in range(self.n)]
        bundles = self._make_certs(names, ips) if self.secure else []
        for i, name in enumerate(names):
            data_dir = self.workdir / f"node{i}"
            first = i == self.bootstrap or self.aggregator == "auto"
            agg = self.aggregator if first else names[self.bootstrap]
            args = ["node", "start", "-a", agg, "-s", name, "-n", *[x for x in names if x != name],
                    "--cluster", self.cluster, "--data-dir", str(data_dir),
                    "--lease-ttl", str(self.lease_ttl), "--start-timeout", "120",
                    "--max-voters", str(self.max_voters),
                    *(["--exit-on-complete"] if self.exit_on_complete else []),
                    *(["--certs", str(bundles[i])] if bundles
                      else [] if self.quickstart and is_loopback(ips[i])
                      # the lab's own network namespaces: non-loopback, never reachable outside
                      else ["--insecure"]),
                    *self.extra_args, *self.node_args.get(i, [])]
            if first:
                args += ["-r", str(self.rounds), "--dataset", self.dataset,
                         "--train-size", str(self.train_size), "--test-size", str(self.test_size)]
            self.nodes.append(NodeProc(name, ips[i], self.base + i, data_dir,
                                       self.workdir / f"node{i}.log", args,
                                       self.node_env.get(i, {}),
                                       self.wrappers[i] if self.wrappers else [],
                                       api_scheme="https" if self.tls else "http"))
        self._store: Store | None = None

    def _make_certs(self, names: list[str], ips: list[str]) -> list[Path]:
        """A CA and bundles under the workdir; this process (the collector) acts as root."""
        from raftfl import tls

        certs = self.workdir / "certs"  # type: ignore[operator]
        tls.init_ca(certs, self.cluster)
        bundles = [tls.issue_bundle(certs, f"node{i}", name, [ips[i]])
                   for i, name in enumerate(names)]
        tls.configure(tls.load(tls.issue_bundle(certs, "root", "root", [])))
        return bundles

    @property
    def tls(self) -> bool:
        """Whether the nodes speak mutual TLS (--certs, or the quick start's own CA)."""
        return self.secure or self.quickstart

    @property
    def quick_start_ca(self) -> Path:
        """Where the quick-start nodes make their CA: the parent of their data dirs."""
        return self.workdir / "ca"  # type: ignore[operator]

    def _use_quick_start_ca(self, timeout: float = 60) -> None:
        """Once the first node has made the CA, this process (the collector) becomes its
        root, as `raftfl status` run beside the nodes does."""
        from raftfl import tls
        from raftfl.cli.quickstart import client_identity

        self.wait_for(lambda: (self.quick_start_ca / tls.CA_CERT).is_file(), timeout,
                      "the first node to make the quick start's CA")
        tls.configure(client_identity(self.quick_start_ca))

    # -- processes --------------------------------------------------------------------------
    def start(self) -> LocalCluster:
        for node in self.nodes:
            self.start_node(node)
        if self.quickstart:
            self._use_quick_start_ca()
        self._collect()
        if self.secure:
            from raftfl.etcd import rbac

            # Under RBAC a node may not write run specs (operators submit them): the bootstrap
            # node's -r submits run 1 first, while any cluster certificate may still write.
            self.wait_for(lambda: self.store().get(self.run_keys.spec) is not None, 120,
                          "the bootstrap node to submit run 1 before etcd auth is on")
            rbac.enable(self.store(), self.cluster, [n.name for n in self.nodes])
        return self

    def _collect(self) -> None:
        """Tail the log and the role key from the start, so the whole history is kept here
        even after the nodes (and with them the etcd members) have left."""
        self._stop = threading.Event()
        store = Store(self.endpoints, retry_for=20)
        events = EventLog(store, self.run_keys)

        def tail() -> None:
            for item in events.tail(1, self._stop):
                self.log.append(item)

        def role() -> None:
            for change in store.watch(self.keys.aggregator, 1, self._stop):
                if isinstance(change, Change) and change.value is None:  # not a Resync
                    self.vacancies.append(time.time())

        for fn in (tail, role):
            threading.Thread(target=fn, name=f"collect-{fn.__name__}", daemon=True).start()

    def start_node(self, node: NodeProc) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **node.env}
        log = open(node.log_path, "ab")  # noqa: SIM115 - owned by the child
        # The lab's launcher: `raftfl` with the node's RAFTFL_TEST_* fault hooks injected.
        node.proc = subprocess.Popen([*node.wrapper, sys.executable, "-m", "raftfl.lab.node",
                                      *node.args], env=env,
                                     stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        log.close()

    def by_name(self, name: str) -> NodeProc:
        return next(n for n in self.nodes if n.name == name)

    def kill(self, name: str) -> float:
        """SIGKILL a whole node (its etcd member follows by PDEATHSIG); returns the time."""
        node = self.by_name(name)
        at = time.time()
        if node.alive:
            os.kill(node.pid, signal.SIGKILL)
            node.proc.wait()  # type: ignore[union-attr]
        self.kills[name] = at
        return at

    def interrupt(self, name: str) -> float:
        """Ctrl-C in a node's terminal: SIGINT to its process group; the node shuts down on
        its own (it is counted as gone from now on). Returns the time."""
        node = self.by_name(name)
        self.kills[name] = time.time()
        os.killpg(node.pid, signal.SIGINT)
        return self.kills[name]

    def freeze(self, name: str, member: bool = False) -> float:
        """SIGSTOP a node's process; its etcd member keeps running unless `member` (a hung
        host: both stop)."""
        node = self.by_name(name)
        node.frozen_member = node.etcd_pid() if member else None
        os.kill(node.pid, signal.SIGSTOP)
        if node.frozen_member is not None:
            os.kill(node.frozen_member, signal.SIGSTOP)
        node.stopped = True
        self.kills[name] = time.time()
        return self.kills[name]

    def thaw(self, name: str) -> None:
        node = self.by_name(name)
        if node.frozen_member is not None and node.etcd_pid() == node.frozen_member:
            os.kill(node.frozen_member, signal.SIGCONT)
        node.frozen_member = None
        os.kill(node.pid, signal.SIGCONT)
        node.stopped = False

    def close(self) -> None:
        """Kill and reap everything we started; remove the data unless asked to keep it."""
        if hasattr(self, "_stop"):
            self._stop.set()
        if self._store is not None:
            self._store.close()
            self._store = None
        for node in self.nodes:
            if node.proc is None:
                continue
            if node.proc.poll() is None:
                if node.stopped:
                    os.kill(node.pid, signal.SIGCONT)
                node.proc.terminate()
                try:
                    node.proc.wait(10)
                except subprocess.TimeoutExpired:
                    node.proc.kill()
                    node.proc.wait()
        self._reap_members()
        if self.tls:
            from raftfl import tls

            tls.configure(None)
        if self._own_dir and not self.keep and self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _reap_members(self) -> None:
        """Make sure no etcd member of ours outlives its node (PDEATHSIG normally did this)."""
        for node in self.nodes:
            pid = node.etcd_pid()
            if pid is not None:
                os.kill(pid, signal.SIGCONT)
                os.kill(pid, signal.SIGKILL)

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- observing --------------------------------------------------------------------------
    @property
    def endpoints(self) -> list[str]:
        """The etcd members' client endpoints (nodes past the voters are etcd clients)."""
        return [n.client_endpoint for n in self.voters]

    @property
    def voters(self) -> list[NodeProc]:
        names = initial_voters([n.name for n in self.nodes], self.max_voters)
        return [n for n in self.nodes if n.name in names]

    def store(self) -> Store:
        if self._store is None:
            live = [n.client_endpoint for n in self.voters if n.alive] or self.endpoints
            self._store = Store(live, retry_for=20)
        return self._store

    @property
    def keys(self) -> Keys:
        return Keys(self.cluster)

    @property
    def run_keys(self) -> RunKeys:
        """Run 1's keys: the run whose log `log` collects."""
        return self.keys.run(1)

    def state(self) -> FLState:
        """The replayed state of what has been collected so far."""
        return replay(list(self.log))

    def etcd_leader(self) -> str | None:
        """The node whose etcd member is the Raft leader, as the live members report it."""
        for node in self.voters:
            if not node.alive or node.stopped:
                continue
            try:
                st = Store.endpoint_status(node.client_endpoint)
            except Exception:  # noqa: BLE001 - a member down or busy: ask the next one
                continue
            if st.leader == st.header.member_id:
                return node.name
        return None

    def holder(self) -> tuple[str, int] | None:
        kv = self.store().get(self.keys.aggregator)
        return (json.loads(kv.value)["node"], kv.create_revision) if kv else None

    def wait_for(self, predicate: Callable[[], bool], timeout: float, what: str,
                 interval: float = 0.2) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if predicate():
                    return
            except RaftflError:
                pass
            time.sleep(interval)
        raise RaftflError(f"timed out after {timeout:.0f}s waiting for {what}")

    def wait_event(self, predicate: Callable[[Any], bool], timeout: float, what: str) -> Any:
        """The first event (in log order) matching `predicate`, as collected."""
        def find() -> Any:
            return next((item.event for item in list(self.log) if predicate(item.event)), None)

        self.wait_for(lambda: find() is not None, timeout, what, interval=0.05)
        return find()

    def wait_exit(self, timeout: float) -> None:
        """Wait for every live node process to finish on its own."""
        self.wait_for(lambda: not any(n.alive and not n.stopped for n in self.nodes), timeout,
                      "the nodes to finish")

    def final_models(self) -> dict[str, str]:
        out = {}
        for node in self.nodes:
            res = node.result()
            if res is not None:
                out[node.name] = res["final_model_sha256"]
        return out

    def tail_logs(self, lines: int = 15) -> str:
        chunks = []
        for node in self.nodes:
            try:
                text = node.log_path.read_text(errors="replace").splitlines()[-lines:]
            except OSError:
                text = []
            chunks.append(f"--- {node.name} ---\n" + "\n".join(text))
        return "\n".join(chunks)
