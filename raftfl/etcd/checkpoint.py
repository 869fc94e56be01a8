"""Global-model checkpoints in etcd: content-addressed by sha256, chunked, fenced, few kept.

A manifest with `holders` and no chunks names a model kept out of etcd, on those nodes (see
node/models.py); `load` then hands the manifest to a fetch function and verifies what comes
back the same way.

A checkpoint is written chunk by chunk (each <= 1 MiB, under etcd's request limit), then its
manifest; the manifest's presence means "complete". Reading verifies the sha256, so a
truncated or corrupted chunk is detected instead of trained on.

Saving a model whose keys exist already (the same model saved before, for example the one a
new aggregator falls back to after finding a newer checkpoint corrupt) compares every stored
key with what it would write and rewrites, fenced, any that differ. A re-save therefore
always leaves a checkpoint that loads, never a corrupt one that merely looks present.

Fenced writes and prunes (the aggregator's) go to the Raft leader's member
(raftfl/etcd/leader_route.py), and a prune deletes every checkpoint it drops in one fenced
transaction: a round's housekeeping costs Raft one entry.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

from raftfl.core.errors import FencedOut, RaftflError
from raftfl.core.keys import RunKeys
from raftfl.core.records import MalformedRecord, Record, require
from raftfl.etcd import leader_route
from raftfl.etcd.store import CreateResult, Fence, Store

log = logging.getLogger(__name__)

CHUNK_BYTES = 1024 * 1024
MAX_HOLDERS = 16
_SHA256 = re.compile(r"[0-9a-f]{64}")


class CorruptCheckpoint(RaftflError):
    """A stored checkpoint does not hash to its name, or is incomplete."""


@dataclass(frozen=True)
class Manifest(Record):
    KIND: ClassVar[str] = "checkpoint manifest"
    MAX_BYTES: ClassVar[int] = 4096

    sha256: str
    round: int
    size: int
    chunks: int  # 0: the bytes are not in etcd but on the `holders`
    holders: list[str] = field(default_factory=list)  # model services (host:port) holding it

    def check(self) -> None:
        require(_SHA256.fullmatch(self.sha256) is not None, f"sha256 {self.sha256[:16]!r} is not hex")
        require(self.round >= 0, f"round {self.round} is negative")
        require(self.size >= 0, f"size {self.size} is negative")
        if self.chunks == 0:
            require(0 < len(self.holders) <= MAX_HOLDERS, f"{len(self.holders)} holders")
            require(all(0 < len(h) <= 255 for h in self.holders), "a holder address is too long")
        else:
            require(1 <= self.chunks <= max(1, self.size),
                    f"{self.chunks} chunks for {self.size} bytes")

    def same_content(self, other: Manifest) -> bool:
        """Both describe the same bytes (the round a model was first saved in may differ)."""
        return (self.sha256, self.size, self.chunks) == (other.sha256, other.size, other.chunks)


def sha256(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()


def save(store: Store, keys: RunKeys, blob: bytes, round_: int, fence: Fence | None,
         chunk_bytes: int = CHUNK_BYTES) -> Manifest:
    """Write `blob`; keys already present are verified and repaired (see the module doc)."""
    if not 0 < chunk_bytes <= CHUNK_BYTES:
        raise ValueError(f"chunk size must be in (0, {CHUNK_BYTES}]")
    digest = sha256(blob)
    chunks = max(1, -(-len(blob) // chunk_bytes))
    manifest = Manifest(digest, round_, len(blob), chunks)
    for i in range(chunks):
        part = blob[i * chunk_bytes:(i + 1) * chunk_bytes]
        _write(store, keys.checkpoint_chunk(digest, i), part, fence, lambda stored, p=part: stored == p)
    _write(store, keys.checkpoint_meta(digest), manifest.to_json(), fence,
           lambda stored: _manifest_matches(stored, manifest))
    return manifest


def save_manifest(store: Store, keys: RunKeys, manifest: Manifest, fence: Fence | None) -> None:
    """Record a model held out of etcd; an older manifest of it gets the new holders."""
    _write(store, keys.checkpoint_meta(manifest.sha256), manifest.to_json(), fence,
           lambda stored: _manifest_matches(stored, manifest, holders=True))


def save_manifests(store: Store, keys: RunKeys, manifests: list[Manifest],
                   fence: Fence | None) -> None:
    """Record models held out of etcd (a round's model and its ServerApp's state): in one
    transaction, one Raft entry, when none of them is recorded yet; else each as
    `save_manifest` does."""
    unique = list({m.sha256: m for m in manifests}.values())  # etcd refuses a key twice
    result = leader_route.create_all(
        store, [(keys.checkpoint_meta(m.sha256), m.to_json()) for m in unique], fence) \
        if unique else CreateResult.CREATED
    if result is CreateResult.FENCED:
        raise FencedOut("checkpoint manifests rejected: the writer was deposed")
    if result is CreateResult.EXISTS:
        for manifest in unique:
            save_manifest(store, keys, manifest, fence)


def _manifest_matches(stored: bytes, manifest: Manifest, holders: bool = False) -> bool:
    try:
        old = Manifest.from_json(stored)
    except MalformedRecord:
        return False
    return old.same_content(manifest) and (not holders or old.holders == manifest.holders)


def _write(store: Store, key: str, value: bytes | str, fence: Fence | None,
           valid: Callable[[bytes], bool]) -> None:
    """Create `key`; if it exists, keep it when `valid`, else overwrite it (fenced). Fenced
    writes (the aggregator's) go to the Raft leader's member (leader_route.py)."""
    route = leader_route.route(store) if fence is not None else None
    result = route.create(key, value, fence) if route else store.create(key, value)
    if result is CreateResult.CREATED:
        return
    if result is CreateResult.EXISTS:
        stored = store.get(key)
        if stored is not None and valid(stored.value):
            return
        log.warning("checkpoint key %s holds other bytes than the model it names; rewriting it", key)
        if route is None or fence is None:
            store.put(key, value)
            return
        if route.put_fenced(key, value, fence):
            return
    raise FencedOut(f"checkpoint write {key} rejected: the writer was deposed")


def load(store: Store, keys: RunKeys, digest: str,
         fetch: Callable[[Manifest], bytes] | None = None) -> bytes:
    """Read and verify one checkpoint; raises CorruptCheckpoint on any mismatch. `fetch`
    gets the bytes of a model held out of etcd (CorruptCheckpoint when nobody has them)."""
    meta = store.get(keys.checkpoint_meta(digest))
    if meta is None:
        raise CorruptCheckpoint(f"checkpoint {digest[:12]} has no manifest")
    try:
        manifest = Manifest.from_json(meta.value)
    except MalformedRecord as exc:
        raise CorruptCheckpoint(f"checkpoint {digest[:12]} manifest unreadable: {exc}") from exc
    if manifest.chunks == 0:
        if fetch is None:
            raise CorruptCheckpoint(f"checkpoint {digest[:12]} is held by nodes, not in etcd")
        blob = fetch(manifest)
    else:
        kvs, _ = store.range(keys.checkpoints + digest + "/")
        parts = {kv.key.rsplit("/", 1)[-1]: kv.value for kv in kvs}
        try:
            blob = b"".join(parts[f"{i:06d}"] for i in range(manifest.chunks))
        except KeyError as exc:
            raise CorruptCheckpoint(f"checkpoint {digest[:12]} is missing chunk {exc}") from exc
    if len(blob) != manifest.size or sha256(blob) != digest:
        raise CorruptCheckpoint(f"checkpoint {digest[:12]} fails verification "
                                f"({len(blob)} of {manifest.size} bytes, hash mismatch)")
    return blob


def named(store: Store, keys: RunKeys, revision: int | None = None) -> set[str]:
    """The sha256 of every model this run's manifests name (committed, not pruned yet; as of
    `revision`, a serializable read where the member has applied it)."""
    kvs, _ = store.range(keys.checkpoints, keys_only=True, revision=revision)
    return {kv.key[len(keys.checkpoints):-len("/meta")] for kv in kvs if kv.key.endswith("/meta")}


def prune(store: Store, keys: RunKeys, keep: set[str], fence: Fence | None) -> list[str]:
    """Delete every checkpoint not in `keep` (fenced: only the aggregator prunes). One read
    and, fenced, one transaction: each deleted checkpoint's keys go as one prefix, so a round
    costs Raft one entry and no more reads, whatever it prunes."""
    kvs, _ = store.range(keys.checkpoints, keys_only=True)
    stored = {kv.key[len(keys.checkpoints):].split("/", 1)[0] for kv in kvs}
    doomed = sorted(stored - keep)
    prefixes = [keys.checkpoints + digest + "/" for digest in doomed]
    if fence is not None:
        return doomed if leader_route.route(store).delete_prefixes(prefixes, fence) else []
    for prefix in prefixes:
        store.delete_prefix(prefix)
    return doomed
