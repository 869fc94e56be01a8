"""Automatic replacement of lost etcd voters: the aggregator's executor, a client's upgrade.

The decision is pure (raftfl/core/replacement.py); this module carries it out.

- `Keeper`, the executor, runs on the node that holds the aggregator role (exactly one node
  at a time, and the one whose writes are fenced anyway), on its own thread: a dead voter's
  status call can take its whole deadline, and the HA loop must never wait for that. Each
  second it reads the member list, asks every member for its status (1 s deadline each),
  tracks how long each has been unhealthy, and makes the one change `next_step` names. Its
  upgrade request is fenced on its term and bound to its lease, so a deposed aggregator's
  request vanishes with it.
- `Upgrade` is the other side: a node running no etcd member that finds
  `membership/upgrade/<itself>` runs `node join`'s flow in place (learner, member started
  with initial-cluster-state existing on a fresh data dir, `JoinWatch` promotes it once in
  sync). If the member does not come up, the learner is removed again, exactly as for a
  failed join, but the node stays up as an etcd client. The member is started from the HA
  loop's thread: its death signal is tied to the thread that forks it. Once it serves, the
  node's etcd client prefers it.
- `Voters.tick()` is the HA cycle's one call into all of this (its `TEND_VOTERS` chore), and
  it never raises. It returns an upgraded node's new member once it serves; the node adopts
  it. Nothing here writes the node's state.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from raftfl.core.address import NodeAddress, parse_address
from raftfl.core.errors import RaftflError
from raftfl.core.replacement import UPGRADE_TIMEOUT_S, Kind, Request, Seat, Step, next_step
from raftfl.etcd import cluster_api
from raftfl.etcd.cluster_api import Member, NotInSync, list_members
from raftfl.etcd.context import read_members
from raftfl.etcd.member import EtcdMember, MemberSpec, find_etcd
from raftfl.etcd.membership import JoinWatch, add_learner, local_checks
from raftfl.etcd.store import KV, CreateResult, Store
from raftfl.net.address import client_endpoint, peer_url
from raftfl.net.origin import origin
from raftfl.node.election import Election
from raftfl.node.session import Session
from raftfl.node.shell import Shell

log = logging.getLogger(__name__)

PERIOD_S = 1.0  # the executor's cadence
STATUS_TIMEOUT_S = 1.0  # per member status call
CHECK_S = 1.0  # how often a node without a member looks for its upgrade request
REFRESH_S = 10.0  # how often a node adds new voters' endpoints to its etcd client
AVOID_S = 60.0  # a node whose upgrade failed is not asked again for this long


def _serving(member: Member) -> bool:
    """The member answers and knows a Raft leader (a cut-off voter answers, leaderless)."""
    for url in member.client_urls:
        try:
            if Store.member_status(url.split("//", 1)[-1], STATUS_TIMEOUT_S).leader_id != 0:
                return True
        except Exception:  # noqa: BLE001 - down or unreachable
            continue
    return False


def _endpoints(members: list[Member]) -> list[str]:
    """The voters' client endpoints (a learner refuses reads and writes)."""
    return [u.split("//", 1)[-1] for m in members if not m.learner for u in m.client_urls]


