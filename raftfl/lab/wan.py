"""The WAN lab: real node processes in their own network namespaces, linked by emulated WAN paths.

Why: a healthy aggregator must keep its role on a slow, jittery, lossy network, and the
ranking must pick the node that is really nearest. Loopback shows neither, and this kernel
has no netem, so the lab builds the WAN from parts it does have:

* **Namespaces and a control LAN.** `faults.netns_setup` gives each node a namespace with
  an address `NET.i+1` on a veth pair into a bridge in the root namespace (`NET.254`), where
  NET is a /24 of 10.214.0.0/16 chosen by process, so two labs can run side by side. Only
  the observer (`LocalCluster`'s event collector, `raftfl status`) uses that bridge: it
  stands next to every node, so what it records is not delayed.
* **Delay and jitter: a user-space relay on every node-to-node path** (`wan_relay.py`). In
  each namespace, every *other* node's address is routed (a /32, more specific than the
  bridge's /24) through a TUN device whose other end is held by the relay. So all
  node-to-node traffic crosses the relay whatever its port or protocol: etcd peer (Raft),
  etcd client (a node's client to other members), Flower, the ICMP latency probes and the
  followers' TCP holder probes. The relay holds each packet for one way of its link
  (rtt/2 ± jitter/2) and keeps each connection's packets in order. It relays packets, not
  TCP streams, so connects, refusals and retransmissions stay end to end.
* **Loss: nftables in each namespace.** An input rule per peer drops `loss %` of the
  packets that arrive from that peer through the TUN (`numgen random`), with a counter, so
  each direction of a link loses its share and the kernel reports what it dropped.
* **etcd timing.** The members keep etcd's defaults (heartbeat 100 ms, election 1000 ms)
  unless the lab is given others; it passes them to the nodes' etcd members through
  `RAFTFL_ETCD_HEARTBEAT_MS` and `RAFTFL_ETCD_ELECTION_MS` (read by
  `raftfl.etcd.member.MemberSpec`).

Teardown (also on an exception, Ctrl-C or SIGTERM) ends the relay by its PID (its TUN
devices vanish with it), deletes the nft tables and the namespaces, veths and bridge. No
packet leaves for anything but the lab's own addresses and loopback.

Needs root, iproute2, nft (`scripts/setup.sh` installs nftables) and /dev/net/tun; without
them `WanLab` raises `Skip` with one reason.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from itertools import combinations
from types import FrameType
from typing import Any

from raftfl.core.errors import RaftflError
from raftfl.lab.faults import Skip, netns_setup, netns_teardown

NET_PREFIX = "10.214"  # + one /24 per process, so labs can run side by side (faults: 10.213.7)
HEARTBEAT_ENV = "RAFTFL_ETCD_HEARTBEAT_MS"
ELECTION_ENV = "RAFTFL_ETCD_ELECTION_MS"
ETCD_DEFAULTS = (100, 1000)  # etcd's heartbeat and election timeouts, ms
NFT_TABLE = "raftfl_wan"
READY_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Link:
    rtt_ms: float
    jitter_ms: float = 0.0
    loss_pct: float = 0.0


@dataclass(frozen=True)
class WanSpec:
    """Per-link conditions between nodes 0..n-1 (symmetric: one Link per unordered pair)."""

    n: int
    links: dict[tuple[int, int], Link]

    def link(self, i: int, j: int) -> Link:
        return self.links[(min(i, j), max(i, j))]

    @classmethod
    def from_ranges(cls, n: int, rtt_ms: tuple[float, float], jitter_ms: float,
                    loss_pct: tuple[float, float]) -> WanSpec:
        """Spread the links over the ranges: links are ordered by how far their ends are from
        node 0 (i + j), and RTT and loss grow linearly along that order from the low end to the
        high end, so both extremes occur."""
        pairs = sorted(combinations(range(n), 2), key=lambda p: (p[0] + p[1], p))
        span = max(len(pairs) - 1, 1)
        return cls(n, {p: Link(_lerp(rtt_ms, k / span), jitter_ms, _lerp(loss_pct, k / span))
                       for k, p in enumerate(pairs)})

    @classmethod
    def from_node_delays(cls, delays_ms: list[float], jitter_ms: float = 0.0,
                         loss_pct: float = 0.0) -> WanSpec:
        """Each node sits `delays_ms[i]` of round trip from a common core: RTT(i, j) is the
        sum of both ends' delays, so a node's mean RTT to its peers grows with its own."""
        n = len(delays_ms)
        return cls(n, {(i, j): Link(delays_ms[i] + delays_ms[j], jitter_ms, loss_pct)
                       for i, j in combinations(range(n), 2)})

    def mean_rtt(self, i: int, peers: list[int]) -> float:
        others = [j for j in peers if j != i]
        return sum(self.link(i, j).rtt_ms for j in others) / len(others)

    def describe(self) -> list[str]:
        return [f"  link {i}-{j}: RTT {x.rtt_ms:.0f} ms ± {x.jitter_ms:.0f} ms, loss "
                f"{x.loss_pct:.1f}%" for (i, j), x in sorted(self.links.items())]


def _lerp(bounds: tuple[float, float], t: float) -> float:
    return round(bounds[0] + (bounds[1] - bounds[0]) * t, 3)


def parse_range(text: str) -> tuple[float, float]:
    """`"50..200"` -> (50.0, 200.0); `"100"` -> (100.0, 100.0). Raises ValueError."""
    lo, sep, hi = text.partition("..")
    low, high = float(lo), float(hi if sep else lo)
    if not 0 <= low <= high:
        raise ValueError(f"{text!r}: expected LOW..HIGH with 0 <= LOW <= HIGH")
    return low, high


def require_tools() -> None:
    """Raise Skip with one reason when the lab cannot run here."""
    if os.geteuid() != 0:
        raise Skip("the WAN lab needs root (network namespaces, TUN devices, nftables)")
    for tool, package in (("ip", "iproute2"), ("nft", "nftables")):
        if shutil.which(tool) is None:
            raise Skip(f"the WAN lab needs '{tool}' ({package}; scripts/setup.sh installs it)")
    if not os.path.exists("/dev/net/tun"):
        raise Skip("the WAN lab needs /dev/net/tun (TUN devices)")


def _run(args: list[str], stdin: str | None = None) -> str:
    try:
        done = subprocess.run(args, input=stdin, capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RaftflError(f"{' '.join(args)}: {exc}") from exc
    if done.returncode != 0:
        raise RaftflError(f"{' '.join(args)}: {done.stderr.strip() or done.returncode}")
    return done.stdout


@dataclass
class WanLab:
    """Namespaces + relay + nft loss for `spec`; use as a context manager, then hand `ips`,
    `wrappers` and `node_env` to `LocalCluster`."""

    spec: WanSpec
    net: str = field(default_factory=lambda: f"{NET_PREFIX}.{os.getpid() % 250}")
    seed: int = 0
    etcd_timeouts: tuple[int, int] | None = None  # (heartbeat, election) ms; None: etcd's
    ctx: dict[str, Any] = field(default_factory=dict)
    relay: subprocess.Popen[str] | None = None
    relay_stats: dict[str, Any] | None = None
    _old_sigterm: Any = None

    @property
    def ips(self) -> list[str]:
        return list(self.ctx["ips"])

    @property
    def wrappers(self) -> list[list[str]]:
        return list(self.ctx["wrappers"])

    @property
    def etcd_timing(self) -> tuple[int, int]:
        return self.etcd_timeouts or ETCD_DEFAULTS

    def node_env(self) -> dict[int, dict[str, str]]:
        """Environment for each node's process (fresh dicts: callers may add to them)."""
        if self.etcd_timeouts is None:
            return {i: {} for i in range(self.spec.n)}
        heartbeat, election = self.etcd_timeouts
        return {i: {HEARTBEAT_ENV: str(heartbeat), ELECTION_ENV: str(election)}
                for i in range(self.spec.n)}

    def __enter__(self) -> WanLab:
        require_tools()
        if threading.current_thread() is threading.main_thread():
            self._old_sigterm = signal.signal(signal.SIGTERM, _sigterm)
        try:
            self.ctx = netns_setup(self.spec.n, self.net)
            self._start_relay()
            for i, ns in enumerate(self.ctx["ns"]):
                self._wire(i, ns)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _tun(self, i: int) -> str:
        return f"{self.ctx['ns'][i]}w"

    def _start_relay(self) -> None:
        config = {"seed": self.seed,
                  "tuns": [{"name": self._tun(i), "ip": ip} for i, ip in enumerate(self.ips)],
                  "links": [{"a": self.ips[i], "b": self.ips[j], "rtt_ms": x.rtt_ms,
                             "jitter_ms": x.jitter_ms} for (i, j), x in self.spec.links.items()]}
        self.relay = subprocess.Popen(
            [sys.executable, "-m", "raftfl.lab.wan_relay", json.dumps(config)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            start_new_session=True)  # Ctrl-C reaches us; we stop it in order
        ready: list[str] = []
        reader = threading.Thread(target=lambda: ready.append(self.relay.stdout.readline()),  # type: ignore[union-attr]
                                  daemon=True)
        reader.start()
        reader.join(READY_TIMEOUT_S)
        if not ready or ready[0].strip() != "ready":
            err = self.relay.stderr.read() if self.relay.poll() is not None else "no answer"  # type: ignore[union-attr]
            raise RaftflError(f"the WAN relay did not start: {err.strip()}")
        _prioritise(self.relay.pid)

    def _wire(self, i: int, ns: str) -> None:
        tun, me = self._tun(i), self.ips[i]
        _run(["ip", "link", "set", tun, "netns", ns])
        _run(["ip", "-n", ns, "link", "set", tun, "up"])
        for j, peer in enumerate(self.ips):
            if j != i:
                _run(["ip", "-n", ns, "route", "add", f"{peer}/32", "dev", tun, "src", me])
        rules = "\n".join(
            f"add rule inet {NFT_TABLE} input iifname \"{tun}\" ip saddr {peer} "
            f"numgen random mod 10000 < {round(self.spec.link(i, j).loss_pct * 100)} counter drop"
            for j, peer in enumerate(self.ips) if j != i and self.spec.link(i, j).loss_pct > 0)
        _run(["ip", "netns", "exec", ns, "nft", "-f", "-"],
             f"add table inet {NFT_TABLE}\n"
             f"add chain inet {NFT_TABLE} input {{ type filter hook input priority 0; }}\n"
             f"{rules}\n")

    def drops(self) -> dict[str, int]:
        """Packets nftables dropped so far, per namespace (node address)."""
        out = {}
        for ip, ns in zip(self.ips, self.ctx.get("ns", []), strict=False):
            try:
                table = json.loads(_run(["ip", "netns", "exec", ns, "nft", "-j", "list", "table",
                                         "inet", NFT_TABLE]))
            except (RaftflError, ValueError):
                continue
            out[ip] = sum(expr["counter"]["packets"] for item in table["nftables"]
                          for expr in item.get("rule", {}).get("expr", []) if "counter" in expr)
        return out

    def close(self) -> None:
        """Stop the relay (by PID), drop the nft tables, remove namespaces, veths and bridge."""
        if self.relay is not None:
            proc, self.relay = self.relay, None
            try:
                out, _ = proc.communicate(input="", timeout=5)  # EOF on stdin: stop, print stats
                lines = out.strip().splitlines()
                self.relay_stats = json.loads(lines[-1]) if lines else None
            except (subprocess.TimeoutExpired, ValueError):
                proc.kill()
                proc.wait()
        for ns in self.ctx.get("ns", []):
            subprocess.run(["ip", "netns", "exec", ns, "nft", "delete", "table", "inet", NFT_TABLE],
                           capture_output=True, timeout=10)
        if self.ctx:
            netns_teardown(self.ctx)
            self.ctx = {}
        if self._old_sigterm is not None:
            signal.signal(signal.SIGTERM, self._old_sigterm)
            self._old_sigterm = None


def _prioritise(pid: int) -> None:
    """The link must not be the laggard: N nodes and their etcd members share this machine's
    cores, and a relay waiting for a CPU delays packets beyond their link's delay. Real-time
    round-robin at the lowest priority lets it run when a packet is due (it sleeps otherwise;
    the kernel's RT throttling still bounds it); where that is refused, a better nice value."""
    try:
        os.sched_setscheduler(pid, os.SCHED_RR, os.sched_param(1))
    except OSError:
        os.setpriority(os.PRIO_PROCESS, pid, -5)


def _sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwind through every `finally`: the lab tears down

