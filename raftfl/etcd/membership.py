"""etcd membership changes behind `raftfl node join` and `raftfl node leave`.

A join that fails half-way must not leave a member behind that will never vote: going from
1 to 2 voters loses the quorum at once, from 2 to 3 leaves no fault tolerance. So a join
first runs every check it can run locally (etcd binary and version, free ports, a usable
data dir), then adds the node as a **learner**, which counts for no quorum, and promotes it
only once its member has caught up and the cluster is below its voter target. A learner
that does not come up within the deadline is removed again.

A leave is checked against the quorum the cluster would have without the member; an
aggregator that leaves hands the role over first (the nodes' planned handover: its round in
flight commits and it resigns), so no round is lost and nobody waits for its lease.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from raftfl import tls
from raftfl.core.address import NodeAddress, parse_address
from raftfl.core.errors import RaftflError
from raftfl.core.keys import Keys
from raftfl.core.quorum import leave_refusal, may_promote, tolerates
from raftfl.core.role import RoleHolder
from raftfl.etcd import cluster_api, signers
from raftfl.etcd.cluster_api import Member, NotInSync, list_members
from raftfl.etcd.handover import request_handover, wait_handover
from raftfl.etcd.member import (
    MemberSpec,
    check_version,
    etcd_version,
    find_etcd,
    prepare_data_dir,
)
from raftfl.etcd.store import EtcdUnavailable, Store
from raftfl.net.address import client_endpoint, peer_url, resolve
from raftfl.net.ports import check_port_free

POLL_S = 0.5
STATUS_TIMEOUT_S = 1.0


# -- join ---------------------------------------------------------------------------------
def local_checks(opts: Any, flower: bool = True) -> bool:
    """Everything a join can check without the cluster, before any change to it; `flower`
    False for a running node (asked to become a voter), whose Flower port may be its own.

    Returns True when the data dir holds etcd data (of an earlier membership)."""
    check_version(etcd_version(find_etcd(opts.etcd_bin)), opts.allow_unsafe_etcd)
    ports = ((opts.address.port, "etcd peer"), (opts.etcd_client_port, "etcd client"),
             *([(int(opts.flower_address.rsplit(":", 1)[1]), "Flower")] if flower else []))
    if len({port for port, _ in ports}) < len(ports):
        raise RaftflError("the etcd peer, etcd client and Flower ports must differ: "
                          + ", ".join(f"{what} {port}" for port, what in ports))
    for port, what in ports:
        check_port_free(opts.ip, port, what)
    data = opts.dir
    spec = MemberSpec(name=opts.name, cluster=opts.cluster, data_dir=data, ip=opts.ip,
                      peer_port=opts.address.port, client_port=opts.etcd_client_port,
                      initial_cluster={opts.name: peer_url(opts.address)}, state="existing")
    stale = prepare_data_dir(spec)  # usable, and not another node's or cluster's
    try:
        probe = data / f".raftfl-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise RaftflError(f"cannot use data dir {data}: {exc.strerror or exc}") from exc
    return stale


def _peer_url(address: NodeAddress) -> str:
    """The member's peer URL as its etcd announces it: https with --certs."""
    return f"{'https' if tls.current() else 'http'}://{resolve(address.host)}:{address.port}"


def _is(member: Member, address: NodeAddress) -> bool:
    where = f"{resolve(address.host)}:{address.port}"
    return member.name == address.name or any(u.split("://", 1)[-1] == where
                                               for u in member.peer_urls)


def _voters(members: list[Member]) -> int:
    return sum(1 for m in members if not m.learner)


