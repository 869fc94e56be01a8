"""Models out of the Raft log: nodes keep checkpoints as files and hand them to each other.

Why: a checkpoint written into etcd crosses Raft to every voter and stays in etcd's MVCC
history until compaction. Measured with every checkpoint in etcd: 3.3 model copies of Raft
traffic per round at 3 nodes, 7.4 at 8; a 100 MB model fills etcd's 2 GiB quota within the
hour. So etcd keeps only the manifest (hash, size, which nodes hold the bytes) and the bytes
live in `<data dir>/models/<sha256>` on their holders. Each node serves its files over a
small HTTP service (`ModelServer`, TLS with the cluster's certificates when the node has
them); every transfer is verified against the sha256 it is named by, so a holder, or anyone
who can reach its port, cannot hand over other bytes than the manifest names.

`Models.save` is what a commit waits for: the aggregator writes its own file, pushes the bytes
to live peers (best-ranked first: the likely next aggregator then resumes from its own disk)
until `replicas` nodes hold them, and only then writes the manifest, fenced. With fewer live
nodes than `replicas` it commits with all there are and says so: a federation down to two
nodes still trains. `Models.load` reads the own file or fetches from any holder; when no live
holder has a verified copy the load fails like a corrupt checkpoint, and the new aggregator's
existing fallback rule takes the older round and redoes the lost ones.

Models of at most `inline_max` bytes stay in etcd (the chunked path in etcd/checkpoint.py).

Anyone who reaches the service can PUT bytes that hash to their name, so what a node keeps
is decided by etcd, not by uploads: a model a manifest names is never deleted to make room
(`ModelFiles`), an upload is bounded (`MAX_MODEL_BYTES`, refused before it is read) and
hashed as it streams to a temporary file that is discarded unless it matches its name.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import ssl
import tempfile
import threading
from collections import deque
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from raftfl import tls
from raftfl.core.errors import RaftflError
from raftfl.core.keys import Keys, RunKeys
from raftfl.etcd import checkpoint, run_store
from raftfl.etcd.checkpoint import CorruptCheckpoint, Manifest
from raftfl.etcd.store import Fence, Store
from raftfl.files import make_private_dir, write_atomic
from raftfl.net.http import NodeHttpServer
from raftfl.net.origin import origin

log = logging.getLogger(__name__)

DEFAULT_REPLICAS = 2
KEEP_FILES = 4  # per node: models no manifest names (a push before its commit, or junk) kept
MAX_MODEL_BYTES = 1 << 30  # a bigger PUT is refused (413) before its body is read
READ_BYTES = 1 << 20  # an upload streams to disk in pieces of this size
CONNECT_TIMEOUT_S = 2.0  # a holder cut off by a partition drops SYNs: don't wait long
STALL_TIMEOUT_S = 10.0  # per socket operation once connected (a frozen holder), not per transfer
_SHA = re.compile(r"/models/([0-9a-f]{64})")


def committed_models(store: Store, keys: Keys, revision: int | None = None) -> set[str]:
    """Every model a manifest of any of the cluster's runs names (what `ModelFiles` keeps).

    The run ids are read as of `revision` (a revision the caller has observed; else the
    cluster's current one, one linearizable read): pinned, the reads are serializable, and
    a member that has not applied it answers linearizably instead (Store.range), so a
    member far behind (restarted, or a new learner) can never hide a run and with it the
    models retention must keep. A run created after `revision` is missed; its models are
    the newest files, which retention keeps anyway. Probing the ids linearizably cost one
    ReadIndex per run, plus one, at every model a node stored."""
    revision = revision or store.revision()
    ids = run_store.ids(store, keys, revision=revision)
    return set().union(*(checkpoint.named(store, keys.run(i), revision) for i in ids))


class ModelFiles:
    """Content-addressed model files in one directory; a file that fails its hash is removed.

    Retention never deletes a committed model: a file is kept while a manifest in etcd names
    it (`committed()`, e.g. `committed_models(store, keys)` above) or while it is one of the
    last `keep` models this node saved or loaded itself. Of the other files (a push whose
    manifest is not written yet, or junk) the `keep` newest stay. While `committed()` fails
    (etcd out of reach), nothing is deleted. Without `committed`, no model counts as committed."""

    def __init__(self, root: Path, keep: int = KEEP_FILES,
                 committed: Callable[[], set[str]] | None = None):
        self.root = root  # created by the first put: a node that fails to start claims nothing
        self.keep = keep
        self.committed = committed or set  # `set`: no model is committed
        self._pinned: deque[str] = deque(maxlen=keep)  # saved or loaded here, newest last
        self._lock = threading.Lock()

    def put(self, blob: bytes, sha: str | None = None) -> str:
        """Keep a model this node saved or loaded itself (pinned: see the class doc)."""
        sha = sha or checkpoint.sha256(blob)
        self.pin(sha)
        make_private_dir(self.root)
        path = self.root / sha
        if path.is_file() and path.stat().st_size == len(blob):
            os.utime(path)  # newest again: pruning goes by age
        else:
            write_atomic(path, blob, mode=0o600)
        self.prune()
        return sha

    def pin(self, sha: str) -> None:
        if sha not in self._pinned:
            self._pinned.append(sha)

    def receive(self, sha: str, size: int, read: Callable[[int], bytes]) -> bool:
        """Store `size` bytes from `read` as `sha`, hashed as they stream to a temporary
        file; False, and nothing kept, when they end early or do not hash to `sha`."""
        make_private_dir(self.root)
        fd, name = tempfile.mkstemp(dir=self.root, prefix=f".{sha}.", suffix=".tmp")
        tmp = Path(name)
        digest = hashlib.sha256()
        try:
            with os.fdopen(fd, "wb") as fh:
                while size:
                    piece = read(min(size, READ_BYTES))
                    if not piece:
                        return False
                    digest.update(piece)
                    fh.write(piece)
                    size -= len(piece)
                if digest.hexdigest() != sha:
                    return False
                os.fchmod(fh.fileno(), 0o600)
                fh.flush()
                os.fsync(fh.fileno())
            os.rename(tmp, self.root / sha)
            directory = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(directory)  # the name too survives a crash once the pusher has its 201
            finally:
                os.close(directory)
            return True
        finally:
            tmp.unlink(missing_ok=True)

    def get(self, sha: str) -> bytes | None:
        path = self.root / sha
        try:
            blob = path.read_bytes()
        except OSError:
            return None
        if checkpoint.sha256(blob) != sha:
            log.warning("model file %s fails its hash; removed", path)
            path.unlink(missing_ok=True)
            return None
        return blob

    def prune(self) -> None:
        """Delete the files retention does not keep (see the class doc)."""
        with self._lock:
            files = []
            for path in self.root.glob("[0-9a-f]" * 64):
                try:
                    files.append((path.stat().st_mtime, path))
                except FileNotFoundError:
                    continue  # removed meanwhile (a rotten file)
            if len(files) <= self.keep:
                return
            try:
                protected = set(self.committed()) | set(self._pinned)
            except Exception as exc:  # noqa: BLE001 - etcd unreachable: delete nothing
                log.warning("model files: no file deleted, the committed models are unknown: %s",
                            exc)
                return
            others = sorted(((t, p) for t, p in files if p.name not in protected), reverse=True)
            for _, old in others[self.keep:]:
                old.unlink(missing_ok=True)


# The CN of a PUT's certificate -> why it may not store models, or None when it may.
MayPut = Callable[[str], str | None]


class ModelServer(NodeHttpServer):
    """`GET /models/<sha>` serves a file; `PUT /models/<sha>` stores a body of at most
    `max_bytes` that hashes to it, from whom `may_put` allows (over TLS: the current
    aggregator only, see `Node._may_put`)."""

    def __init__(self, host: str, port: int, files: ModelFiles, max_bytes: int = MAX_MODEL_BYTES,
                 may_put: MayPut | None = None):
        self.files = files
        self.max_bytes = max_bytes
        self.may_put = may_put
        super().__init__(host, port, _Handler, "model service", "--models-port")


class _Handler(BaseHTTPRequestHandler):
    server: ModelServer
    protocol_version = "HTTP/1.0"
    timeout = STALL_TIMEOUT_S

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        log.debug("model service: " + format, *args)

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        match = _SHA.fullmatch(self.path)
        blob = self.server.files.get(match.group(1)) if match else None
        if blob is None:
            self._send(404, b"no such model")
        else:
            self._send(200, blob)

    def do_PUT(self) -> None:  # noqa: N802
        """The length and name are checked before any byte of the body is read."""
        origin("run")  # a peer replicating a round's model; may_put and prune read etcd
        match = _SHA.fullmatch(self.path)
        try:
            size = int(self.headers.get("Content-Length", ""))
        except ValueError:
            size = -1
        refusal = self._writer_refused()
        if refusal:
            self._refuse(403, refusal)
        elif match is None or size < 0:
            self._refuse(400, "PUT /models/<sha256> with a Content-Length")
        elif size > self.server.max_bytes:
            self._refuse(413, f"{size} bytes exceed the limit of {self.server.max_bytes}")
        elif not self.server.files.receive(match.group(1), size, self.rfile.read):
            self._refuse(400, "the body does not hash to its name")
        else:
            self._send(201)
            self.server.files.prune()  # after the answer: the pusher never waits for etcd

    def _writer_refused(self) -> str | None:
        if self.server.may_put is None or not isinstance(self.connection, ssl.SSLSocket):
            return None
        return self.server.may_put(tls.peer_common_name(self.connection.getpeercert()))

    def _refuse(self, status: int, reason: str) -> None:
        log.warning("model service: %s %s from %s refused: HTTP %d %s", self.command,
                    self.path[:90], self.client_address[0], status, reason)
        self._send(status, reason.encode())

    def _send(self, status: int, body: bytes = b"") -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _request(method: str, address: str, sha: str, body: bytes | None = None) -> tuple[int, bytes]:
    host, _, port = address.rpartition(":")
    identity = tls.current()
    conn = (http.client.HTTPSConnection(host, int(port), timeout=CONNECT_TIMEOUT_S,
                                        context=identity.client_context())
            if identity else http.client.HTTPConnection(host, int(port),
                                                        timeout=CONNECT_TIMEOUT_S))
    try:
        conn.connect()
        assert conn.sock is not None
        conn.sock.settimeout(STALL_TIMEOUT_S)
        conn.request(method, f"/models/{sha}", body=body)
        response = conn.getresponse()
        return response.status, response.read()
    except (OSError, http.client.HTTPException, ValueError) as exc:
        raise RaftflError(f"model service {address}: {exc or type(exc).__name__}") from exc
    finally:
        conn.close()


def push(address: str, sha: str, blob: bytes) -> None:
    status, detail = _request("PUT", address, sha, blob)
    if status != 201:
        raise RaftflError(f"model service {address} refused {sha[:12]}: HTTP {status} "
                          f"{detail[:200].decode(errors='replace')}")


def fetch(address: str, sha: str) -> bytes:
    status, blob = _request("GET", address, sha)
    if status != 200:
        raise RaftflError(f"model service {address} has no {sha[:12]} (HTTP {status})")
    if checkpoint.sha256(blob) != sha:
        raise RaftflError(f"model service {address} sent bytes that do not hash to {sha[:12]}")
    return blob


class Models:
    """Where this node's checkpoints go and come from (see the module doc)."""

    def __init__(self, files: ModelFiles, address: str, peers: Callable[[], list[str]],
                 replicas: int = DEFAULT_REPLICAS, inline_max: int = 0,
                 say: Callable[[str], None] = lambda line: None):
        self.files = files
        self.address = address  # our own model service
        self.peers = peers  # live peers' model services, preferred first
        self.replicas = replicas
        self.inline_max = inline_max
        self.say = say

    def save(self, store: Store, keys: RunKeys, blob: bytes, round_: int,
             fence: Fence | None) -> Manifest:
        return self.save_all(store, keys, [blob], round_, fence)[0]

    def save_all(self, store: Store, keys: RunKeys, blobs: list[bytes], round_: int,
                 fence: Fence | None) -> list[Manifest]:
        """Each blob saved; the manifests of those kept out of etcd recorded in one
        transaction (a round's model and state: one Raft entry)."""
        saved = [checkpoint.save(store, keys, blob, round_, fence)
                 if len(blob) <= self.inline_max else self._replicate(blob, round_)
                 for blob in blobs]
        checkpoint.save_manifests(store, keys, [m for m in saved if m.chunks == 0], fence)
        return saved

    def _replicate(self, blob: bytes, round_: int) -> Manifest:
        """The blob in our model service and on `replicas` - 1 peers: its manifest, unsaved."""
        sha = self.files.put(blob)
        holders = [self.address]
        for peer in self.peers():
            if len(holders) >= self.replicas:
                break
            try:
                push(peer, sha, blob)
                holders.append(peer)
            except RaftflError as exc:
                log.warning("round %d model not replicated to %s: %s", round_, peer, exc)
        if len(holders) < self.replicas:
            self.say(f"round {round_} model held by {len(holders)} of {self.replicas} "
                     "replicas: no further live node took it")
        return Manifest(sha, round_, len(blob), 0, holders)

    def load(self, store: Store, keys: RunKeys, sha: str) -> bytes:
        return checkpoint.load(store, keys, sha, fetch=self._fetch)

    def _fetch(self, manifest: Manifest) -> bytes:
        blob = self.files.get(manifest.sha256)
        if blob is not None:
            self.files.pin(manifest.sha256)
            return blob
        failures = []
        # The first holder wrote it: the aggregator, which after a failover is the one most
        # likely dead, frozen or cut off. Ask it last.
        order = manifest.holders[1:] + manifest.holders[:1]
        for holder in (h for h in order if h != self.address):
            try:
                blob = fetch(holder, manifest.sha256)
            except RaftflError as exc:
                failures.append(str(exc))
                continue
            self.files.put(blob, manifest.sha256)
            return blob
        raise CorruptCheckpoint(f"checkpoint {manifest.sha256[:12]}: no holder has it "
                                f"({'; '.join(failures) or 'no other holder'})")
