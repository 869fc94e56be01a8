"""Who signed a value, in a secured cluster: each party's certificate, published in etcd.

Why: a member speaks only as itself (issue 18, item 7). Every event, run snapshot and role
claim a process with a TLS identity (raftfl/tls.py) writes carries its signature made with
its node key (raftfl/core/seal.py); a reader checks it against the certificate of the party
the value names. Each party publishes its certificate once, under `certs/<name>` (a node as
it starts, any other writer before its first signed value); a reader accepts a certificate
only if the process's CA issued it and its CN is the name, so a published certificate needs
no trust in whoever wrote it (RBAC lets only `<name>` write `certs/<name>` all the same, so
nobody can delete or replace a peer's).

A reader caches each name's public key (a miss costs one etcd read; an unknown name is asked
for again after `RETRY_S`), so checking an event costs one ECDSA verification, about 0.1 ms.
Without a TLS identity (the loopback quick start) nothing is signed or checked.

Upgrading a secured federation: what was written before the first certificate was published
(the `epoch`, the smallest create revision under `certs/`) was written unsigned by nodes of
an earlier version, so it is read as before; from the epoch on, everything must be signed.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from raftfl import tls
from raftfl.core import certs, seal
from raftfl.core.keys import Keys
from raftfl.core.records import MalformedRecord, loads_bounded
from raftfl.core.role import MalformedRole, RoleHolder, parse_role
from raftfl.etcd.store import KV, Store

log = logging.getLogger(__name__)

RETRY_S = 2.0  # a name without a usable certificate is looked up again after this long
MAX_CACHED = 4096  # names; a flood of forged names costs a bounded cache


@dataclass(frozen=True)
class Signer:
    """This process's party: its name (the certificate's CN), key and certificate."""

    name: str
    key: ec.EllipticCurvePrivateKey
    cert_pem: bytes

    def seal(self, key: str, value: dict[str, Any]) -> dict[str, Any]:
        return seal.signed(key, value, self.key)


_lock = threading.Lock()
_signer: tuple[tls.Identity, Signer] | None = None
_published: set[tuple[str, str, bytes]] = set()  # (endpoints, cluster, cert): done
# (identity, cluster, name) -> (its public key, when looked up): the identity names the CA
_keys: dict[tuple[Any, str, str], tuple[ec.EllipticCurvePublicKey | None, float]] = {}
_ca: tuple[tls.Identity, bytes] | None = None
_epochs: dict[tuple[Any, ...], tuple[int | None, float]] = {}  # (etcd, cluster) -> (epoch, when)


def signer() -> Signer | None:
    """The process's signer (from its TLS identity), or None without one."""
    global _signer
    identity = tls.current()
    if identity is None:
        return None
    with _lock:
        if _signer is None or _signer[0] != identity:
            key = serialization.load_pem_private_key(identity.key.read_bytes(), password=None)
            if not isinstance(key, ec.EllipticCurvePrivateKey):
                raise ValueError(f"{identity.key}: not an ECDSA key raftfl made")
            _signer = (identity, Signer(identity.name, key, identity.cert.read_bytes()))
        return _signer[1]


def publish(store: Store, keys: Keys) -> None:
    """Publish this process's certificate under `certs/<name>` if absent or different (once
    per process and cluster): its signatures verify against it."""
    me = signer()
    if me is None:
        return
    done = (",".join(store.endpoints), keys.cluster, me.cert_pem)
    if done in _published:
        return
    try:
        kv = store.get(keys.cert(me.name))
        if kv is None or kv.value != me.cert_pem:
            store.put(keys.cert(me.name), me.cert_pem)
            _epochs.pop((*store.endpoints, keys.cluster), None)  # signing may begin now
    except grpc.RpcError as exc:  # e.g. RBAC of an older `certs rbac`: say it once, go on
        log.warning("cannot publish %s's certificate at %s (%s): peers will skip what it "
                    "signs; run `raftfl certs rbac` again", me.name, keys.cert(me.name),
                    exc.code())  # type: ignore[attr-defined]
    _published.add(done)


def seal_json(store: Store, keys: Keys, key: str, value: dict[str, Any]) -> str:
    """`value` as stored at `key`: signed when this process has an identity."""
    me = signer()
    if me is not None:
        publish(store, keys)
        value = me.seal(key, value)
    return json.dumps(value, sort_keys=True)


def _ca_pem() -> bytes | None:
    global _ca
    identity = tls.current()
    if identity is None:
        return None
    if _ca is None or _ca[0] != identity:
        _ca = (identity, identity.ca.read_bytes())
    return _ca[1]