class Keeper:
    """The executor: one change per second at most, while this node holds `term`."""

    def __init__(self, shell: Shell, election: Election, session: Session,
                 active_run: Callable[[], int | None], term: int) -> None:
        self.shell, self.election, self.session, self.active_run = \
            shell, election, session, active_run
        self.term = term
        self.stopped = threading.Event()
        self.down_since: dict[int, float] = {}
        self.learner_since: dict[int, float] = {}
        self.asked: dict[str, float] = {}  # requests in flight, by node: when first seen
        self.avoid: dict[str, float] = {}  # node -> when its upgrade failed
        self.last_topic: Any = (Kind.NOTHING, None, None)  # a healthy start says nothing
        self.thread = threading.Thread(target=self._run, name="voters", daemon=True)

    def start(self) -> Keeper:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopped.set()

    @property
    def alive(self) -> bool:
        return self.thread.is_alive()

    def holding(self) -> bool:
        """Still the aggregator of `term`, and not leaving: a node that exits once no run is
        left (--exit-on-complete) lingers with its peers, who leave too; not replaced."""
        shell = self.shell
        return (self.election.term == self.term and not shell.stop.is_set()
                and not (shell.opts.exit_on_complete and self.active_run() is None)
                and not self.session.info.finished)

    def _run(self) -> None:
        origin("voters")
        store = Store(self.shell.store.endpoints, timeout=2.0, retry_for=3.0)
        try:
            while not self.stopped.wait(PERIOD_S) and self.holding():
                try:
                    self.once(store)
                except RaftflError as exc:
                    log.info("voter upkeep skipped: %s", exc)
                except Exception:  # noqa: BLE001 - never the node's end
                    log.exception("voter upkeep failed")
        finally:
            store.close()

    def observe(self, store: Store) -> tuple[list[Seat], list[str], Request | None] | None:
        """Members with their health, the live nodes without a member, the request in
        flight; None when there is nothing to keep (no such node, no learner, no request:
        a small all-voter federation pays one member list a second, no status calls)."""
        keys, now = self.shell.keys, time.monotonic()
        members = list_members(store)
        for endpoint in _endpoints(members):
            store.add_endpoint(endpoint)
        named = {m.name for m in members}
        # Serializable while no request is in flight: what this reads decides only which
        # step to try next, and every step goes through Raft (remove, promote: Raft's own
        # changes; ask: create-only, fenced by the term), so a member answering a little
        # behind costs at most a step tried a second late or refused. Linearizable, the two
        # reads were two ReadIndex rounds a second, two thirds of an idle federation's. A
        # request in flight is read linearizably: one that vanished is taken as failed
        # (`avoid`), which a stale answer must not decide.
        records = read_members(store, keys, serializable=True)
        clients = sorted(n for n, r in records.items() if n not in named and not r.finished)
        kvs, _ = store.range(keys.upgrades, keys_only=True, serializable=not self.asked)
        requests = sorted(kv.key[len(keys.upgrades):] for kv in kvs)
        if not clients and not requests and all(not m.learner for m in members):
            self.down_since.clear()
            return None
        seats = []
        for m in members:
            healthy = bool(m.name) and _serving(m)
            if healthy:
                self.down_since.pop(m.id, None)
            else:
                self.down_since.setdefault(m.id, now)
            if m.learner:
                self.learner_since.setdefault(m.id, now)
            else:
                self.learner_since.pop(m.id, None)
            seats.append(Seat(m.id, m.name, not m.learner, healthy,
                              now - self.down_since.get(m.id, now),
                              now - self.learner_since.get(m.id, now)))
        ids = {m.id for m in members}
        for seen in (self.down_since, self.learner_since):
            for gone in set(seen) - ids:
                del seen[gone]
        for asked in set(self.asked) - set(requests):  # gone: done, withdrawn, or it failed
            del self.asked[asked]
            if not any(s.name == asked and s.voter for s in seats):
                self.avoid[asked] = now
        for name in requests:
            self.asked.setdefault(name, now)
        request = Request(requests[0], now - self.asked[requests[0]]) if requests else None
        return seats, clients, request

    def once(self, store: Store) -> None:
        opts, now = self.shell.opts, time.monotonic()
        seen = self.observe(store)
        if seen is None:
            return
        seats, clients, request = seen
        avoid = {n for n, t in self.avoid.items() if now - t < AVOID_S}
        step = next_step(seats, clients, opts.max_voters, opts.voter_grace, request,
                         me=opts.name, avoid=avoid)
        if step.topic != self.last_topic:
            self.last_topic = step.topic
            if step.kind in (Kind.WAIT, Kind.NOTHING):
                self.shell.say(step.sentence)
        if self.holding():
            self.act(store, step, len([s for s in seats if s.voter]))

    def act(self, store: Store, step: Step, voters: int) -> None:
        shell, say = self.shell, self.shell.say
        if step.kind is Kind.REMOVE:
            assert step.member is not None
            say(step.sentence)
            try:
                cluster_api.remove(store, step.member)
            except RaftflError as exc:
                say(f"removing member {step.member:x} failed: {exc}")
        elif step.kind is Kind.PROMOTE:
            assert step.member is not None
            try:
                cluster_api.promote(store, step.member)
                say(step.sentence.replace("promoting", "promoted", 1))
            except NotInSync:
                log.info("learner %s not in sync yet", step.node)
            except RaftflError as exc:
                say(f"promoting learner {step.node} failed: {exc}")
        elif step.kind is Kind.ASK:
            assert step.node is not None
            lease, fence = self.session.lease, self.election.fence
            if lease is None or fence is None or fence.create_revision != self.term:
                return
            value = json.dumps({"node": step.node, "by": shell.name, "term": self.term,
                                "voters": voters, "ts": time.time()})
            if store.create(shell.keys.upgrade(step.node), value, lease=lease,
                            fence=fence) is CreateResult.CREATED:
                self.asked[step.node] = time.monotonic()
                say(f"node {step.node} asked to become a voter ({voters} of "
                          f"{shell.opts.max_voters} voters)")
        elif step.kind is Kind.CLEAR:
            assert step.node is not None
            if step.sentence.endswith("withdrawn"):
                say(step.sentence)
            store.delete(shell.keys.upgrade(step.node))


