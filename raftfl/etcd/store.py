"""The one connection to etcd: every read, write, lease and watch goes through `Store`.

Why a wrapper: python-etcd3 fails over between endpoints but never retries, and its watches
die with the member they were opened on. `Store` retries every call with a bounded tenacity
policy (so a dead member costs one retry, never a hang) and re-opens watches from the last
revision it delivered, so a reader sees each change exactly once across failovers. When the
revision a watch must resume from has been compacted away, the watch re-reads the prefix
and hands the reader a `Resync` (the full state at the current revision) before going on:
it never dies, and it never skips changes silently.

etcd refuses writes once its backend exceeds its quota (the NOSPACE alarm); `Store` turns
that into `EtcdNoSpace`, whose one-line message names the fix.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Generator, Iterator, Sequence
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

from raftfl import tls
from raftfl.core.errors import RaftflError
from raftfl.etcd.counting import counted
from raftfl.net.origin import count

log = logging.getLogger(__name__)
T = TypeVar("T")

_RETRYABLE_CODES = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.CANCELLED,
}
_FAILOVER_CODES = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
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
    return isinstance(exc, grpc.RpcError) and (
        exc.code() in _RETRYABLE_CODES  # type: ignore[attr-defined]
        or _auth_changed(exc))


def _why(exc: BaseException | None) -> str:
    """An exception's name and, for python-etcd3's (raised from gRPC's), gRPC's status and
    details: "ConnectionFailedError" alone does not say whether no address answered, TLS
    failed or the member had no leader."""
    if exc is None:
        return "no attempt"
    rpc = exc if isinstance(exc, grpc.RpcError) else exc.__cause__
    if isinstance(rpc, grpc.RpcError):
        code, details = rpc.code(), rpc.details()  # type: ignore[attr-defined]
        status = f"{code.name if code else '?'}: {details or ''}".strip()
        return f"{type(exc).__name__} ({status.splitlines()[0][:200]})"
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:200]}" if text else type(exc).__name__


def _auth_changed(exc: grpc.RpcError) -> bool:
    """etcd refuses a request checked against users and roles that changed meanwhile (RBAC
    turned on or edited while we run); etcd's own client retries it, so do we."""
    return (exc.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
            and "auth store is old" in (exc.details() or ""))  # type: ignore[attr-defined]


class Compacted(RaftflError):
    """A read at a revision that etcd has compacted away."""


class LeaseGone(RaftflError):
    """A write on a lease that etcd no longer has: it expired (for example while the Raft
    leader was frozen) before our keepalive noticed. The lease is lost, nothing else is."""


def _compacted(exc: BaseException) -> bool:
    return (isinstance(exc, grpc.RpcError)
            and "required revision has been compacted" in (exc.details() or ""))  # type: ignore[attr-defined]


class EtcdUnavailable(RaftflError):
    """No endpoint answered within the retry budget."""


def nospace_fix(endpoints: Sequence[str]) -> str:
    """What an operator runs to clear a NOSPACE alarm, in one line."""
    ctl = f"etcdctl --endpoints={','.join(endpoints)}"
    return (f"free space with `{ctl} compact <current revision>`, `{ctl} defrag` and "
            f"`{ctl} alarm disarm`, or restart the members with a larger quota-backend-bytes")


class EtcdNoSpace(RaftflError):
    """etcd refused a write: its database exceeded its quota and the NOSPACE alarm is raised."""

    def __init__(self, endpoints: Sequence[str]) -> None:
        super().__init__("etcd is out of space (NOSPACE alarm: the database exceeded its "
                         f"quota-backend-bytes); {nospace_fix(endpoints)}")


def _lease_gone(exc: BaseException) -> bool:
    return (isinstance(exc, grpc.RpcError)
            and exc.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
            and "lease not found" in (exc.details() or ""))  # type: ignore[attr-defined]


def _no_space(exc: BaseException) -> bool:
    return (isinstance(exc, grpc.RpcError)
            and exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
            and "space exceeded" in (exc.details() or ""))  # type: ignore[attr-defined]


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


@dataclass(frozen=True)
class Resync:
    """A watch could not resume at `since`: etcd compacted that history away.

    The changes between `since` and `revision` are lost, so the watch re-read everything
    under its prefix at `revision` (`kvs`, in key order) and continues from `revision` + 1.
    A reader must rebuild what it derives from the watch from `kvs`, not apply a delta.
    """

    prefix: str
    since: int
    revision: int
    kvs: tuple[KV, ...]


@dataclass(frozen=True)
class MemberStatus:
    """One member's view of itself: its id, the Raft leader's, and its database size."""

    endpoint: str
    member_id: int
    leader_id: int
    raft_term: int
    db_size: int
    db_size_in_use: int | None  # etcd >= 3.4 reports it; None when unknown


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
        eps = [_endpoint(ep, 1.0, _CHANNEL_OPTS) for ep in self.endpoints]
        self.client = etcd3.MultiEndpointEtcd3Client(endpoints=eps, timeout=timeout, failover=True)
        # Talk to the first endpoint (a node's own member) while it lives, not a random one.
        self.client._current_endpoint_label = eps[0].netloc
        self.tx = self.client.transactions
        self._lock = threading.RLock()

    # -- plumbing ---------------------------------------------------------------------------
    def call(self, fn: Callable[[], T], retry_for: float | None = None) -> T:
        """Run `fn` with bounded retries; each failure moves the client to another endpoint."""
        budget = self.retry_for if retry_for is None else retry_for

        def once() -> T:
            try:
                return fn()
            except grpc.RpcError as exc:  # a raw stub call: python-etcd3 did not fail over
                if exc.code() in _FAILOVER_CODES:  # type: ignore[attr-defined]
                    self._fail_current()
                raise

        try:
            for attempt in Retrying(
                retry=retry_if_exception(_retryable),
                stop=stop_after_delay(budget) | stop_after_attempt(200),
                wait=wait_exponential(multiplier=0.05, max=0.5),
                reraise=False,
            ):
                with attempt:
                    return once()
        except grpc.RpcError as exc:
            if _no_space(exc):
                raise EtcdNoSpace(self.endpoints) from exc
            if _lease_gone(exc):
                raise LeaseGone("etcd: requested lease not found (it expired)") from exc
            if _compacted(exc):
                raise Compacted(f"revision compacted: {exc.details()}") from exc  # type: ignore[attr-defined]
            raise
        except RetryError as exc:
            last = exc.last_attempt.exception()
            raise EtcdUnavailable(
                f"etcd unreachable at {','.join(self.endpoints)} for {budget:.0f}s: "
                f"{_why(last)}"
            ) from last
        raise AssertionError("unreachable")

    def close(self) -> None:
        self.client.close()

    # -- key/value --------------------------------------------------------------------------
    def get(self, key: str, serializable: bool = False) -> KV | None:
        """`key`'s value; `serializable`: as the member we talk to has applied it (no Raft
        round, may answer a little behind: see `range`)."""
        resp = self.call(lambda: self.client.get_response(key, serializable=serializable))
        return _kv(resp.kvs[0]) if resp.count else None

    def range(self, prefix: str, revision: int | None = None, limit: int | None = None,
              descending: bool = False, keys_only: bool = False,
              min_mod_revision: int | None = None, start: str | None = None,
              serializable: bool | None = None) -> tuple[list[KV], int]:
        """Keys under `prefix` in key order (as of `revision`, changed since `min_mod_revision`;
        from key `start` on) and the revision read. etcd reads every key of the range to apply
        `min_mod_revision`; `start` narrows the range itself.

        A serializable read is answered by the member we talk to, without the round of leader
        heartbeats a linearizable read costs in Raft traffic (each cycle of each node made
        several). It is the default for a read pinned to a `revision`, whose answer is the
        same from any member that has applied it; a member that has not (etcd: "future
        revision") is asked again linearizably. `serializable=True` without a revision may
        answer a little behind: only for data nothing is fenced on."""
        kwargs: dict[str, Any] = {"keys_only": keys_only}
        if revision:
            kwargs["revision"] = revision
        if min_mod_revision:
            kwargs["min_mod_revision"] = min_mod_revision
        if limit:
            kwargs["limit"] = limit
        if descending:
            kwargs.update(sort_order="descend", sort_target="key")
        end = etcd3.utils.prefix_range_end(prefix.encode())

        def read(serial: bool) -> Any:
            return self.call(lambda: self.client.get_range_response(
                prefix if start is None else start, end, serializable=serial, **kwargs))

        serial = bool(revision) if serializable is None else serializable
        try:
            resp = read(serial)
        except grpc.RpcError as exc:
            if not serial or "future revision" not in str(exc.details()):  # type: ignore[attr-defined]
                raise
            resp = read(False)
        return [_kv(kv) for kv in resp.kvs], resp.header.revision

    def revision(self, serializable: bool = False) -> int:
        """The cluster's current revision; `serializable`: as the member we talk to has
        applied it (no Raft round)."""
        return int(self.call(lambda: self.client.get_response(
            "\0", serializable=serializable)).header.revision)

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
        except LeaseGone:
            pass  # expired already
        except (EtcdUnavailable, grpc.RpcError, etcd3.exceptions.Etcd3Exception):
            log.debug("lease %x not revoked; it will expire", lease_id)

    # -- cluster ----------------------------------------------------------------------------
    def add_endpoint(self, endpoint: str, first: bool = False) -> bool:
        """Use a member that joined after this client was made (a node's own new member:
        `first`, so failover prefers it). False when the client knew it already."""
        with self._lock:
            if endpoint in self.endpoints:
                return False
            ep = _endpoint(endpoint, 1.0, _CHANNEL_OPTS)
            known = dict(self.client.endpoints)  # rebound, never mutated: readers iterate it
            self.client.endpoints = {ep.netloc: ep, **known} if first else {**known, ep.netloc: ep}
            self.endpoints = [endpoint, *self.endpoints] if first else [*self.endpoints, endpoint]
            return True

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
    def member_status(endpoint: str, timeout: float = 1.0) -> MemberStatus:
        st = Store.endpoint_status(endpoint, timeout)
        return MemberStatus(endpoint, st.header.member_id, st.leader, st.raftTerm, st.dbSize,
                            _db_size_in_use(st))

    def alarms(self) -> list[tuple[int, str]]:
        """Active alarms as (member id, "NOSPACE" or "CORRUPT"), any member's."""
        resp = self.call(lambda: self.client.maintenancestub.Alarm(
            etcdrpc.AlarmRequest(action=etcdrpc.AlarmRequest.GET, memberID=0,
                                 alarm=etcdrpc.NONE), self.timeout))
        return [(a.memberID, etcdrpc.AlarmType.Name(a.alarm)) for a in resp.alarms]

    def disarm_alarms(self) -> None:
        """Clear every NOSPACE alarm; etcd raises it again on the next write that does not fit."""
        for member_id, kind in self.alarms():
            if kind == "NOSPACE":
                self.call(lambda m=member_id: self.client.maintenancestub.Alarm(
                    etcdrpc.AlarmRequest(action=etcdrpc.AlarmRequest.DEACTIVATE, memberID=m,
                                         alarm=etcdrpc.NOSPACE), self.timeout))

    def compact(self, revision: int, timeout: float = 30.0) -> None:
        """Drop the history before `revision` (old values and deleted keys; live keys stay),
        waiting until the members have physically applied it. An already compacted revision
        is fine."""
        request = etcdrpc.CompactionRequest(revision=revision, physical=True)
        try:
            self.call(lambda: self.client.kvstub.Compact(request, timeout))
        except Compacted:
            pass

    @staticmethod
    def defragment(endpoint: str, timeout: float = 60.0) -> None:
        """Rewrite one member's database file to its live size. The member serves nothing
        meanwhile, so do one member at a time."""
        with _single(endpoint, timeout) as one:
            one.maintenancestub.Defragment(etcdrpc.DefragmentRequest(), timeout)

    @staticmethod
    def move_leader(leader_endpoint: str, target_id: int, timeout: float = 5.0) -> None:
        """MoveLeader must be sent to the current leader, so use a client bound to it."""
        with _single(leader_endpoint, timeout) as one:
            one.maintenancestub.MoveLeader(etcdrpc.MoveLeaderRequest(targetID=target_id), timeout)

    # -- watches ----------------------------------------------------------------------------
    def watch(self, prefix: str, start_revision: int, stop: threading.Event,
              idle_check: float = 2.0) -> Iterator[Change | Resync]:
        """Yield every change under `prefix` from `start_revision` on, until `stop` is set.

        The watch is re-created from the last delivered revision + 1 whenever its member
        dies or stops answering, so no change is lost or delivered twice. If that revision
        was compacted meanwhile, a `Resync` (everything under `prefix`, re-read) stands in
        for the lost changes. Each watch gets a client of its own: python-etcd3 multiplexes
        the watches of one client on one stream and, after a timed-out creation, can hand
        one watch another's events.
        """
        own = Store(self.endpoints, self.timeout, self.retry_for)
        try:
            yield from own._watch(prefix, start_revision, stop, idle_check)
        finally:
            own.close()

    def _watch(self, prefix: str, start_revision: int, stop: threading.Event,
               idle_check: float) -> Iterator[Change | Resync]:
        next_rev = start_revision
        while not stop.is_set():
            responses: queue.Queue[Any] = queue.Queue()
            compacted = False

            def create(q: queue.Queue[Any] = responses, r: int = next_rev) -> Any:
                count("watch")  # its stream is opened by python-etcd3's thread: uncounted
                return self.client.add_watch_prefix_callback(prefix, q.put, start_revision=r)

            try:
                watch_id = self.call(create)
            except etcd3.exceptions.RevisionCompactedError:
                compacted = True
            except Exception as exc:  # noqa: BLE001 - unavailable, or not etcd at all
                if stop.is_set():
                    return
                if not isinstance(exc, EtcdUnavailable):
                    log.warning("cannot watch %s (%s); retrying", prefix, type(exc).__name__)
                    self._fail_current()
                stop.wait(0.5)
                continue
            if not compacted:
                try:
                    next_rev, compacted = yield from self._stream(responses, stop, idle_check, next_rev)
                finally:
                    try:
                        self.client.cancel_watch(watch_id)
                    except Exception:  # noqa: BLE001 - the member may be gone already
                        pass
            if compacted:  # etcd says so at creation, or (3.4) as the new watch's first response
                resync = self._resync(prefix, next_rev)
                if resync is not None:
                    next_rev = resync.revision + 1
                    yield resync

    def _stream(self, responses: queue.Queue[Any], stop: threading.Event, idle_check: float,
                next_rev: int) -> Generator[Change, None, tuple[int, bool]]:
        """Changes from one created watch until it fails or `stop` is set; returns the
        revision to resume from and whether etcd said that history was compacted."""
        try:
            while not stop.is_set():
                try:
                    resp = responses.get(timeout=idle_check)
                except queue.Empty:
                    self.status()  # liveness probe: raises if our member is gone
                    continue
                if isinstance(resp, Exception):
                    raise resp
                # etcd never splits one revision across responses, so resuming from the
                # revision after the last full response loses and repeats nothing; older
                # events come from a superseded, timed-out creation: skip them.
                changes = [
                    Change(ev.key.decode(),
                           None if isinstance(ev, etcd3.events.DeleteEvent) else ev.value,
                           ev.mod_revision, ev.create_revision)
                    for ev in resp.events if ev.mod_revision >= next_rev
                ]
                if changes:
                    next_rev = changes[-1].revision + 1
                yield from changes
        except etcd3.exceptions.RevisionCompactedError:
            return next_rev, True
        except Exception as exc:  # noqa: BLE001 - any watch failure means: re-open it
            if not _retryable(exc) and not isinstance(exc, EtcdUnavailable):
                log.warning("watch failed (%s); re-opening", exc)
            self._fail_current()
        return next_rev, False

    def _resync(self, prefix: str, since: int) -> Resync | None:
        """Re-read everything under `prefix` (None if etcd is unreachable: retry later)."""
        try:
            kvs, revision = self.range(prefix)
        except EtcdUnavailable:
            return None
        log.warning("watch on %s cannot resume at revision %d (compacted); re-read %d keys at "
                    "revision %d", prefix, since, len(kvs), revision)
        return Resync(prefix, since, revision, tuple(kvs))

    def _fail_current(self) -> None:
        with self._lock:
            ep = self.client.endpoint_in_use
            if ep is not None and len(self.client.endpoints) > 1:
                ep.fail()
                self.client._clear_old_stubs()


def _db_size_in_use(status: Any) -> int | None:
    """StatusResponse field 9 (dbSizeInUse, etcd >= 3.4), which the bundled protos predate:
    read it from the message's unknown fields."""
    from google.protobuf.unknown_fields import UnknownFieldSet

    for item in UnknownFieldSet(status):
        if item.field_number == 9:
            return int(item.data)
    return None


def _single(endpoint: str, timeout: float) -> etcd3.MultiEndpointEtcd3Client:
    """A client bound to exactly one member (a context manager)."""
    return etcd3.MultiEndpointEtcd3Client(endpoints=[_endpoint(endpoint, 0.1)], timeout=timeout)


def _endpoint(endpoint: str, time_retry: float, opts: Any = None) -> etcd3.Endpoint:
    """One endpoint; with mutual TLS when this process has an identity (raftfl.tls)."""
    host, _, port = endpoint.rpartition(":")
    identity = tls.current()
    ep = etcd3.Endpoint(host, int(port), secure=identity is not None, time_retry=time_retry,
                        creds=identity.grpc_credentials() if identity else None, opts=opts)
    ep.channel = counted(ep.channel)  # every request counted by origin (etcd/counting.py)
    return ep


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    """Poll `predicate` until true or the deadline passes; the bounded loop every wait uses."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
