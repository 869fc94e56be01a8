"""A node's presence in the cluster: its lease, its member record and its latency stream.

Everything a node publishes about itself is bound to one lease, so when the node dies,
freezes or is cut off, all of it (including the aggregator role, if held) disappears together
after one TTL. The keepalive runs in its own thread and also tracks the lease's *local*
deadline: a node that cannot refresh in time assumes it lost the lease, before etcd says so.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc
import psutil

from raftfl.core.keys import Keys, seq_of
from raftfl.core.latency import refresh_for, worth_writing
from raftfl.core.member_record import MemberInfo
from raftfl.core.ranking import Weights
from raftfl.etcd.context import append_sample, read_members
from raftfl.etcd.store import EtcdUnavailable, LeaseGone, Store
from raftfl.net.origin import origin
from raftfl.net.probe import Prober

log = logging.getLogger(__name__)

SAMPLES_KEPT = 30  # per node; older samples are deleted by their writer
# Probe cycles between refreshes of the member record's resources (free CPU and memory, a
# ranking input read only at a campaign, worth 3 points of score against 1 a ms of RTT):
# each refresh is a write every member applies, 14% of a 16-node round's Raft bytes when
# every 30 cycles.
PUBLISH_EVERY = 120


def local_resources() -> tuple[float, float]:
    """(free CPU fraction, available memory in MiB) of this host right now."""
    busy = psutil.cpu_percent(interval=None) / 100.0
    return round(1.0 - busy, 2), round(psutil.virtual_memory().available / 2**20, 0)


@dataclass(frozen=True)
class LeaseState:
    lease: int | None
    valid_until: float  # monotonic deadline by our own clock
    abandoned: int | None = None  # a lease given up locally, to revoke when etcd is back
    # When the grant or keepalive that set `valid_until` was sent (monotonic): either reached
    # the Raft leader (a follower forwards keepalives to it), so our member was in touch then.
    leader_heard_at: float = float("-inf")


class Session:
    """Lease + keepalive + member record + latency prober for one node."""

    def __init__(self, store: Store, keys: Keys, info: MemberInfo, ttl: int,
                 on_lost: Callable[[], None], probe_interval: float = 1.0,
                 extra_rtt_ms: float = 0.0, fresh_s: float = Weights.fresh_s):
        self.store = store
        self.keys = keys
        self.info = info
        self.ttl = ttl
        self.on_lost = on_lost
        self.probe_interval = probe_interval
        self.refresh_s = refresh_for(fresh_s)  # the cluster's ranking weights say how fresh
        self._state = LeaseState(None, 0.0)
        self.stop = threading.Event()
        self.prober = Prober(extra_ms=extra_rtt_ms)
        psutil.cpu_percent(interval=None)  # prime: the first reading is always 0.0
        self._seq = 0
        self._written: tuple[dict[str, float | None] | None, float, int | None] = (None, 0.0, None)
        self._lock = threading.Lock()
        self.members: dict[str, MemberInfo] = {}

    # -- lease ------------------------------------------------------------------------------
    # The HA loop alone grants leases (`open`); the keepalive thread only refreshes them and,
    # when one is lost, swaps in an immutable `LeaseState` that says so. Nothing else is shared.
    @property
    def lease(self) -> int | None:
        return self._state.lease

    @property
    def state(self) -> LeaseState:
        """The lease and its local deadline, read together (one immutable value)."""
        return self._state

    @property
    def valid(self) -> bool:
        st = self._state
        return st.lease is not None and time.monotonic() < st.valid_until

    def open(self) -> None:
        """Grant a fresh lease and publish the member record on it.

        A lease we gave up on locally may still live in etcd (a leader change renews every
        lease); revoke it so the role it may carry is freed now rather than a TTL later.
        """
        with self._lock:
            if self._state.abandoned is not None:
                self.store.revoke(self._state.abandoned)
            started = time.monotonic()
            lease = self.store.grant(self.ttl)
            self._state = LeaseState(lease, started + self.ttl, leader_heard_at=started)
            self.publish()

    def publish(self, lease: int | None = None) -> None:
        """Write the member record; never without a lease, or a dead node would look alive."""
        lease = self.lease if lease is None else lease
        if lease is None:
            return
        self.info.cpu_free, self.info.mem_free_mb = local_resources()
        self.info.ts = time.time()
        self.store.put(self.keys.member(self.info.node), self.info.to_json(), lease=lease)

    def _keepalive_loop(self) -> None:
        origin("lease")
        interval = min(0.5, self.ttl / 4)
        while not self.stop.wait(interval):
            self.refresh(interval)

    def refresh(self, budget: float) -> None:
        """One keepalive. Any failure counts as a missed refresh, never as a dead thread; a
        lease not refreshed within its TTL (by our own clock) is given up and reported."""
        st = self._state
        if st.lease is None:
            return
        sent = time.monotonic()
        try:
            ttl: int | None = self.store.keepalive(st.lease, retry_for=budget)
        except Exception as exc:  # noqa: BLE001 - any failure is a missed refresh
            log.debug("keepalive of lease %x failed: %s", st.lease, exc)
            ttl = None
        with self._lock:
            if self._state.lease != st.lease:  # the loop replaced it meanwhile
                return
            if ttl:
                self._state = LeaseState(st.lease, sent + ttl, leader_heard_at=sent)
                return
            if ttl is None and time.monotonic() < self._state.valid_until:
                return
        self._lose(st.lease, "expired in etcd" if ttl == 0 else "no refresh within TTL",
                   expired=ttl == 0)

    def gone(self) -> None:
        """etcd refused a write on the current lease as unknown: it has expired there."""
        if (lease := self.lease) is not None:
            self._lose(lease, "expired in etcd, seen on a write", expired=True)

    def _lose(self, lease: int, why: str, expired: bool) -> None:
        """Give `lease` up; one that etcd has not said `expired` may live on there, and is
        revoked at the next `open` (a revoke of an expired lease is a Raft entry for nothing:
        16 nodes at load 12 lost 3.7 leases a round)."""
        with self._lock:
            if self._state.lease != lease:
                return
            log.warning("lease %x lost (%s)", lease, why)
            self._state = LeaseState(None, 0.0, abandoned=None if expired else lease)
        try:
            self.on_lost()
        except Exception:  # noqa: BLE001 - the loop notices the lost lease by itself too
            log.exception("lease-lost callback failed")

    # -- latency ----------------------------------------------------------------------------
    def _probe_loop(self) -> None:
        origin("probe")
        cycle = 0
        previous: dict[str, float | None] | None = None  # the last cycle's RTTs
        while not self.stop.wait(self.probe_interval):
            lease = self.lease  # one lease per cycle: a revoked one makes the writes fail
            if lease is None:
                continue
            try:
                self.members = read_members(self.store, self.keys, serializable=True)
                rtts = {peer: self.prober.probe(m.ip, m.client_port)
                        for peer, m in self.members.items() if peer != self.info.node}
                now = time.time()
                last, last_ts, last_lease = self._written  # samples die with their lease
                if last_lease != lease or worth_writing(last, last_ts, rtts, now,
                                                        self.refresh_s, previous):
                    self._append_sample(rtts, lease)
                    self._written = (rtts, now, lease)
                previous = rtts
                cycle += 1
                if cycle % PUBLISH_EVERY == 0:
                    self.publish(lease)
            except EtcdUnavailable as exc:
                log.debug("probe cycle skipped: %s", exc)
            except (LeaseGone, grpc.RpcError) as exc:  # the lease expired or was revoked
                log.debug("probe cycle aborted: %s", exc)
            except Exception:  # noqa: BLE001 - a probe bug must not kill the node
                log.exception("probe cycle failed")

    def _append_sample(self, rtts: dict[str, float | None], lease: int) -> None:
        if not self._seq:
            kvs, _ = self.store.range(self.keys.latency_of(self.info.node), limit=1,
                                      descending=True, keys_only=True)
            self._seq = max([seq_of(kv.key) or 0 for kv in kvs] + [0])
        self._seq += 1
        # Compact: a sample's bytes cross Raft to every voter (5 B a byte at 5 voters).
        value = json.dumps({"node": self.info.node, "ts": round(time.time(), 3),
                            "method": self.prober.method,
                            "rtt_ms": {k: None if v is None else round(v, 3)
                                       for k, v in sorted(rtts.items())}},
                           separators=(",", ":"))
        append_sample(self.store, self.keys, self.info.node, self._seq, value, lease,
                      drop=self._seq - SAMPLES_KEPT)

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        for target, name in ((self._keepalive_loop, "keepalive"), (self._probe_loop, "prober")):
            threading.Thread(target=target, name=name, daemon=True).start()

    def close(self, revoke: bool = True) -> None:
        self.stop.set()
        with self._lock:
            lease, self._state = self.lease, LeaseState(None, 0.0)
        if revoke and lease is not None:
            self.store.revoke(lease)

