"""What the API's handlers share: the node's snapshot, and an etcd client of the API's own.

The client is opened on first use from the endpoints the node's snapshot names (the node
itself is never asked: it is below the API), with short retries, so a request on a cluster
without a quorum fails in seconds with one line instead of hanging.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from raftfl.core.errors import RaftflError
from raftfl.core.keys import Keys
from raftfl.core.specs import RunSpec
from raftfl.core.status import NodeStatus, Published
from raftfl.etcd import run_store
from raftfl.etcd.store import Store
from raftfl.ops.ledger import Ledger
from raftfl.ops.stream import EventStream

ETCD_TIMEOUT_S = 2.0  # one etcd call
ETCD_RETRY_S = 5.0  # one request's etcd retries, in all
MAX_STREAMS = 8  # concurrent event streams (each holds an etcd watch)
MAX_SPECS = 256  # run specs kept


class NotReady(RaftflError):
    """The node has not cycled yet: no snapshot, no etcd endpoints to ask."""


class Busy(RaftflError):
    """Every event stream slot is taken."""


class OpsContext:
    def __init__(self, status: Published, name: str, cluster: str,
                 secured: bool, clock: Callable[[], float] = time.monotonic):
        self.status = status  # the node's latest snapshot; reading it is the API's one access
        self.name, self.cluster, self.secured, self.clock = name, cluster, secured, clock
        self.keys = Keys(cluster)
        self._streams: set[EventStream] = set()  # open ones, closed when the server stops
        self._open = 0  # slots taken (a stream takes its slot before it reads the log)
        self._store: Store | None = None
        self._ledger: Ledger | None = None
        self._specs: dict[int, RunSpec] = {}  # a submitted run's spec never changes
        self._lock = threading.Lock()

    def snapshot(self) -> NodeStatus:
        st = self.status()
        if st is None:
            raise NotReady(f"{self.name} is starting: its HA loop has not cycled yet")
        return st

    def successor_of(self, term: int, timeout: float) -> NodeStatus | None:
        """The snapshot once it names a holder of a term after `term`, or the latest one
        after `timeout` seconds."""
        return self.status.wait_for(
            lambda st: st is not None and st.holder is not None and (st.term or 0) > term,
            timeout)

    def endpoints(self) -> list[str]:
        return list(self.snapshot().endpoints)

    def store(self) -> Store:
        with self._lock:
            if self._store is None:
                self._store = Store(self.endpoints(), timeout=ETCD_TIMEOUT_S,
                                    retry_for=ETCD_RETRY_S)
            return self._store

    def run_spec(self, run: int) -> RunSpec:
        """Run `run`'s spec, read once (a thousand edge workers ask it once each)."""
        spec = self._specs.get(run)
        if spec is None:
            spec = run_store.spec(self.store(), self.keys, run)
            with self._lock:
                if len(self._specs) >= MAX_SPECS:
                    self._specs.clear()
                self._specs[run] = spec
        return spec

    def ledger(self) -> Ledger:
        store = self.store()
        with self._lock:
            if self._ledger is None:
                self._ledger = Ledger(store, self.keys, self.snapshot().lease_ttl)
            return self._ledger

    def stream(self, run: int, after: int) -> EventStream:
        """Run `run`'s events after `after`, as a stream holding one of `MAX_STREAMS` slots
        until it is closed (a stream that fails to open frees its slot itself)."""
        store = self.store()
        with self._lock:
            if self._open >= MAX_STREAMS:
                raise Busy(f"{MAX_STREAMS} event streams are open on this node; retry shortly")
            self._open += 1
        stream = EventStream(store, self.keys.run(run), after, self._release)
        with self._lock:
            self._streams.add(stream)
        return stream

    def _release(self, stream: EventStream) -> None:
        with self._lock:
            self._open -= 1
            self._streams.discard(stream)

    def close(self) -> None:
        with self._lock:
            streams = list(self._streams)
        for stream in streams:
            stream.close()
        with self._lock:
            if self._store is not None:
                self._store.close()
            self._store = self._ledger = None