class Upgrade:
    """This node, asked to become a voter: the `node join` flow, in place."""

    def __init__(self, shell: Shell, request: KV) -> None:
        self.shell = shell
        self.request = request
        self.etcd: EtcdMember | None = None
        self.watch: JoinWatch | None = None
        self.done = False

    def start(self) -> None:
        """Add the learner and start its member (in the HA loop's thread)."""
        shell, say = self.shell, self.shell.say
        o = shell.opts
        try:
            stale = local_checks(o, flower=False)
            binary = find_etcd(o.etcd_bin)
            # a stale data dir is cleared once the cluster confirms we are not a member
            member, _ = add_learner(replace(o, peers=self._peers()), stale, True, say)
        except RaftflError as exc:
            say(f"cannot become a voter: {exc}")
            self._withdraw()
            self.done = True
            return
        # The member list as it is now, not as add_learner saw it: etcd refuses to start a
        # member whose initial cluster differs from the cluster's (a removal meanwhile).
        try:
            peers = self._peers()
        except RaftflError:
            peers = ()
        everyone = {o.name: o.address, **{p.name: p for p in peers}}
        spec = MemberSpec(name=o.name, cluster=o.cluster, data_dir=o.dir, ip=o.ip,
                          peer_port=o.address.port, client_port=o.etcd_client_port,
                          state="existing",
                          initial_cluster={n: peer_url(a) for n, a in sorted(everyone.items())})
        self.etcd = EtcdMember(spec, binary)
        self.watch = JoinWatch(say, member, spec.client_endpoint,
                               [client_endpoint(p) for p in peers], UPGRADE_TIMEOUT_S,
                               o.max_voters, on_rollback=shell.wake.set)
        try:
            self.etcd.start(threaded=True)
        except OSError as exc:
            self.watch.rollback(f"its etcd member did not start: {exc}")
            self._rolled_back()
            return
        say(f"etcd member started (pid {self.etcd.proc.pid if self.etcd.proc else '?'}, "
            f"data dir {o.dir})")
        self.watch.start()

    def _peers(self) -> tuple[NodeAddress, ...]:
        name = self.shell.name
        return tuple(parse_address(m.name) for m in list_members(self.shell.store)
                     if m.name and m.name != name)

    def poll(self, member: EtcdMember | None) -> EtcdMember | None:
        """From the HA cycle: a member that serves is handed to the node (returned; `member`
        is the node's own, if it has one), a rolled-back one is stopped."""
        etcd, watch = self.etcd, self.watch
        if etcd is None or watch is None:
            self.done = True
            return None
        out = watch.outcome
        if out.rolled_back is not None:
            self._rolled_back()
            return None
        if out.came_up is not None and member is None and etcd.alive():
            self.shell.store.add_endpoint(etcd.spec.client_endpoint, first=True)
            self.done = not watch.running
            return etcd  # from now on the node stops it, and dies if it exits
        if out.came_up is None and not etcd.alive():
            try:
                etcd.check_alive()
            except RaftflError as exc:
                watch.rollback(str(exc))
                self._rolled_back()
                return None
        if not watch.running:
            self.done = True
        return None

    def _rolled_back(self) -> None:
        """The learner was removed again: stop the member, stay an etcd client."""
        if self.etcd is not None:
            self.etcd.stop()
        self._withdraw()
        self.done = True

    def _withdraw(self) -> None:
        """Delete our request, so the executor knows at once that this node failed."""
        try:
            self.shell.store.delete_if_unchanged(self.request.key, self.request.mod_revision)
        except RaftflError:
            pass


