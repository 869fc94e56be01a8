"""Which part of a node makes each etcd request: a label per thread, and a count per label.

Why: etcd's own counters (`grpc_server_handled_total`) add up every client's requests, and
there a round's requests cannot be told from the timers' (HA cycles, keepalives, probes):
subtracting an idle rate was an estimate, off by 15% once rounds grew long. Here each thread
names its origin once, where it starts (`origin("run")`), and the etcd client counts every
request it sends under the calling thread's origin (raftfl/etcd/counting.py). A thread that
names none counts as `other`. Counting is one labelled `Counter.inc` (the child's own lock,
no shared one), so the hot path stays cheap.
"""

from __future__ import annotations

import threading

from prometheus_client import Counter

# run: the rounds (the ServerApp and its round loop, a full node's ClientApp side, the model
# service's replication); wake: an HA cycle a watch woke (a change in etcd: a round's events,
# the role, records); cycle: an HA cycle its timer started; voters: the aggregator's voter upkeep; watch:
# the watch threads; lease: keepalives; probe: latency samples and member records; api: the
# HTTP API's handlers; other: start-up, shutdown, anything unlabelled.
ORIGINS = ("run", "wake", "cycle", "voters", "watch", "lease", "probe", "api", "other")
# read: a linearizable Range (a ReadIndex round through Raft: a heartbeat to every voter);
# local_read: a serializable Range (the member's own copy, no Raft traffic); write: Put,
# DeleteRange, Txn, Compact; lease: grants, keepalives, revokes;
# watch: a watch's creation (a watch is a stream: what it delivers is not counted);
# cluster: members, status, alarms, auth, defragmentation, leadership moves.
KINDS = ("read", "local_read", "write", "lease", "watch", "cluster")
DEFAULT = "other"

NAME = "raftfl_etcd_requests"
HELP = (f"etcd requests this node sent, by the part of the node that asked (origin: "
        f"{', '.join(ORIGINS)}) and kind ({', '.join(KINDS)}; read: linearizable, local_read: "
        "serializable, watch: creations)")
REQUESTS = Counter(NAME, HELP, ["origin", "kind"], registry=None)

_local = threading.local()
_children: dict[tuple[str, str], Counter] = {}


def origin(name: str) -> None:
    """Label the calling thread's etcd requests `name` from now on (one of ORIGINS)."""
    if name not in ORIGINS:
        raise ValueError(f"unknown origin {name!r}: one of {', '.join(ORIGINS)}")
    _local.origin = name


def current() -> str:
    """The calling thread's origin."""
    return getattr(_local, "origin", DEFAULT)


def count(kind: str) -> None:
    """One etcd request of `kind` (one of KINDS), made by the calling thread."""
    key = (current(), kind)
    child = _children.get(key)
    if child is None:  # labels() hands every caller the same child: a race binds it once
        if kind not in KINDS:
            raise ValueError(f"unknown request kind {kind!r}: one of {', '.join(KINDS)}")
        child = _children.setdefault(key, REQUESTS.labels(*key))
    child.inc()


def counts() -> dict[tuple[str, str], int]:
    """(origin, kind) -> requests so far in this process (only the pairs that occurred)."""
    return {(s.labels["origin"], s.labels["kind"]): int(s.value)
            for metric in REQUESTS.collect() for s in metric.samples
            if s.name.endswith("_total")}
