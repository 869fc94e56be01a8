"""The loopback quick start's own CA: safe by default on one host too.

Why: on a shared machine every local user can reach 127.0.0.1, so plain text on loopback
lets any of them read and write the cluster's etcd, fleet and models. A node started on
loopback with neither --certs nor --insecure (nor --etcd-endpoints) therefore uses a CA the
quick start makes by itself in the cluster's folder, the parent of the node's data dir
(`.raftfl/<cluster>/ca/`, 0700, keys 0600): the first node creates it, each node issues its
own bundle there, and from then on it runs as with --certs (mutual TLS everywhere, no etcd
RBAC: one user runs every party). Only this Unix user (and root) can read the keys, so
another local user holds no certificate and is refused at the handshake.

The CLI's one-shot commands on the same host (status, history, run, pause, ...) find the
CA by the same rule, relative to the working directory, and issue themselves a `root`
bundle there once. Three terminals start at once: every change to the folder happens under
an flock on its `.lock` file.
"""

from __future__ import annotations

import fcntl
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from raftfl import tls
from raftfl.core.address import NodeAddress
from raftfl.core.certs import ROOT_CN, is_loopback
from raftfl.core.errors import RaftflError
from raftfl.files import make_private_dir
from raftfl.net.address import resolve

if TYPE_CHECKING:
    from raftfl.node.options import NodeOptions

CA_DIR = "ca"  # in the cluster's folder, beside the nodes' data dirs
LOCK = ".lock"


def cluster_ca(cluster: str) -> Path:
    """Where a one-shot command looks for the quick start's CA: `.raftfl/<cluster>/ca`, the
    folder of the nodes' default data dirs (`.raftfl/<cluster>/<host>_<port>`)."""
    return (Path(".raftfl") / cluster / CA_DIR).resolve()


def node_hosts(me: NodeAddress) -> list[str]:
    """A node certificate's SANs: its name and its IP (the name alone if it does not resolve
    here); a loopback node also `localhost` and 127.0.0.1, the names peers on one host dial."""
    try:
        ip = resolve(me.host)
    except RaftflError:
        return [me.host]
    return [me.host, ip, *(["localhost", "127.0.0.1"] if is_loopback(ip) else [])]


def _check_private(directory: Path) -> None:
    """The CA's folder must be a directory of this user that no one else may enter: one
    planted by another local user (a symlink, a group- or world-open directory) would hand
    them the keys."""
    info = directory.lstat()
    if (not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid()
            or info.st_mode & 0o077):
        raise RaftflError(
            f"refusing the quick start's CA in {directory}: not a private directory of this "
            f"user (mode {stat.filemode(info.st_mode)}, owner uid {info.st_uid}); remove it, "
            "or pass --certs DIR or --insecure")


@contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Hold the folder's lock: the first node creates the CA, the others wait for it."""
    make_private_dir(directory)
    _check_private(directory)
    fd = os.open(directory / LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _bundle(directory: Path, cluster: str | None, bundle: str, common_name: str,
            hosts: list[str]) -> Path:
    """`directory/bundle`, issued under the folder's CA unless there; a node (`cluster`
    given) makes the CA first if it is missing."""
    with _locked(directory):
        if cluster is not None and not (directory / tls.CA_CERT).is_file():
            tls.init_ca(directory, cluster, force=True)  # force: a half-made CA is replaced
        target = directory / bundle
        if not (target / tls.KEY).is_file():
            tls.issue_bundle(directory, bundle, common_name, hosts, force=True)
    return target


def node_identity(directory: Path, cluster: str, me: NodeAddress) -> tls.Identity:
    """Node `me`'s identity under the quick start's CA in `directory`."""
    return tls.load(_bundle(directory, cluster, f"{me.host}_{me.port}", me.name, node_hosts(me)))


def client_identity(directory: Path, common_name: str = ROOT_CN,
                    bundle: str = ROOT_CN) -> tls.Identity | None:
    """A client's identity under the CA in `directory` (a one-shot command's: CN root; an
    edge worker's: its name), issued once; None when there is no CA there."""
    if not (directory / tls.CA_CERT).is_file():
        return None
    return tls.load(_bundle(directory, None, bundle, common_name, []))


def use_client_identity(cluster: str, endpoints: list[str]) -> None:
    """Make this process `root` of the quick start of `cluster` when it talks to loopback
    endpoints only, there is such a CA here and no --certs was given."""
    if tls.current() is not None or not endpoints:
        return
    if not all(is_loopback(ep.rpartition(":")[0]) for ep in endpoints):
        return
    identity = client_identity(cluster_ca(cluster))
    if identity is not None:
        tls.configure(identity)


def secure_node(opts: NodeOptions, insecure: bool) -> str | None:
    """Give a loopback node without --certs its quick-start identity (or leave --insecure's
    plain text); returns the one line the node says about it, None when neither applies."""
    if tls.current() is not None or opts.etcd_endpoints is not None or not is_loopback(opts.ip):
        return None
    if insecure:
        return ("--insecure: plain text on loopback; every local user of this host can read "
                "and write this cluster (etcd, the fleet, the model service, the API)")
    directory = opts.dir.parent / CA_DIR
    try:
        tls.configure(node_identity(directory, opts.cluster, opts.address))
    except OSError as exc:  # e.g. a data dir under a file: one line, naming the data dir
        raise RaftflError(f"data dir {opts.dir}: cannot keep the quick start's CA in "
                          f"{directory}: {exc.strerror or exc}") from exc
    return (f"quick start: mutual TLS under the cluster's own CA in {directory} (0700, keys "
            "0600); other local users are shut out (--insecure: plain text)")

