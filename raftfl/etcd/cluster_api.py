"""etcd's Cluster API with learners, and membership changes that are never retried blindly.

cslab-etcd3 ships etcd 3.3's protos: its `MemberAddRequest` has no `isLearner`, its `Member`
no `isLearner` and there is no `MemberPromote` stub. etcd 3.4 has all three, on the same
wire: `isLearner` is field 2 of MemberAddRequest and field 5 of Member, and MemberPromote's
request and response are shaped like MemberRemove's (an ID; a header and the members). So
this module appends field 2 to the serialized request, reads field 5 from a member's
unknown fields (as store.py reads `dbSizeInUse`), and calls MemberPromote on the client's
channel with MemberRemove's message classes: the public surface of etcd3 and grpc only.

A membership change is not idempotent (a second MemberAdd adds a second member; a second
MemberRemove fails with "member not found" although the first one worked), so each change
is sent once. When it times out or its member goes away, the cluster's member list, read
with the usual bounded retries, decides whether the change happened.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from etcd3 import etcdrpc
from google.protobuf.unknown_fields import UnknownFieldSet

from raftfl.core.errors import RaftflError
from raftfl.etcd.store import EtcdUnavailable, Store

CHANGE_TIMEOUT_S = 5.0
UNHEALTHY_WAIT_S = 12.0  # etcd wants every voter connected for 5 s before a change
# etcd's own answers that leave open whether the proposal was applied:
_AMBIGUOUS = ("request timed out", "leader changed", "timed out")
_IS_LEARNER_ON_ADD = b"\x10\x01"  # field 2 (isLearner), varint 1
_LEARNER_FIELD = 5
_TRANSPORT = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
              grpc.StatusCode.CANCELLED, grpc.StatusCode.UNKNOWN}  # may be no answer


@dataclass(frozen=True)
class Member:
    id: int
    name: str  # empty until the member has started and published itself
    peer_urls: tuple[str, ...]
    client_urls: tuple[str, ...]
    learner: bool

    @property
    def label(self) -> str:
        return self.name or f"{','.join(self.peer_urls)} (not started)"


class NotInSync(RaftflError):
    """etcd refuses to promote a learner that has not caught up with the leader yet."""


def _member(raw: Any) -> Member:
    learner = any(f.field_number == _LEARNER_FIELD and int(f.data)
                  for f in UnknownFieldSet(raw))
    return Member(raw.ID, raw.name, tuple(raw.peerURLs), tuple(raw.clientURLs), learner)


def _auth(store: Store) -> dict[str, Any]:
    """The client's token, if it authenticated with a password (certificates ride on the
    channel)."""
    return {"credentials": store.client.call_credentials, "metadata": store.client.metadata}


def list_members(store: Store) -> list[Member]:
    """Every member, learners flagged (a read: retried like any other)."""
    def once() -> list[Member]:
        resp = store.client.clusterstub.MemberList(etcdrpc.MemberListRequest(), store.timeout,
                                                   **_auth(store))
        return [_member(m) for m in resp.members]

    return store.call(once)


def _ambiguous(exc: grpc.RpcError) -> bool:
    """No answer, or etcd's "timed out": the change may or may not have been applied."""
    if exc.code() not in _TRANSPORT:  # type: ignore[attr-defined]
        return False
    details = str(exc.details() or "")  # type: ignore[attr-defined]
    return not details.startswith("etcdserver:") or any(a in details for a in _AMBIGUOUS)


def _details(exc: BaseException) -> str:
    details = exc.details() if isinstance(exc, grpc.RpcError) else str(exc)  # type: ignore[attr-defined]
    return str(details).removeprefix("etcdserver: ")


def _once(store: Store, call: Callable[[], Any], happened: Callable[[list[Member]], bool],
          what: str) -> bool:
    """Send one membership change. True: it happened; False: the member list says it did
    not (after a timeout). Other refusals are RaftflError with etcd's reason; "unhealthy
    cluster" (a voter not connected for 5 s) is a refusal, so it is sent again meanwhile."""
    deadline = time.monotonic() + UNHEALTHY_WAIT_S
    while True:
        try:
            call()
            return True
        except grpc.RpcError as exc:
            if _ambiguous(exc):
                unanswered = exc
                break
            if "unhealthy cluster" in _details(exc) and time.monotonic() < deadline:
                time.sleep(0.5)
                continue
            raise RaftflError(f"{what} refused by etcd: {_details(exc)}") from exc
    try:
        return happened(list_members(store))
    except EtcdUnavailable as unreachable:
        raise RaftflError(f"{what}: no answer ({_details(unanswered)}) and the member list is "
                          "unreadable, so whether it happened is unknown; check "
                          "`raftfl status` before trying again") from unreachable


def add_learner(store: Store, peer_url: str) -> Member:
    """MemberAdd --learner for `peer_url`; the new member (from the list after a timeout)."""
    body = etcdrpc.MemberAddRequest(peerURLs=[peer_url]).SerializeToString() + _IS_LEARNER_ON_ADD
    stub = store.client.channel.unary_unary(
        "/etcdserverpb.Cluster/MemberAdd", request_serializer=lambda b: b,
        response_deserializer=etcdrpc.MemberAddResponse.FromString)
    added: list[Member] = []

    def call() -> None:
        added.append(_member(stub(body, timeout=CHANGE_TIMEOUT_S, **_auth(store)).member))

    def happened(members: list[Member]) -> bool:
        added.extend(m for m in members if peer_url in m.peer_urls)
        return bool(added)

    if not _once(store, call, happened, f"adding a learner at {peer_url}"):
        raise RaftflError(f"adding a learner at {peer_url}: no answer from etcd, and the member "
                          "list shows no such member; nothing changed, try again")
    return added[0]


def promote(store: Store, member_id: int) -> None:
    """MemberPromote; NotInSync while the learner is catching up."""
    stub = store.client.channel.unary_unary(
        "/etcdserverpb.Cluster/MemberPromote",
        request_serializer=etcdrpc.MemberRemoveRequest.SerializeToString,
        response_deserializer=etcdrpc.MemberRemoveResponse.FromString)

    def happened(members: list[Member]) -> bool:
        return any(m.id == member_id and not m.learner for m in members)

    try:
        ok = _once(store, lambda: stub(etcdrpc.MemberRemoveRequest(ID=member_id),
                                       timeout=CHANGE_TIMEOUT_S, **_auth(store)),
                   happened, f"promoting member {member_id:x}")
    except RaftflError as exc:
        if "in sync with leader" in str(exc) or "not ready" in str(exc):
            raise NotInSync(str(exc)) from exc
        raise
    if not ok:
        raise NotInSync(f"promoting member {member_id:x}: no answer; it is still a learner")


def remove(store: Store, member_id: int) -> None:
    """MemberRemove, once; after a timeout the member list says whether it is gone."""
    def call() -> None:
        store.client.clusterstub.MemberRemove(etcdrpc.MemberRemoveRequest(ID=member_id),
                                              CHANGE_TIMEOUT_S, **_auth(store))

    def happened(members: list[Member]) -> bool:
        return all(m.id != member_id for m in members)

    if not _once(store, call, happened, f"removing member {member_id:x}"):
        raise RaftflError(f"removing member {member_id:x}: no answer from etcd, and it is still "
                          "a member; nothing changed, try again")
