"""Global-model checkpoints in etcd: content-addressed by sha256, chunked, fenced, few kept.

A checkpoint is written chunk by chunk (each <= 1 MiB, under etcd's request limit), then its
manifest; the manifest's presence means "complete". Reading verifies the sha256, so a
truncated or corrupted chunk is detected instead of trained on.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from raftfl.core.errors import FencedOut, RaftflError
from raftfl.core.keys import Keys
from raftfl.etcd.store import CreateResult, Fence, Store

CHUNK_BYTES = 1024 * 1024


class CorruptCheckpoint(RaftflError):
    """A stored checkpoint does not hash to its name, or is incomplete."""


@dataclass(frozen=True)
class Manifest:
    sha256: str
    round: int
    size: int
    chunks: int


def sha256(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()


def save(store: Store, keys: Keys, blob: bytes, round_: int, fence: Fence | None,
         chunk_bytes: int = CHUNK_BYTES) -> Manifest:
    """Write `blob` (idempotent: an existing complete checkpoint of the same hash is kept)."""
    if not 0 < chunk_bytes <= CHUNK_BYTES:
        raise ValueError(f"chunk size must be in (0, {CHUNK_BYTES}]")
    digest = sha256(blob)
    chunks = max(1, -(-len(blob) // chunk_bytes))
    manifest = Manifest(digest, round_, len(blob), chunks)
    for i in range(chunks):
        part = blob[i * chunk_bytes:(i + 1) * chunk_bytes]
        _create(store, keys.checkpoint_chunk(digest, i), part, fence)
    _create(store, keys.checkpoint_meta(digest), json.dumps(manifest.__dict__), fence)
    return manifest


def _create(store: Store, key: str, value: bytes | str, fence: Fence | None) -> None:
    if store.create(key, value, fence=fence) is CreateResult.FENCED:
        raise FencedOut(f"checkpoint write {key} rejected: the writer was deposed")


def load(store: Store, keys: Keys, digest: str) -> bytes:
    """Read and verify one checkpoint; raises CorruptCheckpoint on any mismatch."""
    meta = store.get(keys.checkpoint_meta(digest))
    if meta is None:
        raise CorruptCheckpoint(f"checkpoint {digest[:12]} has no manifest")
    try:
        manifest = Manifest(**json.loads(meta.value))
    except (ValueError, TypeError) as exc:
        raise CorruptCheckpoint(f"checkpoint {digest[:12]} manifest unreadable: {exc}") from exc
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


def prune(store: Store, keys: Keys, keep: set[str], fence: Fence | None) -> list[str]:
    """Delete every checkpoint not in `keep` (fenced: only the aggregator prunes)."""
    kvs, _ = store.range(keys.checkpoints, keys_only=True)
    stored = {kv.key[len(keys.checkpoints):].split("/", 1)[0] for kv in kvs}
    removed = []
    for digest in sorted(stored - keep):
        for kv in store.range(keys.checkpoints + digest + "/", keys_only=True)[0]:
            if not store.delete(kv.key, fence=fence):
                return removed
        removed.append(digest)
    return removed
