"""Fenced writes sent to the Raft leader's member, in lean transactions.

Why: a write sent to a follower member reaches the Raft leader as a forwarded proposal, a
copy more over the peer links on top of the leader's append to every follower. The
aggregator's member is deliberately never the Raft leader (node/lifecycle.py
move_leader_away), so each fenced write of a round (events, manifests, prunes) paid that
copy. `LeaderRoute` sends them to the leader's client endpoint instead, which turns the copy
into client bytes, and falls back to the node's own `Store` on any error: a dead, frozen or
deposed leader costs one short deadline, never the write. A write that timed out at the
leader may still land there; every caller's write is create-only or idempotent, and creates
already handle finding their own key (EventLog.append compares the event id).

The transactions carry no failure branch: etcd replicates the whole request to every
member, and `Store.create`'s failure reads repeated the key and the fence's key in each
entry. The rare refusal is told apart afterwards by reading the fence: one that fails then
failed at the write too (a create revision never comes back), so FENCED is never wrong; one
deposed in between reads as EXISTS, as it would have an instant earlier.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Sequence
from typing import Any

import etcd3
from etcd3 import etcdrpc

from raftfl.etcd.store import CreateResult, Fence, Store

log = logging.getLogger(__name__)

RESOLVE_S = 300.0  # a found leader is looked up again this often, or when a write names a new term
BACKOFF_S = 5.0  # after a failed write at the leader, the local member alone for this long
LEADER_TIMEOUT_S = 1.0  # one attempt at the leader, then the local member
MAX_TXN_OPS = 64  # operations per transaction: etcd's --max-txn-ops defaults to 128


def _bytes(value: str | bytes) -> bytes:
    return value.encode() if isinstance(value, str) else value


def _fence_compare(fence: Fence) -> Any:
    return etcdrpc.Compare(result=etcdrpc.Compare.EQUAL, target=etcdrpc.Compare.CREATE,
                           key=fence.key.encode(), create_revision=fence.create_revision)


def create_request(items: Sequence[tuple[str, str | bytes]], fence: Fence | None,
                   lease: int | None = None) -> Any:
    """Create-only puts of every (key, value), all or none, guarded by `fence`: compares and
    puts, nothing else."""
    compare = [etcdrpc.Compare(result=etcdrpc.Compare.EQUAL, target=etcdrpc.Compare.CREATE,
                               key=key.encode(), create_revision=0) for key, _ in items]
    if fence is not None:
        compare.append(_fence_compare(fence))
    puts = [etcdrpc.RequestOp(request_put=etcdrpc.PutRequest(
        key=key.encode(), value=_bytes(value), lease=lease or 0)) for key, value in items]
    return etcdrpc.TxnRequest(compare=compare, success=puts, failure=[])


def put_request(key: str, value: str | bytes, fence: Fence) -> Any:
    put = etcdrpc.RequestOp(request_put=etcdrpc.PutRequest(key=key.encode(), value=_bytes(value)))
    return etcdrpc.TxnRequest(compare=[_fence_compare(fence)], success=[put], failure=[])


def delete_prefixes_request(prefixes: Sequence[str], fence: Fence) -> Any:
    """Every key under each prefix deleted, in one fenced transaction."""
    ops = [etcdrpc.RequestOp(request_delete_range=etcdrpc.DeleteRangeRequest(
        key=p.encode(), range_end=etcd3.utils.prefix_range_end(p.encode()))) for p in prefixes]
    return etcdrpc.TxnRequest(compare=[_fence_compare(fence)], success=ops, failure=[])


def fence_holds(store: Store, fence: Fence) -> bool:
    kv = store.get(fence.key)
    return kv is not None and kv.create_revision == fence.create_revision


def local_txn(store: Store, request: Any) -> bool:
    """`request` through the Store's own member (with its retries); whether it succeeded."""
    return bool(store.call(lambda: store.client.kvstub.Txn(request, store.timeout)).succeeded)


def create_all(store: Store, items: Sequence[tuple[str, str | bytes]],
               fence: Fence | None) -> CreateResult:
    """Create every key or none, in one transaction: fenced, at the Raft leader's member
    (`route`); unfenced, through the Store's own. EXISTS when any key is there already."""
    if fence is not None:
        return route(store).create_all(items, fence)
    return CreateResult.CREATED if local_txn(store, create_request(items, None)) else \
        CreateResult.EXISTS


