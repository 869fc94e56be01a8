"""etcd RBAC for a secured cluster: nodes read their cluster's prefix and write it except the
runs operators submit; operators read it and submit runs.

With client-cert-auth, etcd takes a request's user from its certificate's CN (`core/certs.py`
issues CN = node name). `enable` creates, idempotently:

- role `raftfl-<cluster>-node`: read on `/raftfl/<cluster>/`, write on all of it but
  `submissions/` (run specs and app packages: raftfl/core/keys.py), granted to every node user.
  A node's certificate therefore cannot submit code for its peers to import;
- role `raftfl-<cluster>-operator`: read on that prefix and write on `submissions/` (`run
  submit`), for `operator-<NAME>` users;
- both may read the single key "\0" (`Store.revision()` reads it for the current revision);
- user `root` with role `root` (etcd requires it before auth is enabled): the admin bundle's CN;

then turns auth on. Users get a random password nobody knows: the certificate is the
credential. Run it with the admin (root) bundle: before auth is on, any certificate of the
cluster CA may, and afterwards only root may change users and roles.

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


def node_role(cluster: str) -> str:
    return f"raftfl-{cluster}-node"


def operator_role(cluster: str) -> str:
    return f"raftfl-{cluster}-operator"


def _ignore_exists(store: Store, call: Callable[[], object]) -> None:
    try:
        store.call(call)
    except grpc.RpcError as exc:
        if exc.code() != grpc.StatusCode.FAILED_PRECONDITION:  # type: ignore[attr-defined]
            raise  # "already exists" is FAILED_PRECONDITION: done before, fine


def permissions(cluster: str) -> dict[str, list[tuple[int, bytes, bytes]]]:
    """Each role's (permission, key, range_end): etcd unions them, so the node role's write
    is the cluster's prefix as two ranges around `submissions/`."""
    keys = Keys(cluster)
    prefix, submissions = keys.root.encode(), keys.submissions.encode()
    end, submissions_end = utils.prefix_range_end(prefix), utils.prefix_range_end(submissions)
    read, write = auth_pb2.Permission.READ, auth_pb2.Permission.READWRITE
    return {node_role(cluster): [(read, prefix, end), (write, prefix, submissions),
                                 (write, submissions_end, end)],
            operator_role(cluster): [(read, prefix, end), (write, submissions, submissions_end)]}


def enable(store: Store, cluster: str, nodes: Iterable[str], operators: Iterable[str] = (),
           timeout: float = 5.0) -> None:
    """Roles, users and grants for `cluster`, then auth on (every step idempotent)."""
    for role, perms in permissions(cluster).items():
        _ignore_exists(store, lambda r=role: store.client.authstub.RoleAdd(
            etcdrpc.AuthRoleAddRequest(name=r), timeout))
        # The whole prefix's grant comes first: etcd replaces the type of a grant with the
        # same range, so a role an older `certs rbac` let write all of it is narrowed here.
        for kind, key, range_end in perms:
            perm = auth_pb2.Permission(permType=kind, key=key, range_end=range_end)
            store.call(lambda r=role, p=perm: store.client.authstub.RoleGrantPermission(
                etcdrpc.AuthRoleGrantPermissionRequest(name=r, perm=p), timeout))
        # Store.revision() reads the one key "\0" to learn the cluster's revision: readable.
        probe = auth_pb2.Permission(permType=auth_pb2.Permission.READ, key=b"\0")
        store.call(lambda r=role, p=probe: store.client.authstub.RoleGrantPermission(
            etcdrpc.AuthRoleGrantPermissionRequest(name=r, perm=p), timeout))
    grants = [(ROOT_CN, "root")]
    grants += [(name, node_role(cluster)) for name in nodes]
    grants += [(OPERATOR_PREFIX + name.removeprefix(OPERATOR_PREFIX), operator_role(cluster))
               for name in operators]
    for user, role in grants:
        _ignore_exists(store, lambda u=user: store.client.authstub.UserAdd(
            etcdrpc.AuthUserAddRequest(name=u, password=secrets.token_urlsafe(24)), timeout))
        store.call(lambda u=user, r=role: store.client.authstub.UserGrantRole(
            etcdrpc.AuthUserGrantRoleRequest(user=u, role=r), timeout))
    try:
        store.call(lambda: store.client.authstub.AuthEnable(etcdrpc.AuthEnableRequest(), timeout))
    except grpc.RpcError as exc:
        if exc.code() != grpc.StatusCode.FAILED_PRECONDITION:  # type: ignore[attr-defined]
            raise
