"""Runs in etcd: submit one (id, spec and app package in one transaction), read, list, stop.

A run's id is allocated by creating its spec key (create-only, the first free id), in the same
transaction that stores its app package, so a run either exists with its app or not at all,
and two submitters never share an id. The package is stored as a content-addressed blob
(raftfl/etcd/checkpoint.py's layout) under `submissions/<id>/app/`, so reading it back
verifies its sha256. Both live under `submissions/`, which etcd RBAC lets operators write and
nodes only read (raftfl/etcd/rbac.py); a signed spec carries its operator's signature
(raftfl/signing.py), which every node checks before it unpacks the package. Specs are never
deleted, so ids are dense: run `n` exists for every n up to the newest.
"""

from __future__ import annotations

import hashlib

import grpc

from raftfl.core.errors import RaftflError
from raftfl.core.events import RunStopped
from raftfl.core.keys import Keys
from raftfl.core.records import MalformedRecord
from raftfl.core.specs import RunSpec
from raftfl.etcd import checkpoint
from raftfl.etcd.eventlog import EventLog
from raftfl.etcd.store import Store

MAX_ALLOCATION_ATTEMPTS = 100


class NoSuchRun(RaftflError):
    """A run id that has no spec."""


def ids(store: Store, keys: Keys, after: int = 0, revision: int | None = None) -> list[int]:
    """The run ids after `after`, in order (probing the dense ids one spec key at a time), as
    of `revision` if given: a read pinned to a revision is serializable (Store.range), which
    spares the Raft round a linearizable read costs at every HA cycle of every node."""
    def exists(key: str) -> bool:
        if revision is None:
            return store.get(key) is not None
        return bool(store.range(key, revision=revision, keys_only=True)[0])

    out: list[int] = []
    run_id = after + 1
    while exists(keys.run(run_id).spec):
        out.append(run_id)
        run_id += 1
    return out


def submit(store: Store, keys: Keys, spec: RunSpec, package: bytes,
           run_id: int | None = None) -> int | None:
    """Store a new run: at `run_id` if given (None if that run exists already), else at the
    first free id. Returns the id."""
    digest = hashlib.sha256(package).hexdigest()
    if spec.app_sha256 != digest:
        raise ValueError("the spec names another package than the one given")
    size = checkpoint.CHUNK_BYTES
    chunks = [package[i:i + size] for i in range(0, len(package), size)] or [b""]
    manifest = checkpoint.Manifest(digest, 0, len(package), len(chunks))
    if run_id is not None and store.get(keys.run(run_id).spec) is not None:
        return None  # read first: under RBAC a node may not even try a write there
    candidate = run_id or len(ids(store, keys)) + 1
    for _ in range(MAX_ALLOCATION_ATTEMPTS):
        rk = keys.run(candidate)
        app = rk.app
        ops = [store.tx.put(rk.spec, spec.to_json()),
               store.tx.put(app.checkpoint_meta(digest), manifest.to_json()),
               *(store.tx.put(app.checkpoint_chunk(digest, i), c) for i, c in enumerate(chunks))]
        try:
            ok, _ = store.call(lambda rk=rk, ops=ops: store.client.transaction(
                compare=[store.tx.create(rk.spec) == 0], success=ops, failure=[]))
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.PERMISSION_DENIED:  # type: ignore[attr-defined]
                raise
            raise RaftflError(f"etcd refused the run: permission denied to write "
                              f"{keys.submissions} (under RBAC runs are submitted with an "
                              "operator's certificate, not a node's)") from None
        if ok:
            return candidate
        if run_id is not None:
            return None
        candidate += 1  # taken meanwhile by another submitter
    raise RaftflError(f"no free run id after {MAX_ALLOCATION_ATTEMPTS} attempts")


def spec(store: Store, keys: Keys, run_id: int) -> RunSpec:
    """Run `run_id`'s spec; NoSuchRun if absent, RaftflError (one line) if malformed."""
    kv = store.get(keys.run(run_id).spec)
    if kv is None:
        raise NoSuchRun(f"run {run_id} does not exist in cluster {keys.cluster}")
    try:
        return RunSpec.from_json(kv.value)
    except MalformedRecord as exc:
        raise RaftflError(f"run {run_id}'s spec is unreadable: {exc}") from None


def package(store: Store, keys: Keys, run_id: int, sha: str) -> bytes:
    """Run `run_id`'s app package, verified against its sha256 (CorruptCheckpoint if not)."""
    return checkpoint.load(store, keys.run(run_id).app, sha)


def stop(store: Store, keys: Keys, run_id: int, by: str, reason: str = "") -> str:
    """Record `run_stopped` in the run's log, unless it is finished already; says what it did."""
    spec(store, keys, run_id)  # NoSuchRun, before writing anything
    log = EventLog(store, keys.run(run_id))
    state, _ = log.current()
    if state.completed is not None:
        return f"run {run_id} has completed already"
    if state.stopped is not None:
        return f"run {run_id} was stopped already (by {state.stopped.node})"
    log.append(RunStopped(node=by, reason=reason))
    return f"run {run_id} stopped"