def add_learner(opts: Any, stale_data: bool, fresh: bool, emit: Callable[[str], None]
                ) -> tuple[Member, tuple[NodeAddress, ...]]:
    """Add the node (its `NodeOptions`) as a learner; returns the learner and every other
    member's address (the node's peers from now on).

    `stale_data`: the data dir holds etcd data, which `fresh` clears once the cluster has
    confirmed that this node is not a member (etcd refuses a member ID it removed)."""
    if not opts.peers:
        raise RaftflError("node join needs -n with at least one running node")
    store = Store([client_endpoint(p) for p in opts.peers], retry_for=10)
    try:
        members = list_members(store)
        mine = [m for m in members if _is(m, opts.address)]
        if mine and mine[0].name:
            raise RaftflError(f"{opts.name} is already a member "
                              f"({'learner' if mine[0].learner else 'voter'}); restart it with "
                              "`raftfl node start`")
        if stale_data and not fresh:
            raise RaftflError(f"data dir {opts.dir} holds etcd data of a removed member of "
                              f"{opts.name}: pass --fresh to clear it, or use another --data-dir")
        learners = [m for m in members if m.learner and m not in mine]
        if learners:
            raise RaftflError(f"{learners[0].label} is still a learner (etcd 3.4 allows one at "
                              "a time): wait until it is promoted, or remove it with "
                              "`raftfl node leave`")
        if stale_data:
            shutil.rmtree(opts.dir / "member-data")
            emit(f"cleared the etcd data of a removed member in {opts.dir} (--fresh)")
        if mine:  # an earlier join that never started its member: take it over
            emit(f"resuming the unfinished join of learner {mine[0].id:x}")
            member = mine[0]
        else:
            member = cluster_api.add_learner(store, _peer_url(opts.address))
            emit(f"added learner {member.id:x} for {opts.name} "
                 f"({_voters(members)} voters, {len(members) + 1} members)")
        return member, tuple(parse_address(m.name) for m in members
                             if m.name and m.id != member.id)
    finally:
        store.close()


def _member_up(endpoint: str, member_id: int) -> bool:
    """The member answers, as itself, and knows a leader: it has joined the Raft group."""
    try:
        st = Store.member_status(endpoint, STATUS_TIMEOUT_S)
    except Exception:  # noqa: BLE001 - not up (yet)
        return False
    return st.member_id == member_id and st.leader_id != 0


@dataclass
class JoinOutcome:
    came_up: float | None = None  # seconds after the add when the member served
    promoted: float | None = None  # ... when it became a voter
    rolled_back: str | None = None  # the line that says why the member was removed again


class JoinWatch:
    """Beside the joining node: promote its learner once caught up, or remove it if it
    does not come up within `deadline_s`.

    It changes nothing of the node's: it says its lines, and `on_rollback` tells the node a
    rolled-back join (a joining node stops; a running node that was asked to become a voter
    stops only its new member and stays an etcd client)."""

    def __init__(self, say: Callable[[str], None], member: Member, endpoint: str,
                 peers: list[str], deadline_s: float, max_voters: int,
                 on_rollback: Callable[[], None]) -> None:
        self.say = say
        self.member = member
        self.deadline_s = deadline_s
        self.max_voters = max_voters
        self.on_rollback = on_rollback
        self.endpoint = endpoint  # the joining member's client endpoint
        self.peers = peers  # the other members' client endpoints
        self.outcome = JoinOutcome()
        self.started = time.monotonic()
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="join", daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def _elapsed(self) -> float:
        return time.monotonic() - self.started

    def _run(self) -> None:
        store = Store(self.peers, retry_for=5)
        try:
            while not self._done.is_set():
                if self.outcome.came_up is None and _member_up(self.endpoint, self.member.id):
                    self.outcome.came_up = self._elapsed()
                    self.say(f"etcd learner {self.member.id:x} is up after "
                                   f"{self.outcome.came_up:.1f}s; catching up")
                if self.outcome.came_up is not None and self._settle(store):
                    return
                if self._elapsed() > self.deadline_s:
                    if self.outcome.came_up is None:
                        self.rollback(f"its etcd member did not come up within "
                                      f"{self.deadline_s:.0f}s")
                    else:
                        self.say(f"not in sync with the leader after {self.deadline_s:.0f}"
                                       "s: stays a learner (promote it by joining again later)")
                    return
                self._done.wait(POLL_S)
        except RaftflError as exc:
            self.say(f"join: {exc}")
        finally:
            store.close()

    def _settle(self, store: Store) -> bool:
        """Promote if the cluster is below its voter target; True once nothing is left."""
        try:
            voters = _voters(list_members(store))
            if not may_promote(voters, self.max_voters):
                self.say(f"stays a learner: the cluster has {voters} voters "
                               f"(--max-voters {self.max_voters})")
                return True
            cluster_api.promote(store, self.member.id)
        except (NotInSync, EtcdUnavailable):
            return False
        except RaftflError as exc:  # promoted meanwhile (by the aggregator): say so, once
            if "can only promote a learner" not in str(exc):
                raise
            voters -= 1
        self.outcome.promoted = self._elapsed()
        self.say(f"promoted to voter after {self.outcome.promoted:.1f}s "
                       f"({voters + 1} voters)")
        return True

    def rollback(self, why: str) -> None:
        """Remove the learner (once) and tell the node."""
        with self._lock:
            if self.outcome.rolled_back is not None or self.outcome.came_up is not None:
                return
            store = Store(self.peers, retry_for=10)
            try:
                cluster_api.remove(store, self.member.id)
                self.outcome.rolled_back = (f"join rolled back: {why}; learner "
                                            f"{self.member.id:x} removed, membership unchanged")
            except RaftflError as exc:
                self.outcome.rolled_back = f"join failed: {why}; and removing it failed: {exc}"
            finally:
                store.close()
        self.say(self.outcome.rolled_back)
        self.on_rollback()

    def finish(self, failed: bool) -> None:
        """The node's run ended. A member that never came up is removed again."""
        self._done.set()
        self._thread.join(timeout=10)
        if failed:
            self.rollback("the node stopped before its etcd member came up")


