"""etcd RBAC for a secured cluster: nodes read their cluster's prefix and write it except the
runs operators submit and the records of other nodes; operators read it and submit runs.

With client-cert-auth, etcd takes a request's user from its certificate's CN (`core/certs.py`
issues CN = node name). `enable` creates, idempotently:

- role `raftfl-<cluster>-node`, granted to every node user: read on `/raftfl/<cluster>/`,
  write on all of it but `submissions/` (run specs and app packages: raftfl/core/keys.py),
  `members/`, `latency/`, `suspects/` and `certs/`. A node's certificate therefore cannot
  submit code for its peers to import;
- role `raftfl-<cluster>-node-<name>`, granted to node `<name>` only: write on its own member
  record (`members/<name>`), latency samples (`latency/<name>/`), suspicions
  (`suspects/<name>/`) and certificate (`certs/<name>`, what its signatures verify against:
  raftfl/etcd/signers.py). etcd unions a user's roles, so a node writes its own records and
  nobody else's: it cannot fake a peer's liveness, context or RTTs (which rank the
  candidates for the aggregator role) or a peer's evidence against the holder, delete them
  (nor a peer's certificate, which would make its signed writes unverifiable),
  or revoke a peer's lease or attach keys to it (etcd 3.4 allows both only to a user that may
  write every key on the lease, and a node's lease carries its member record from its grant
  on: `node/session.py`);
- role `raftfl-<cluster>-operator`: read on that prefix and write on `submissions/` (`run
  submit`), for `operator-<NAME>` users;
- all may read the single key "\0" (`Store.revision()` reads it for the current revision);
- user `root` with role `root` (etcd requires it before auth is enabled): the admin bundle's CN;

then turns auth on. Each role ends with exactly these grants: a grant an older `certs rbac`
made that is no longer wanted is revoked, after the new ones are in place (so a running node
is never refused a write it still may make). A node added later (`certs rbac --user
HOST:PORT`, README "What needs root") gets its own role the same way. Users get a random
password nobody knows: the certificate is the credential. Run it with the admin (root)
bundle: before auth is on, any certificate of the cluster CA may, and afterwards only root
may change users and roles.

etcd 3.4 reserves for root (CN `root`): member add/remove/promote, defragment, MoveLeader,
snapshots, hash checks, and the auth API itself. A node without root therefore cannot run
`node join`/`leave` itself, defragment, or move the Raft leader away from the aggregator;
`raftfl` skips those (with a warning) and etcd's periodic auto-compaction keeps the history
bounded (see README, Security).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable

import grpc
from etcd3 import etcdrpc, utils
from etcd3.etcdrpc import auth_pb2

from raftfl.core.certs import OPERATOR_PREFIX, ROOT_CN
from raftfl.core.keys import Keys
from raftfl.etcd.store import Store

READ, WRITE = auth_pb2.Permission.READ, auth_pb2.Permission.READWRITE
REVISION_PROBE = b"\0"  # Store.revision() reads this one key to learn the cluster's revision

Grant = tuple[int, bytes, bytes]  # (permission type, key, range_end; b"" for one key)


def node_role(cluster: str) -> str:
    return f"raftfl-{cluster}-node"


def own_role(cluster: str, node: str) -> str:
    """The role that lets node `node` write its own records."""
    return f"{node_role(cluster)}-{node}"


def operator_role(cluster: str) -> str:
    return f"raftfl-{cluster}-operator"


def _ignore_exists(store: Store, call: Callable[[], object]) -> None:
    try:
        store.call(call)
    except grpc.RpcError as exc:
        if exc.code() != grpc.StatusCode.FAILED_PRECONDITION:  # type: ignore[attr-defined]
            raise  # "already exists" is FAILED_PRECONDITION: done before, fine


def _prefix(key: str) -> tuple[bytes, bytes]:
    return key.encode(), utils.prefix_range_end(key.encode())


def without(start: bytes, end: bytes, holes: Iterable[tuple[bytes, bytes]]
            ) -> list[tuple[bytes, bytes]]:
    """[start, end) minus the `holes` (ranges inside it), as ranges in key order."""
    out, at = [], start
    for lo, hi in sorted(holes):
        if lo > at:
            out.append((at, lo))
        at = max(at, hi)
    return out + ([(at, end)] if at < end else [])


def permissions(cluster: str, nodes: Iterable[str] = ()) -> dict[str, list[Grant]]:
    """Each role's grants, the per-node roles of `nodes` included. etcd unions a user's roles'
    grants, so the shared node role's write is the cluster's prefix as ranges around
    `submissions/`, `members/`, `latency/`, `suspects/` and `certs/`, and each node's own role
    adds its share of the last four."""
    keys = Keys(cluster)
    prefix, end = _prefix(keys.root)
    submissions = _prefix(keys.submissions)
    shared = without(prefix, end, [submissions, _prefix(keys.members), _prefix(keys.latency),
                                   _prefix(keys.suspects), _prefix(keys.certs)])
    probe = (READ, REVISION_PROBE, b"")
    out = {node_role(cluster): [(READ, prefix, end), *((WRITE, lo, hi) for lo, hi in shared),
                                probe],
           operator_role(cluster): [(READ, prefix, end), (WRITE, *submissions), probe]}
    for node in nodes:
        out[own_role(cluster, node)] = [(WRITE, keys.member(node).encode(), b""),
                                        (WRITE, *_prefix(keys.latency_of(node))),
                                        (WRITE, *_prefix(keys.suspicions_of(node))),
                                        (WRITE, keys.cert(node).encode(), b"")]
    return out


def _held(store: Store, role: str, timeout: float) -> dict[tuple[bytes, bytes], int]:
    perms = store.call(lambda: store.client.authstub.RoleGet(
        etcdrpc.AuthRoleGetRequest(role=role), timeout)).perm
    return {(p.key, p.range_end): p.permType for p in perms}


def _call_grant(store: Store, role: str, grant: Grant, timeout: float) -> None:
    kind, key, range_end = grant
    perm = auth_pb2.Permission(permType=kind, key=key, range_end=range_end)
    store.call(lambda: store.client.authstub.RoleGrantPermission(
        etcdrpc.AuthRoleGrantPermissionRequest(name=role, perm=perm), timeout))


def _call_revoke(store: Store, role: str, key: bytes, range_end: bytes, timeout: float) -> None:
    store.call(lambda: store.client.authstub.RoleRevokePermission(
        etcdrpc.AuthRoleRevokePermissionRequest(role=role, key=key.decode(),
                                                range_end=range_end.decode()), timeout))


def _add(store: Store, role: str, grants: list[Grant], timeout: float) -> None:
    """Create `role` and grant it the ranges it lacks. A range it already holds is left as it
    is: etcd appends a second grant of a key it holds twice (its lookup sees only the first),
    so granting again would pile up copies."""
    _ignore_exists(store, lambda: store.client.authstub.RoleAdd(
        etcdrpc.AuthRoleAddRequest(name=role), timeout))
    held = _held(store, role, timeout)
    for grant in grants:
        if grant[1:] not in held:
            _call_grant(store, role, grant, timeout)


def _narrow(store: Store, role: str, grants: list[Grant], timeout: float) -> None:
    """Revoke what `role` holds beyond `grants` (an older `certs rbac` gave nodes write on the
    whole prefix, then on all of it but `submissions/`), and set each grant's type."""
    wanted = {(key, range_end): kind for kind, key, range_end in grants}
    for rng, kind in _held(store, role, timeout).items():
        if wanted.get(rng) != kind:
            _call_revoke(store, role, *rng, timeout)
            if rng in wanted:
                _call_grant(store, role, (wanted[rng], *rng), timeout)