def _load(store: Store, keys: Keys, name: str) -> ec.EllipticCurvePublicKey | None:
    """`name`'s public key, from `certs/<name>` if the process's CA issued it to `name`."""
    ca = _ca_pem()
    kv = store.get(keys.cert(name)) if ca is not None and name else None
    if kv is None or len(kv.value) > 16 * 1024:
        return None
    try:
        if not certs.signed_by(kv.value, ca) or certs.common_name(kv.value) != name:  # type: ignore[arg-type]
            return None
        public = x509.load_pem_x509_certificate(kv.value).public_key()
    except ValueError:
        return None
    return public if isinstance(public, ec.EllipticCurvePublicKey) else None


def public_key(store: Store, keys: Keys, name: str, stale: bool = False
               ) -> ec.EllipticCurvePublicKey | None:
    """`name`'s public key (cached); `stale`: the cached one failed, look again if it is old."""
    now = time.monotonic()
    slot = (tls.current(), keys.cluster, name)
    with _lock:
        cached = _keys.get(slot)
    if cached is not None and (cached[0] is not None and not stale or now - cached[1] < RETRY_S):
        return cached[0]
    found = _load(store, keys, name)
    with _lock:
        if len(_keys) >= MAX_CACHED:
            _keys.clear()
        _keys[slot] = (found, now)
    return found


def epoch(store: Store, keys: Keys) -> int | None:
    """The create revision of the first certificate published (cached), None before any."""
    now = time.monotonic()
    slot = (*store.endpoints, keys.cluster)
    cached = _epochs.get(slot)
    if cached is not None and (cached[0] is not None or now - cached[1] < RETRY_S):
        return cached[0]
    kvs, _ = store.range(keys.certs, keys_only=True)
    found = min((kv.create_revision for kv in kvs), default=None)
    _epochs[slot] = (found, now)
    return found


def grandfathered(store: Store, keys: Keys, obj: dict[str, Any], revision: int) -> bool:
    """An unsigned value written (at `revision`) before signing began: read as before."""
    if obj.get(seal.SIG):
        return False
    first = epoch(store, keys)
    return first is None or revision < first


def forgery(store: Store, keys: Keys, key: str, obj: dict[str, Any], node: str) -> str | None:
    """Why the value `obj` stored at `key` is not `node`'s (a reason that says "signer" or
    "signature" or "not signed"), or None when its signature is `node`'s. Always None
    without a TLS identity: nothing is checked then."""
    if tls.current() is None:
        return None
    sig = obj.get(seal.SIG)
    if not sig:
        return f"not signed (it names {node[:80]})"
    data = seal.message(key, obj)
    public = public_key(store, keys, node)
    if public is not None and seal.verify(data, sig, public):
        return None
    public = public_key(store, keys, node, stale=True)  # a certificate replaced since?
    if public is None:
        return f"signer {node[:80]} has no certificate of this cluster's CA in etcd"
    if not seal.verify(data, sig, public):
        return f"the signature is not {node[:80]}'s"
    return None


def check_raw(store: Store, keys: Keys, key: str, raw: bytes, revision: int,
              holder: tuple[str | None] | None = None) -> str | None:
    """`forgery` of a stored value not parsed yet, which names its writer in `node`, last
    written at `revision`; with `holder`, its writer must also be `holder[0]`, the holder of
    its term. None without a TLS identity, or for a value written before signing began."""
    if tls.current() is None:
        return None
    try:
        obj = loads_bounded(raw, max_bytes=2 * 1024 * 1024)
    except MalformedRecord as exc:
        return str(exc)
    if isinstance(obj, dict) and grandfathered(store, keys, obj, revision):
        return None
    node = obj.get("node") if isinstance(obj, dict) else None
    if not isinstance(node, str) or not node:
        return "not signed (it names no writer)"
    if holder is not None and holder[0] != node:
        return f"signer {node[:80]} does not hold its term ({holder[0]} does)"
    return forgery(store, keys, key, obj, node)


def read_role(store: Store, keys: Keys, kv: KV) -> RoleHolder | MalformedRole:
    """The role key `kv`, parsed; in a secured cluster a claim not signed by the node it
    names, or copied from another claim, is `MalformedRole` ("forged: ...")."""
    check = None
    if tls.current() is not None and not _grandfathered_role(store, keys, kv):
        def check(node: str, obj: dict[str, Any]) -> str | None:
            return forgery(store, keys, kv.key, obj, node)
    return parse_role(kv.value, kv.create_revision, kv.lease, kv.mod_revision, check)


def _grandfathered_role(store: Store, keys: Keys, kv: KV) -> bool:
    try:
        obj = loads_bounded(kv.value, max_bytes=4096)
    except MalformedRecord:
        return False  # parse_role says why
    return isinstance(obj, dict) and grandfathered(store, keys, obj, kv.mod_revision)