# -- leave --------------------------------------------------------------------------------
def _healthy(member: Member) -> bool:
    for url in member.client_urls:
        try:
            Store.member_status(url.split("//", 1)[-1], STATUS_TIMEOUT_S)
            return True
        except Exception:  # noqa: BLE001 - down or unreachable
            continue
    return False


def remove_member(leaving: NodeAddress, endpoints: list[str], cluster: str = "default",
                  max_voters: int = 5, handover_timeout: float = 60.0,
                  by: str = "", emit: Callable[[str], None] = print) -> str:
    """Check, hand the role over if `leaving` holds it, remove its member; say what happened."""
    store = Store(endpoints, retry_for=10)
    keys = Keys(cluster)
    try:
        members = list_members(store)
        match = [m for m in members if _is(m, leaving)]
        if not match:
            raise RaftflError(f"{leaving.name} is not a member of the etcd cluster")
        target = match[0]
        voters = [m for m in members if not m.learner]
        healthy = {m.id for m in voters if _healthy(m)}
        refusal = leave_refusal(leaving.name, len(voters), len(healthy), not target.learner,
                                target.id in healthy)
        if refusal:
            raise RaftflError(f"leave refused: {refusal}")
        role = store.get(keys.aggregator)
        holder = None if role is None else signers.read_role(store, keys, role)
        if isinstance(holder, RoleHolder) and holder.node == leaving.name:
            req = request_handover(store, keys, None, by or "node leave")
            emit(f"{leaving.name} is the aggregator (term {req.request.term}): handing over to "
                 f"{req.request.to}")
            done = wait_handover(store, keys, req, handover_timeout)
            if done is None:
                raise RaftflError(f"leave stopped: {leaving.name} did not hand the aggregator "
                                  f"role over within {handover_timeout:.0f}s; it is still a "
                                  "member (see raftfl status)")
            emit(f"{done.node} is the aggregator (term {done.term}) after {done.seconds:.1f}s")
        cluster_api.remove(store, target.id)
        store.delete(keys.member(leaving.name))
        kind = "learner" if target.learner else "voter"
        line = f"removed {leaving.name} ({kind} {target.id:x}); its node stops by itself"
        left = [m for m in members if m.id != target.id]
        if not target.learner:
            line += _replace_voter(store, left, max_voters, len(healthy - {target.id}), emit)
        return line
    finally:
        store.close()


def _replace_voter(store: Store, members: list[Member], max_voters: int, healthy: int,
                   emit: Callable[[str], None]) -> str:
    """A voter left: promote a caught-up learner in its place, when there is one."""
    voters = _voters(members)
    spare = tolerates(voters, healthy)
    survives = f"surviving {spare} more voter failure{'s' * (spare != 1)}"
    for learner in (m for m in members if m.learner and m.name):
        if not may_promote(voters, max_voters):
            break
        try:
            cluster_api.promote(store, learner.id)
        except NotInSync as exc:
            emit(f"learner {learner.name} not promoted: {exc}")
            continue
        return f"; promoted learner {learner.name} to voter ({voters + 1} voters)"
    return f"; {voters} voters remain, {survives}"
