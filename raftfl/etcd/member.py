"""The embedded etcd member: one etcd child process per node, so the nodes are the Raft group.

The member is started from the template `etcd/member.yml.tmpl`, dies with its node
(PR_SET_PDEATHSIG) and is reaped with `wait()`, so a SIGKILLed node leaves no zombie and no
orphan holding its ports. Its data dir is stamped with the cluster name: restarting a node
reuses its data, and a data dir from another cluster is refused instead of corrupted.

Every string rendered into etcd's YAML is a double-quoted scalar (JSON string syntax, which
YAML reads the same way), and names are checked against a safe character set first, so no
name or path can end its value and add a setting of its own.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import logging
import os
import re
import shutil
import signal
import string
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from raftfl import tls
from raftfl.core.address import check_cluster_name, check_node_name
from raftfl.core.errors import RaftflError
from raftfl.core.records import MalformedRecord, loads_bounded
from raftfl.files import make_private_dir, write_atomic

log = logging.getLogger(__name__)

UNSAFE_VERSIONS = ((3, 5, 0), (3, 5, 5))  # known data-inconsistency bugs
MARKER = "raftfl-member.json"
DEFAULT_QUOTA_BYTES = 2 * 1024**3  # etcd's default backend quota
_PR_SET_PDEATHSIG = 1
# Raft's timing on a LAN. The election timeout bounds how long a dead Raft leader stalls
# every write and lease renewal: it stays at 1 s, well inside the nodes' 3 s lease TTL (a
# longer one would let every node's lease lapse by its own clock, and the aggregator step
# down, whenever the Raft leader dies). etcd wants it at least 5 heartbeats, so 200 ms: half
# the heartbeats of etcd's 100 ms default, each a message to and from every follower
# (bare 3-member cluster: 1.2 kB/s of Raft traffic against 2.1). Reads and writes do not
# wait for a heartbeat: etcd sends one at once for a ReadIndex and appends at once.
HEARTBEAT_MS, ELECTION_MS = 200, 1000


def find_etcd(explicit: str | None = None) -> str:
    """`--etcd-bin`, then RAFTFL_ETCD_BIN, then PATH."""
    candidate = explicit or os.environ.get("RAFTFL_ETCD_BIN") or shutil.which("etcd")
    if not candidate:
        raise RaftflError("etcd not found: install etcd 3.4 (Debian: apt-get install etcd-server) "
                          "or pass --etcd-bin / set RAFTFL_ETCD_BIN")
    path = shutil.which(candidate) or candidate
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        raise RaftflError(f"etcd binary {candidate!r} is missing or not executable")
    return path


def etcd_version(binary: str) -> tuple[int, int, int]:
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RaftflError(f"cannot run {binary} --version: {exc}") from exc
    match = re.search(r"etcd Version:\s*(\d+)\.(\d+)\.(\d+)", out)
    if not match:
        raise RaftflError(f"{binary} does not look like etcd (no version in `--version` output)")
    return tuple(int(g) for g in match.groups())  # type: ignore[return-value]


def check_version(version: tuple[int, int, int], allow_unsafe: bool = False) -> None:
    low, high = UNSAFE_VERSIONS
    if low <= version <= high and not allow_unsafe:
        raise RaftflError(
            f"etcd {'.'.join(map(str, version))} has known data-inconsistency bugs (3.5.0-3.5.5); "
            "use 3.4.x or >= 3.5.6, or pass --allow-unsafe-etcd to override")


def template_path() -> Path:
    """The member template: in the source tree, or where setup.cfg installs it."""
    for base in (Path(__file__).resolve().parents[2], Path(sys.prefix) / "share" / "raftfl"):
        path = base / "etcd" / "member.yml.tmpl"
        if path.is_file():
            return path
    raise RaftflError("etcd/member.yml.tmpl not found; reinstall raftfl")


def _env_ms(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    if raw and not (raw.isdigit() and 10 <= int(raw) <= 60_000):
        raise RaftflError(f"{name}={raw!r}: expected milliseconds between 10 and 60000")
    return int(raw) if raw else default


@dataclass(frozen=True)
class MemberSpec:
    name: str
    cluster: str
    data_dir: Path
    ip: str
    peer_port: int
    client_port: int
    initial_cluster: dict[str, str]  # name -> peer URL
    state: str = "new"  # or "existing" when joining a running cluster
    # Slow links need longer Raft timeouts: RAFTFL_ETCD_HEARTBEAT_MS / _ELECTION_MS (the WAN
    # lab sets them; etcd itself ignores its ETCD_* variables under --config-file).
    heartbeat_ms: int = field(default_factory=lambda: _env_ms("RAFTFL_ETCD_HEARTBEAT_MS",
                                                              HEARTBEAT_MS))
    election_ms: int = field(default_factory=lambda: _env_ms("RAFTFL_ETCD_ELECTION_MS",
                                                             ELECTION_MS))
    quota_bytes: int = DEFAULT_QUOTA_BYTES
    # With an identity: https on both ports, and only certificates of the cluster CA admitted.
    identity: tls.Identity | None = field(default_factory=tls.current)

    def __post_init__(self) -> None:
        check_cluster_name(self.cluster)
        for name in (self.name, *self.initial_cluster):
            check_node_name(name)

    @property
    def client_endpoint(self) -> str:
        return f"{self.ip}:{self.client_port}"

    def render(self) -> str:
        def quoted(value: object) -> str:
            return json.dumps(str(value))

        scheme = "https" if self.identity else "http"

        def url(value: str) -> str:
            return f"{scheme}://{value.split('://', 1)[-1]}"

        return string.Template(template_path().read_text()).substitute(
            name=quoted(self.name), data_dir=quoted(self.data_dir / "member-data"),
            peer_url=quoted(url(f"{self.ip}:{self.peer_port}")),
            client_url=quoted(url(f"{self.ip}:{self.client_port}")),
            cluster_state=quoted(self.state), cluster_token=quoted(f"raftfl-{self.cluster}"),
            heartbeat_ms=int(self.heartbeat_ms), election_ms=int(self.election_ms),
            quota_bytes=int(self.quota_bytes), log_path=quoted(self.data_dir / "etcd.log"),
            initial_cluster=quoted(",".join(f"{n}={url(u)}" for n, u in self.initial_cluster.items())),
            tls=self._tls_block(quoted))

    def _tls_block(self, quoted: Callable[[object], str]) -> str:
        """Client TLS requiring a certificate of the cluster CA; peer TLS with the bundle's
        peer certificate, requiring one of the peer CA (tls.py: nodes' bundles only)."""
        if not self.identity:
            return ""

        def files(cert: Path, key: Path, ca: Path) -> str:
            return (f"  cert-file: {quoted(cert)}\n  key-file: {quoted(key)}\n"
                    f"  trusted-ca-file: {quoted(ca)}\n  client-cert-auth: true\n")

        client = files(self.identity.cert, self.identity.key, self.identity.ca)
        peer = self.identity.peer
        if peer is None:  # a bundle issued before peer certificates: any of the CA's
            log.warning("%s has no %s: etcd's peer port admits any certificate of the "
                        "cluster CA; reissue the bundle", self.identity.cert.parent, tls.PEER_CERT)
        peers = client if peer is None else files(*peer)
        return f"client-transport-security:\n{client}peer-transport-security:\n{peers}"


def prepare_data_dir(spec: MemberSpec) -> bool:
    """Create (0700) or validate the data dir. Returns True when it already holds member data."""
    try:
        make_private_dir(spec.data_dir)
    except OSError as exc:
        raise RaftflError(f"cannot use data dir {spec.data_dir}: {exc.strerror or exc}") from exc
    marker = spec.data_dir / MARKER
    has_data = (spec.data_dir / "member-data" / "member").is_dir()
    if marker.exists():
        try:
            owner = loads_bounded(marker.read_bytes())
            if not isinstance(owner, dict):
                raise MalformedRecord("not a JSON object")
        except MalformedRecord as exc:
            raise RaftflError(f"{marker} is corrupt; move the data dir away to start fresh") from exc
        if owner.get("cluster") != spec.cluster or owner.get("name") != spec.name:
            raise RaftflError(
                f"data dir {spec.data_dir} belongs to node {owner.get('name')!r} of cluster "
                f"{owner.get('cluster')!r}, not {spec.name!r} of {spec.cluster!r}; "
                "use another --data-dir")
    elif has_data:
        raise RaftflError(f"data dir {spec.data_dir} holds etcd data of unknown origin; "
                          "use another --data-dir")
    else:
        write_atomic(marker, json.dumps({"cluster": spec.cluster, "name": spec.name}))
    return has_data


_LIBC = ctypes.CDLL(None, use_errno=True)  # loaded here: the forked child must not dlopen


def _die_with_parent(parent: int) -> None:
    """Runs in the child before exec: SIGKILL the member when its node dies.

    If the node died before prctl took effect, exit now instead of living on as an orphan.
    """
    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(1)


class EtcdMember:
    """One etcd child process. Start it from the node's main thread: the death signal is
    tied to the thread that forks it."""

    def __init__(self, spec: MemberSpec, binary: str):
        self.spec = spec
        self.binary = binary
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.spec.data_dir / "etcd.log"

    def start(self, threaded: bool = False) -> None:
        """`threaded`: this process already runs gRPC threads (a running node asked to become
        a voter). gRPC's fork handlers can then abort the child before it reaches exec (seen:
        "Check failed: next_worker->state == KICKED", etcd exit -6), so no Python code runs
        in the child: `setpriv --pdeathsig` sets the death signal and execs etcd."""
        config = self.spec.data_dir / "etcd.yml"
        write_atomic(config, self.spec.render(), mode=0o600)
        argv = [self.binary, "--config-file", str(config)]
        # gRPC's threads start with the first channel; a test process (or a node) that has
        # one may be forking now, whatever it says (seen: an xdist worker's members, exit -6).
        setpriv = shutil.which("setpriv") if threaded or "grpc" in sys.modules else None
        stderr = open(self.spec.data_dir / "etcd.stderr", "ab")  # noqa: SIM115 - owned by child
        self.proc = subprocess.Popen(
            [setpriv, "--pdeathsig", "KILL", "--", *argv] if setpriv else argv,
            stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr,
            preexec_fn=None if setpriv else functools.partial(_die_with_parent, os.getpid()),
            close_fds=True,
            process_group=0)  # terminal Ctrl-C goes to the node, which stops the member in order
        stderr.close()
        (self.spec.data_dir / "etcd.pid").write_text(str(self.proc.pid))

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check_alive(self) -> None:
        if not self.alive():
            tail = self._log_tail()
            raise RaftflError(f"etcd member {self.spec.name} exited "
                              f"(code {self.proc.returncode if self.proc else '?'}): {tail}")

    def _log_tail(self) -> str:
        for path in (self.spec.data_dir / "etcd.stderr", self.log_path):
            try:
                lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
            except OSError:
                continue
            errors = [ln for ln in lines if '"level":"error"' in ln or '"level":"fatal"' in ln
                      or " C | " in ln or " E | " in ln]
            if errors or lines:
                last = (errors or lines)[-1]
                msg = re.search(r'"msg":"([^"]*)"(?:.*"error":"([^"]*)")?', last)
                return f"{msg.group(1)} {msg.group(2) or ''}".strip() if msg else last[-200:]
        return "see " + str(self.log_path)

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after `timeout`; always reaped."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        else:
            self.proc.wait()


def wait_healthy(member: EtcdMember, check: Callable[[], bool], deadline_s: float,
                 progress: Callable[[str], None] | None = None,
                 stop: threading.Event | None = None) -> None:
    """Wait for the member to serve requests (it needs a quorum), with a deadline; a set
    `stop` (the node's Ctrl-C) ends the wait."""
    start = time.monotonic()
    last_note = 0.0
    stop = stop or threading.Event()
    while True:
        if stop.is_set():
            raise RaftflError(f"stopped while etcd member {member.spec.name} waited for a quorum")
        member.check_alive()
        try:
            if check():
                return
        except Exception:  # noqa: BLE001 - not ready yet
            pass
        waited = time.monotonic() - start
        if waited > deadline_s:
            raise RaftflError(f"etcd member {member.spec.name} not healthy after {deadline_s:.0f}s "
                              f"(no quorum? are the other nodes started?); log: {member.log_path}")
        if progress and waited - last_note >= 5:
            last_note = waited
            progress(f"waiting for etcd quorum ({waited:.0f}s)...")
        stop.wait(0.2)


def loopback_specs(base_dir: Path, cluster: str, n: int, base_port: int,
                   quota_bytes: int = DEFAULT_QUOTA_BYTES) -> list[MemberSpec]:
    """`n` members on 127.0.0.1 named m0..: peer ports base.., client ports base+n.. ."""
    names = [f"m{i}" for i in range(n)]
    initial = {name: f"http://127.0.0.1:{base_port + i}" for i, name in enumerate(names)}
    return [MemberSpec(name=name, cluster=cluster, data_dir=base_dir / name, ip="127.0.0.1",
                       peer_port=base_port + i, client_port=base_port + n + i,
                       initial_cluster=initial, quota_bytes=quota_bytes)
            for i, name in enumerate(names)]


@contextlib.contextmanager
def running_members(specs: list[MemberSpec], binary: str, check: Callable[[str], bool],
                    deadline_s: float = 20.0) -> Iterator[list[EtcdMember]]:
    """Start a bare etcd cluster (benchmarks, tests); every member is stopped and reaped on
    exit, also when the start fails. `check(endpoint)` says when a member serves."""
    members: list[EtcdMember] = []
    try:
        for spec in specs:
            prepare_data_dir(spec)
            members.append(EtcdMember(spec, binary))
            members[-1].start()
        for member in members:
            wait_healthy(member, lambda ep=member.spec.client_endpoint: check(ep), deadline_s)
        yield members
    finally:
        for member in members:
            member.stop()
