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
"""

from __future__ import annotations

import http.client
import logging
import os
import re
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from raftfl import tls
from raftfl.core.errors import RaftflError
from raftfl.core.keys import RunKeys
from raftfl.etcd import checkpoint
from raftfl.etcd.checkpoint import CorruptCheckpoint, Manifest
from raftfl.etcd.store import Fence, Store
from raftfl.files import make_private_dir, write_atomic
from raftfl.net.http import NodeHttpServer

log = logging.getLogger(__name__)

DEFAULT_REPLICAS = 2
KEEP_FILES = 4  # per node: the checkpoints the aggregator keeps (3) and the newest
MAX_MODEL_BYTES = 1 << 30
CONNECT_TIMEOUT_S = 2.0  # a holder cut off by a partition drops SYNs: don't wait long
STALL_TIMEOUT_S = 10.0  # per socket operation once connected (a frozen holder), not per transfer
_SHA = re.compile(r"/models/([0-9a-f]{64})")


class ModelFiles:
    """Content-addressed model files in one directory; a file that fails its hash is removed."""

    def __init__(self, root: Path, keep: int = KEEP_FILES):
        self.root = root  # created by the first put: a node that fails to start claims nothing
        self.keep = keep

    def put(self, blob: bytes, sha: str | None = None) -> str:
        sha = sha or checkpoint.sha256(blob)
        make_private_dir(self.root)
        path = self.root / sha
        if path.is_file() and path.stat().st_size == len(blob):
            os.utime(path)  # newest again: pruning goes by age
        else:
            write_atomic(path, blob, mode=0o600)
        self._prune()
        return sha

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

    def _prune(self) -> None:
        files = sorted((p for p in self.root.iterdir() if len(p.name) == 64),
                       key=lambda p: p.stat().st_mtime, reverse=True)
        for old in files[self.keep:]:
            old.unlink(missing_ok=True)


class ModelServer(NodeHttpServer):
    """`GET /models/<sha>` serves a file; `PUT /models/<sha>` stores a body that hashes to it."""

    def __init__(self, host: str, port: int, files: ModelFiles):
        self.files = files
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
        match = _SHA.fullmatch(self.path)
        try:
            size = int(self.headers.get("Content-Length", ""))
        except ValueError:
            size = -1
        if match is None or not 0 <= size <= MAX_MODEL_BYTES:
            self._send(400, b"PUT /models/<sha256> with a Content-Length up to 1 GiB")
            return
        blob = self.rfile.read(size)
        if len(blob) != size or checkpoint.sha256(blob) != match.group(1):
            self._send(400, b"the body does not hash to its name")
            return
        self.server.files.put(blob, match.group(1))
        self._send(201)

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
        if len(blob) <= self.inline_max:
            return checkpoint.save(store, keys, blob, round_, fence)
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
        manifest = Manifest(sha, round_, len(blob), 0, holders)
        checkpoint.save_manifest(store, keys, manifest, fence)
        return manifest

    def load(self, store: Store, keys: RunKeys, sha: str) -> bytes:
        return checkpoint.load(store, keys, sha, fetch=self._fetch)

    def _fetch(self, manifest: Manifest) -> bytes:
        blob = self.files.get(manifest.sha256)
        if blob is not None:
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