def enable(store: Store, cluster: str, nodes: Iterable[str], operators: Iterable[str] = (),
           timeout: float = 5.0) -> None:
    """Roles, users and grants for `cluster`, then auth on (every step idempotent)."""
    nodes = list(nodes)
    roles = permissions(cluster, nodes)
    for role, wanted in roles.items():
        _add(store, role, wanted, timeout)
    grants = [(ROOT_CN, "root")]
    grants += [(name, role) for name in nodes
               for role in (node_role(cluster), own_role(cluster, name))]
    grants += [(OPERATOR_PREFIX + name.removeprefix(OPERATOR_PREFIX), operator_role(cluster))
               for name in operators]
    for user, role in grants:
        _ignore_exists(store, lambda u=user: store.client.authstub.UserAdd(
            etcdrpc.AuthUserAddRequest(name=u, password=secrets.token_urlsafe(24)), timeout))
        store.call(lambda u=user, r=role: store.client.authstub.UserGrantRole(
            etcdrpc.AuthUserGrantRoleRequest(user=u, role=r), timeout))
    for role, wanted in roles.items():  # only now that each node holds its own role
        _narrow(store, role, wanted, timeout)
    try:
        store.call(lambda: store.client.authstub.AuthEnable(etcdrpc.AuthEnableRequest(), timeout))
    except grpc.RpcError as exc:
        if exc.code() != grpc.StatusCode.FAILED_PRECONDITION:  # type: ignore[attr-defined]
            raise
