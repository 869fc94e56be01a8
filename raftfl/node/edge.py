"""Edge workers: nodes that train but are never aggregator candidates (Flower's SuperNodes).

Why they keep nothing in etcd: a full node's worker follows the role key through its own
etcd session (a lease, a member record, a watch). A thousand of those would make etcd's
work grow with the federation. An edge worker knows only some nodes' API URLs: it asks one
of them (`GET /node`, answered from that node's last HA snapshot, no etcd request) who holds
the aggregator role and for which term, and connects to that holder's fleet port. Its fleet
session heartbeats only while its ClientApp runs (a held poll is its liveness, fleet.py).

When the session ends (the aggregator died, stepped down or dropped it) the worker waits
`settle` (no cluster elects a successor sooner, so asking at once would only learn of the
server just lost), then asks, and the node API holds the ask until it sees a holder of a
later term, for up to `ask_hold` (`GET /node?after_term=T`). While the answer still names the
server it lost (and its port refuses the worker) it asks so again, for up to `recheck_for`.
A worker thus connects to the successor as soon as a node knows of it, and a thousand
workers ask about once each through an election, not every few tenths of a second (an API
that answers at once is asked every `recheck` instead, uniform in a range so that the asks
spread). A successor named before its fleet port is up is retried `connect_retries` times,
every `connect_retry` (a refused connection costs the node nothing but the kernel's reset).
An API that does not answer passes the question to the next one at once. Anything else
(no API answers, the role vacant, a long outage) waits a jittered, growing wait ("full
jitter": uniform in [0, min(cap, base * 2^k)]).

Its instructions are admitted without etcd: a term older than the newest this worker has
seen (from a node API or an instruction) is refused, as are arrays that are not the base
model the stamp names. A deposed aggregator cannot commit anyway (its writes are fenced);
this only saves the training.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from raftfl import tls
from raftfl.core.address import FLOWER_PORT_OFFSET
from raftfl.core.errors import RaftflError
from raftfl.node.worker import base_refusal

log = logging.getLogger(__name__)

MAX_API_BODY = 64 << 10


@dataclass(frozen=True)
class EdgeOptions:
    apis: tuple[str, ...]  # node API base URLs, e.g. http://10.0.0.1:5400
    poll_hold: float = 5.0  # the fleet's longest hold: one idle request per 5 s per worker
    backoff_base: float = 0.1  # growing waits (role vacant, no API answers) from [0, this]
    backoff_cap: float = 1.0
    settle: tuple[float, float] = (0.2, 0.5)  # after a lost session, before the first ask
    recheck: tuple[float, float] = (0.2, 0.4)  # between asks while the lost server is named
    recheck_for: float = 5.0  # then the growing backoff
    # While the lost server is named, a node API holds an ask until it sees a successor,
    # for up to this long: a worker learns of it at once, and asks about once a second.
    ask_hold: float = 1.0
    connect_retry: tuple[float, float] = (0.05, 0.2)  # a named holder whose port refused
    connect_retries: int = 5
    ask_timeout: float = 2.0
    # The silence the aggregator allows before dropping the worker, and its heartbeat while
    # the ClientApp runs: an edge device may be slow to answer, and a thousand of them must
    # not cost the aggregator two heartbeat connections a second each.
    liveness: float = 10.0
    heartbeat: float = 2.0
    # How long a request may go unanswered: a successor that a thousand workers register with
    # at once answers late, and a register given up on but taken is registered again, which
    # replaces the session (and loses what was already sent to it).
    silence_limit: float = 10.0

    def __post_init__(self) -> None:
        if not self.apis:
            raise RaftflError("an edge worker needs at least one node API URL")
        for url in self.apis:
            if not url.startswith(("http://", "https://")):
                raise RaftflError(f"node API URL must start with http:// or https://: {url!r}")


@dataclass(frozen=True)
class Holder:
    """The aggregator as a node API reported it."""

    node: str
    term: int
    fleet: str  # its fleet (Flower) address, host:port


def holder_from(body: Any) -> Holder | None:
    """The role holder in a node API's `GET /node` answer (None: vacant, or not a node's
    answer). Its fleet address is the one the API names, else the port rule's (raft + 200)."""
    if not isinstance(body, dict):
        return None
    node, term = body.get("holder"), body.get("term")
    if not isinstance(node, str) or type(term) is not int or term <= 0:
        return None
    fleet = body.get("holder_flower_address")
    if not isinstance(fleet, str) or not fleet:
        host, _, port = node.rpartition(":")
        if not host or not port.isdigit():
            return None
        fleet = f"{host}:{int(port) + FLOWER_PORT_OFFSET}"
    return Holder(node, term, fleet)


def backoff(attempt: int, opts: EdgeOptions, rng: random.Random) -> float:
    """Full jitter: uniform in [0, min(cap, base * 2^attempt)]."""
    return rng.uniform(0.0, min(opts.backoff_cap, opts.backoff_base * 2 ** min(attempt, 16)))