class LeaderRoute:
    """The fenced writes of one `Store`'s owner, at the Raft leader's member when it is
    another than the local one (the Store's first endpoint), else at the Store.

    A found leader is trusted until a write's answer names another Raft term than the
    look-up saw (a new leader always starts a new term) or a write at it fails: a steady
    round costs no look-up.
    """

    def __init__(self, store: Store, resolve_s: float = RESOLVE_S, backoff_s: float = BACKOFF_S,
                 timeout: float = LEADER_TIMEOUT_S):
        self.store = store
        self.resolve_s, self.backoff_s, self.timeout = resolve_s, backoff_s, timeout
        self._lock = threading.Lock()
        self._leader: Store | None = None  # None: the local member leads, or none is known
        self._resolved = -float("inf")  # monotonic time of the last look-up
        self._term = 0  # the Raft term the last look-up saw
        self._quiet_until = 0.0  # no leader writes before this (after a failure)
        self.sent = 0  # transactions the leader answered
        self.fallbacks = 0  # transactions the leader failed, done locally instead

    # -- writes -----------------------------------------------------------------------------
    def create(self, key: str, value: str | bytes, fence: Fence | None,
               lease: int | None = None) -> CreateResult:
        """`Store.create`'s contract: CREATED, EXISTS, or FENCED when the fence fails."""
        return self.create_all([(key, value)], fence, lease)

    def create_all(self, items: Sequence[tuple[str, str | bytes]], fence: Fence | None,
                   lease: int | None = None) -> CreateResult:
        """Every key created or none: CREATED, EXISTS (one is there), or FENCED."""
        if self._txn(create_request(items, fence, lease)):
            return CreateResult.CREATED
        if fence is not None and not fence_holds(self.store, fence):
            return CreateResult.FENCED
        return CreateResult.EXISTS

    def put_fenced(self, key: str, value: str | bytes, fence: Fence) -> bool:
        return self._txn(put_request(key, value, fence))

    def delete_prefixes(self, prefixes: Sequence[str], fence: Fence) -> bool:
        """Delete every key under each of `prefixes`, in one entry per `MAX_TXN_OPS` of
        them (etcd refuses a transaction of more than 128 operations); False when fenced
        out (the batches before it are deleted)."""
        return all(self._txn(delete_prefixes_request(prefixes[i:i + MAX_TXN_OPS], fence))
                   for i in range(0, len(prefixes), MAX_TXN_OPS))

    def _txn(self, request: Any) -> bool:
        leader = self._target()
        if leader is not None:
            try:
                resp = leader.call(lambda: leader.client.kvstub.Txn(request, self.timeout),
                                   retry_for=0.0)
            except Exception as exc:  # noqa: BLE001 - any failure: the local member does it
                self._failed(leader, exc)
            else:
                self.sent += 1
                self._saw(resp.header.raft_term)
                return bool(resp.succeeded)
        resp = self.store.call(lambda: self.store.client.kvstub.Txn(request, self.store.timeout))
        self._saw(resp.header.raft_term)
        return bool(resp.succeeded)

    def _saw(self, term: int) -> None:
        """A write's answer named Raft term `term`: another than the look-up's means another
        leader (or the first one, after an election without one): look it up again."""
        if term != self._term:
            with self._lock:
                self._resolved = -float("inf")

    # -- the leader -------------------------------------------------------------------------
    def leader(self) -> str | None:
        """The endpoint fenced writes go to now (None: the Store's own)."""
        target = self._target()
        return target.endpoints[0] if target is not None else None

    def _target(self) -> Store | None:
        now = time.monotonic()
        with self._lock:
            if now < self._quiet_until:
                return None
            if now - self._resolved >= self.resolve_s:
                self._resolved = now
                self._swap(self._find())
            return self._leader

    def _find(self) -> str | None:
        """The leader's client endpoint, None when it is the local member or unknown."""
        try:
            status = Store.member_status(self.store.endpoints[0], self.timeout)
            self._term = status.raft_term
            if status.leader_id in (0, status.member_id):
                return None
            # One attempt, as the status above: a look-up must never hold a write for long.
            members = self.store.call(lambda: list(self.store.client.members), retry_for=0.0)
            for member in members:
                if member.id == status.leader_id and member.client_urls:
                    return leader_endpoint(member.client_urls[0])
        except Exception as exc:  # noqa: BLE001 - no route: the local member writes
            log.debug("Raft leader not found: %s", exc)
        return None

    def _swap(self, endpoint: str | None) -> None:
        old = self._leader
        if old is not None and old.endpoints == [endpoint]:
            return
        self._leader = None
        if endpoint is not None and endpoint not in self.store.endpoints[:1]:
            try:
                self._leader = Store([endpoint], timeout=self.timeout, retry_for=0.0)
            except Exception as exc:  # noqa: BLE001 - a URL etcd reported that we cannot use
                log.debug("no client for the Raft leader at %s: %s", endpoint, exc)
        if old is not None:
            old.close()

    def _failed(self, leader: Store, exc: Exception) -> None:
        self.fallbacks += 1
        log.info("write at the Raft leader %s failed (%s); writing through the local member "
                 "for %.0f s", leader.endpoints[0], type(exc).__name__, self.backoff_s)
        with self._lock:
            self._quiet_until = time.monotonic() + self.backoff_s
            self._resolved = -float("inf")  # look again once the quiet time is over

    def close(self) -> None:
        with self._lock:
            self._swap(None)


def leader_endpoint(url: str) -> str | None:
    """host:port of a member's client URL (scheme dropped), None when it has no port."""
    hostport = url.split("//", 1)[-1].rstrip("/")
    host, sep, port = hostport.rpartition(":")
    return hostport if sep and host and port.isdigit() and 0 < int(port) < 65536 else None


_ROUTES: weakref.WeakKeyDictionary[Store, LeaderRoute] = weakref.WeakKeyDictionary()
_ROUTES_LOCK = threading.Lock()


def route(store: Store) -> LeaderRoute:
    """The route of `store`'s fenced writes: one per Store, made on first use, gone with it
    (its leader client closes when it is collected)."""
    with _ROUTES_LOCK:
        found = _ROUTES.get(store)
        if found is None:
            found = _ROUTES[store] = LeaderRoute(store)
        return found
