"""The one connection to etcd: every read, write, lease and watch goes through `Store`.

Why a wrapper: python-etcd3 fails over between endpoints but never retries, and its watches
die with the member they were opened on. `Store` retries every call with a bounded tenacity
policy (so a dead member costs one retry, never a hang) and re-opens watches from the last
revision it delivered, so a reader sees each change exactly once across failovers.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, TypeVar

import etcd3
import grpc
from etcd3 import etcdrpc
from tenacity import (
    RetryError,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential,
)

from raftfl.core.errors import RaftflError

log = logging.getLogger(__name__)
T = TypeVar("T")

_RETRYABLE_CODES = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.CANCELLED,
}
# Frozen members never close their TCP connections; keepalive pings on active calls (such as
# watches) expose them in ~2.5 s. etcd refuses pings on idle connections, so none are sent.
_CHANNEL_OPTS = [
    ("grpc.keepalive_time_ms", 1000),
    ("grpc.keepalive_timeout_ms", 1500),
    ("grpc.keepalive_permit_without_calls", 0),
    ("grpc.http2.max_pings_without_data", 0),
    # Reconnect within a second once a partition heals, not after gRPC's backoff of minutes.
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
]


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, etcd3.exceptions.RevisionCompactedError):
        return False
    if isinstance(
        exc,
        etcd3.exceptions.ConnectionFailedError
        | etcd3.exceptions.ConnectionTimeoutError
        | etcd3.exceptions.InternalServerError
        | etcd3.exceptions.NoServerAvailableError
        | etcd3.exceptions.WatchTimedOut,
    ):
        return True
    return isinstance(exc, grpc.RpcError) and exc.code() in _RETRYABLE_CODES  # type: ignore[attr-defined]


Compacted = etcd3.exceptions.RevisionCompactedError  # a read or watch of a compacted revision


class EtcdUnavailable(RaftflError):
    """No endpoint answered within the retry budget."""


@dataclass(frozen=True)
class KV:
    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    lease: int


@dataclass(frozen=True)
class Fence:
    """A guard: the write only succeeds while `key` still has this create revision (the term)."""

    key: str
    create_revision: int


class CreateResult(Enum):
    CREATED = "created"
    EXISTS = "exists"
    FENCED = "fenced"


@dataclass(frozen=True)
class Change:
    """One change seen by a watch: a put (value set) or a delete (value None)."""

    key: str
    value: bytes | None
    revision: int
    create_revision: int


def _kv(kv: Any) -> KV:
    return KV(kv.key.decode(), kv.value, kv.create_revision, kv.mod_revision, kv.lease)


class Store:
    """Retrying, failing-over access to one etcd cluster."""

    def __init__(self, endpoints: Sequence[str], timeout: float = 2.0, retry_for: float = 15.0):
        if not endpoints:
            raise RaftflError("no etcd endpoints given")
        self.endpoints = list(endpoints)
        self.timeout = timeout
        self.retry_for = retry_for
        eps = []
        for ep in self.endpoints:
            host, _, port = ep.rpartition(":")
            eps.append(etcd3.Endpoint(host, int(port), secure=False, time_retry=1.0,
                                      opts=_CHANNEL_OPTS))
        self.client = etcd3.MultiEndpointEtcd3Client(endpoints=eps, timeout=timeout, failover=True)
        # Talk to the first endpoint (a node's own member) while it lives, not a random one.
        self.client._current_endpoint_label = eps[0].netloc
        self.tx = self.client.transactions
        self._lock = threading.RLock()

    # -- plumbing ---------------------------------------------------------------------------
    def call(self, fn: Callable[[], T], retry_for: float | None = None) -> T:
        """Run `fn` with bounded retries; each failure moves the client to another endpoint."""
        budget = self.retry_for if retry_for is None else retry_for
        try:
            for attempt in Retrying(
                retry=retry_if_exception(_retryable),
                stop=stop_after_delay(budget) | stop_after_attempt(200),
                wait=wait_exponential(multiplier=0.05, max=0.5),
                reraise=False,
            ):
                with attempt:
                    return fn()
        except RetryError as exc:
            last = exc.last_attempt.exception()
            raise EtcdUnavailable(
                f"etcd unreachable at {','.join(self.endpoints)} for {budget:.0f}s: "
                f"{type(last).__name__}"
            ) from last
        raise AssertionError("unreachable")

    def close(self) -> None:
        self.client.close()

    # -- key/value --------------------------------------------------------------------------
    def get(self, key: str) -> KV | None:
        resp = self.call(lambda: self.client.get_response(key))
        return _kv(resp.kvs[0]) if resp.count else None

    def range(self, prefix: str, revision: int | None = None, limit: int | None = None,
              descending: bool = False, keys_only: bool = False,
              min_mod_revision: int | None = None) -> tuple[list[KV], int]:
        """Keys under `prefix` in key order (as of `revision`, changed since `min_mod_revision`)
        and the revision read."""
        kwargs: dict[str, Any] = {"keys_only": keys_only}
        if revision:
            kwargs["revision"] = revision
        if min_mod_revision:
            kwargs["min_mod_revision"] = min_mod_revision
        if limit:
            kwargs["limit"] = limit
        if descending:
            kwargs.update(sort_order="descend", sort_target="key")
        resp = self.call(lambda: self.client.get_prefix_response(prefix, **kwargs))
        return [_kv(kv) for kv in resp.kvs], resp.header.revision

    def put(self, key: str, value: str | bytes, lease: int | None = None) -> int:
        resp = self.call(lambda: self.client.put(key, value, lease=lease))
        return resp.header.revision

    def create(self, key: str, value: str | bytes, lease: int | None = None,
               fence: Fence | None = None) -> CreateResult:
        """Create-only put: never overwrites. With a fence, also requires the guard to hold."""
        compare = [self.tx.create(key) == 0]
        if fence is not None:
            compare.append(self.tx.create(fence.key) == fence.create_revision)
        ok, failure = self.call(lambda: self.client.transaction(
            compare=compare,
            success=[self.tx.put(key, value, lease=lease)],
            failure=[self.tx.get(key)] + ([self.tx.get(fence.key)] if fence else []),
        ))
        if ok:
            return CreateResult.CREATED
        if fence is not None:
            guard = failure[1]
            if not guard or guard[0][1].create_revision != fence.create_revision:
                return CreateResult.FENCED
        return CreateResult.EXISTS

    def create_revision(self, key: str, value: str | bytes, lease: int | None = None) -> int | None:
        """Create-if-absent; returns the revision the key was created at (its create revision,
        read from the transaction's own header), or None when the key already exists."""
        put = etcdrpc.RequestOp(request_put=etcdrpc.PutRequest(
            key=key.encode(), value=value.encode() if isinstance(value, str) else value,
            lease=lease or 0))
        request = etcdrpc.TxnRequest(compare=[(self.tx.create(key) == 0).build_message()],
                                     success=[put], failure=[])
        resp = self.call(lambda: self.client.kvstub.Txn(request, self.timeout))
        return int(resp.header.revision) if resp.succeeded else None

    def put_fenced(self, key: str, value: str | bytes, fence: Fence,
                   lease: int | None = None) -> bool:
        ok, _ = self.call(lambda: self.client.transaction(
            compare=[self.tx.create(fence.key) == fence.create_revision],
            success=[self.tx.put(key, value, lease=lease)], failure=[]))
        return bool(ok)

    def delete(self, key: str, fence: Fence | None = None) -> bool:
        if fence is None:
            return bool(self.call(lambda: self.client.delete(key)))
        ok, _ = self.call(lambda: self.client.transaction(
            compare=[self.tx.create(fence.key) == fence.create_revision],
            success=[self.tx.delete(key)], failure=[]))
        return bool(ok)

    def delete_if_unchanged(self, key: str, mod_revision: int) -> bool:
        """Delete `key` only if nobody has written it since `mod_revision`."""
        ok, _ = self.call(lambda: self.client.transaction(
            compare=[self.tx.mod(key) == mod_revision], success=[self.tx.delete(key)], failure=[]))
        return bool(ok)

    def delete_prefix(self, prefix: str) -> None:
        self.call(lambda: self.client.delete_prefix(prefix))

    # -- leases -----------------------------------------------------------------------------
    def grant(self, ttl: int) -> int:
        return self.call(lambda: self.client.lease(ttl)).id

    def keepalive(self, lease_id: int, retry_for: float = 1.0) -> int:
        """Refresh a lease; returns the remaining TTL, 0 when the lease is gone."""
        def once() -> int:
            for resp in self.client.refresh_lease(lease_id):
                return int(resp.TTL)
            return 0
        return self.call(once, retry_for=retry_for)

    def revoke(self, lease_id: int) -> None:
        try:
            self.call(lambda: self.client.revoke_lease(lease_id), retry_for=2.0)
        except (EtcdUnavailable, grpc.RpcError, etcd3.exceptions.Etcd3Exception):
            log.debug("lease %x not revoked; it will expire", lease_id)

    # -- cluster ----------------------------------------------------------------------------
    def members(self) -> list[Any]:
        return list(self.call(lambda: list(self.client.members)))

    def status(self) -> Any:
        return self.call(lambda: self.client.status())

    @staticmethod
    def endpoint_status(endpoint: str, timeout: float = 1.0) -> Any:
        """Raw StatusResponse of one specific member (no failover): member id, leader, term."""
        with _single(endpoint, timeout) as one:
            return one.maintenancestub.Status(etcdrpc.StatusRequest(), timeout)

    @staticmethod
    def move_leader(leader_endpoint: str, target_id: int, timeout: float = 5.0) -> None:
        """MoveLeader must be sent to the current leader, so use a client bound to it."""
        with _single(leader_endpoint, timeout) as one:
            one.maintenancestub.MoveLeader(etcdrpc.MoveLeaderRequest(targetID=target_id), timeout)

    # -- watches ----------------------------------------------------------------------------
    def watch(self, prefix: str, start_revision: int, stop: threading.Event,
              idle_check: float = 2.0) -> Iterator[Change]:
        """Yield every change under `prefix` from `start_revision` on, until `stop` is set.

        The watch is re-created from the last delivered revision + 1 whenever its member
        dies or stops answering, so no change is lost or delivered twice. Each watch gets a
        client of its own: python-etcd3 multiplexes the watches of one client on one stream
        and, after a timed-out creation, can hand one watch another's events.
        """
        own = Store(self.endpoints, self.timeout, self.retry_for)
        try:
            yield from own._watch(prefix, start_revision, stop, idle_check)
        finally:
            own.close()

    def _watch(self, prefix: str, start_revision: int, stop: threading.Event,
               idle_check: float) -> Iterator[Change]:
        next_rev = start_revision
        while not stop.is_set():
            responses: queue.Queue[Any] = queue.Queue()
            try:
                watch_id = self.call(lambda q=responses, r=next_rev: self.client.add_watch_prefix_callback(
                    prefix, q.put, start_revision=r))
            except etcd3.exceptions.RevisionCompactedError as exc:
                raise RaftflError(f"watch on {prefix} from revision {next_rev}: compacted") from exc
            except Exception as exc:  # noqa: BLE001 - unavailable, or not etcd at all
                if stop.is_set():
                    return
                if not isinstance(exc, EtcdUnavailable):
                    log.warning("cannot watch %s (%s); retrying", prefix, type(exc).__name__)
                    self._fail_current()
                stop.wait(0.5)
                continue
            try:
                while not stop.is_set():
                    try:
                        resp = responses.get(timeout=idle_check)
                    except queue.Empty:
                        self.status()  # liveness probe: raises if our member is gone
                        continue
                    if isinstance(resp, Exception):
                        raise resp
                    # etcd never splits one revision across responses, so resuming from
                    # the revision after the last full response loses and repeats nothing;
                    # older events come from a superseded, timed-out creation: skip them.
                    changes = [
                        Change(ev.key.decode(),
                               None if isinstance(ev, etcd3.events.DeleteEvent) else ev.value,
                               ev.mod_revision, ev.create_revision)
                        for ev in resp.events if ev.mod_revision >= next_rev
                    ]
                    if changes:
                        next_rev = changes[-1].revision + 1
                    yield from changes
            except etcd3.exceptions.RevisionCompactedError as exc:
                raise RaftflError(f"watch on {prefix} fell behind compaction") from exc
            except Exception as exc:  # noqa: BLE001 - any watch failure means: re-open it
                if not _retryable(exc) and not isinstance(exc, EtcdUnavailable):
                    log.warning("watch on %s failed (%s); re-opening", prefix, exc)
                self._fail_current()
            finally:
                try:
                    self.client.cancel_watch(watch_id)
                except Exception:  # noqa: BLE001 - the member may be gone already
                    pass

    def _fail_current(self) -> None:
        with self._lock:
            ep = self.client.endpoint_in_use
            if ep is not None and len(self.client.endpoints) > 1:
                ep.fail()
                self.client._clear_old_stubs()


def _single(endpoint: str, timeout: float) -> etcd3.MultiEndpointEtcd3Client:
    """A client bound to exactly one member (a context manager)."""
    host, _, port = endpoint.rpartition(":")
    return etcd3.MultiEndpointEtcd3Client(
        endpoints=[etcd3.Endpoint(host, int(port), secure=False, time_retry=0.1)], timeout=timeout)


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    """Poll `predicate` until true or the deadline passes; the bounded loop every wait uses."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