class Locator:
    """Asks the node APIs, in turn, who holds the aggregator role; an API that does not
    answer (its node died with the aggregator, or is down) passes the question to the next
    one at once, so a dead node costs a worker a refused connection, not a backoff."""

    def __init__(self, opts: EdgeOptions, rng: random.Random):
        self.opts = opts
        self._next = rng.randrange(len(opts.apis))  # workers start on different nodes
        identity = tls.current()
        # One opener for every ask (urlopen with a TLS context builds a new one each call).
        self._opener = urllib.request.build_opener(
            *([urllib.request.HTTPSHandler(context=identity.client_context())]
              if identity else []))

    def ask(self, after_term: int | None = None) -> Holder | None:
        """The holder as the first API that answers names it (None: vacant, or no API
        answered); with `after_term`, an API holds the ask up to `ask_hold` seconds until
        it sees a holder of a later term."""
        query, hold = "", 0.0
        if after_term is not None:
            hold = self.opts.ask_hold
            query = f"?after_term={after_term}&wait={hold:g}"
        for _ in self.opts.apis:
            url = self.opts.apis[self._next % len(self.opts.apis)].rstrip("/") + "/node" + query
            self._next += 1
            try:
                with self._opener.open(url, timeout=self.opts.ask_timeout + hold) as resp:
                    return holder_from(json.loads(resp.read(MAX_API_BODY)))
            except (OSError, ValueError) as exc:
                log.debug("edge: %s: %s", url, exc)
        return None


class EdgeWorker:
    """One edge worker's fleet session with whichever node holds the role, kept up by
    `run(stop)` until `stop` is set."""

    def __init__(self, node_id: int, name: str, handle: Callable[[str, bytes], bytes],
                 opts: EdgeOptions, rng: random.Random | None = None,
                 replied: Callable[[str, float], None] | None = None):
        self.node_id, self.name, self.handle, self.opts = node_id, name, handle, opts
        self.replied = replied
        self.rng = rng or random.Random()
        self.locator = Locator(opts, self.rng)
        self.term = 0  # the newest term seen
        self.sessions = 0  # fleet sessions started (registrations attempted)
        self.asks = 0  # node API asks
        self._client: Any = None

    def admit(self, stamp: Any, message: Any) -> str | None:
        """The ClientAppHost's `admit`: no etcd, only what this worker has seen."""
        if stamp.term < self.term:
            return f"term {stamp.term} is older than term {self.term}"
        self.term = stamp.term
        return base_refusal(stamp, message)

    def stop(self) -> None:
        client = self._client
        if client is not None:
            client.abort()

    def run(self, stop: threading.Event) -> None:
        attempt = 0
        lost: Holder | None = None  # the server of the session that ended last
        lost_at = 0.0
        after: int | None = None  # the lost server's term: the next ask waits for a successor
        while not stop.is_set():
            self.asks += 1
            asked = time.monotonic()
            holder = self.locator.ask(after)
            held, after = after is not None, None
            if holder is None or holder.term < self.term:
                attempt += 1
                stop.wait(backoff(attempt, self.opts, self.rng))
                continue
            self.term = holder.term
            tries = 1 if holder == lost else 1 + self.opts.connect_retries
            for _ in range(tries):
                began = time.monotonic()
                reached = self._session(holder, stop)
                if reached or stop.is_set():
                    break
                if tries > 1:  # a new holder's port may not be up yet: it will be soon
                    stop.wait(self.rng.uniform(*self.opts.connect_retry))
            if stop.is_set():
                break
            if reached:
                lost, lost_at = holder, time.monotonic()
                # A session that lasted is a fresh loss: the successor is asked for soon, and
                # the API holds the ask until it knows of one (or the holder is back).
                attempt = 0 if time.monotonic() - began > self.opts.backoff_cap else attempt + 1
                after = holder.term
                stop.wait(self.rng.uniform(*self.opts.settle))
            elif holder == lost and time.monotonic() - lost_at < self.opts.recheck_for:
                after = holder.term  # not elected yet: the next ask waits for a successor
                if held and time.monotonic() - asked < self.opts.recheck[0]:
                    stop.wait(self.rng.uniform(*self.opts.recheck))  # that API did not hold it
            else:
                attempt += 1
                stop.wait(backoff(attempt, self.opts, self.rng))

    def _session(self, holder: Holder, stop: threading.Event) -> bool:
        """One fleet session with `holder` until it ends; whether its port took the
        connection."""
        from raftfl.flower.fleet import FleetClient, FleetError

        client = self._client = FleetClient(holder.fleet, self.node_id, self.name,
                                            poll_hold=self.opts.poll_hold,
                                            heartbeat=self.opts.heartbeat,
                                            idle_heartbeat=False,
                                            silence_limit=self.opts.silence_limit,
                                            liveness=self.opts.liveness)
        if stop.is_set():
            return False
        self.sessions += 1
        try:
            client.run(self.handle, self.replied)
        except FleetError as exc:
            log.debug("edge %s: %s", self.name, str(exc).splitlines()[0][:160])
        finally:
            self._client = None
        return client.reached