class Voters:
    """The HA cycle's entry point: run the executor while holding the role; as a node
    without a member, answer an upgrade request; keep the etcd client's endpoints current."""

    def __init__(self, shell: Shell, election: Election, session: Session,
                 active_run: Callable[[], int | None]) -> None:
        self.shell, self.election, self.session, self.active_run = \
            shell, election, session, active_run
        self.keeper: Keeper | None = None
        self.upgrade: Upgrade | None = None
        self._acted: int | None = None  # create revision of the last request acted on
        self._next_check = 0.0
        self._next_refresh = time.monotonic() + REFRESH_S

    def tick(self, member: EtcdMember | None) -> EtcdMember | None:
        """One cycle's upkeep; `member` is the node's etcd member, if it runs one. Returns
        a new member for the node to adopt (an upgrade that came up)."""
        try:
            self._keep()
            return self._answer(member)
        except Exception:  # noqa: BLE001 - membership upkeep never fails a cycle
            log.exception("voter upkeep failed")
            return None

    def _keep(self) -> None:
        term = self.election.term
        wanted = term is not None and self.shell.opts.etcd_endpoints is None
        if self.keeper is not None and (not wanted or self.keeper.term != term
                                        or not self.keeper.alive):
            self.keeper.stop()
            self.keeper = None
        if wanted and self.keeper is None:
            assert term is not None
            keeper = Keeper(self.shell, self.election, self.session, self.active_run, term)
            if keeper.holding():
                self.keeper = keeper.start()

    def _answer(self, member: EtcdMember | None) -> EtcdMember | None:
        shell, now = self.shell, time.monotonic()
        adopted = None
        if self.upgrade is not None:
            adopted = self.upgrade.poll(member)
            member = member or adopted
            if self.upgrade.done:
                self.upgrade = None
        if now >= self._next_refresh:
            self._next_refresh = now + REFRESH_S
            for endpoint in _endpoints(list_members(shell.store)):
                if shell.store.add_endpoint(endpoint):
                    log.info("etcd client: added endpoint %s", endpoint)
        if member is not None or shell.opts.etcd_endpoints or self.upgrade is not None \
                or now < self._next_check:
            return adopted
        self._next_check = now + CHECK_S
        # Every etcd client polls this each CHECK_S: from its member's copy (no ReadIndex, a
        # Raft round at 16 nodes' 11 clients), and exactly only once something new is there.
        # A request seen late only starts the upgrade one poll later.
        key = shell.keys.upgrade(shell.name)
        seen = shell.store.get(key, serializable=True)
        if seen is None or seen.create_revision == self._acted:
            return adopted
        kv = shell.store.get(key)
        if kv is None or kv.create_revision == self._acted:
            return adopted
        self._acted = kv.create_revision
        try:
            by = json.loads(kv.value).get("by", "?")
        except (ValueError, AttributeError):
            by = "?"
        shell.say(f"asked by {by} to become a voter: joining the etcd cluster as a learner")
        self.upgrade = Upgrade(shell, kv)
        self.upgrade.start()
        return adopted
