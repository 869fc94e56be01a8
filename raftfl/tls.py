"""Certificate directories on disk and this process's TLS identity.

`raftfl certs` writes a cluster directory: `ca.crt`/`ca.key` (the CA; the key never leaves
the operator's machine) and one bundle directory per node or operator holding exactly what
that party needs: `ca.crt`, `tls.crt`, `tls.key` and `cluster`. Handing a node its files is
copying its bundle directory; `--certs BUNDLE` points at it. Keys are written 0600 and no
file is overwritten without --force.

Why a process-wide identity: a process is one party (one node, one operator), and every
connection it opens (the etcd client and its single-member clients, the fleet transport)
must present that party's certificate. The CLI loads the bundle once (`configure`) and the
edges read it (`current`), so no call site can forget to pass it on.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raftfl.core import certs
from raftfl.core.errors import RaftflError
from raftfl.files import make_private_dir

CA_CERT, CA_KEY, CERT, KEY, CLUSTER = "ca.crt", "ca.key", "tls.crt", "tls.key", "cluster"
# etcd's peer port trusts a CA of its own, which signs only the peer certificates in node
# bundles: an operator's or the admin's certificate cannot speak Raft to the members (etcd
# 3.4 reads --peer-cert-allowed-cn from its command line only, never from a config file).
PEER_CA_CERT, PEER_CA_KEY = "peer-ca.crt", "peer-ca.key"
PEER_CERT, PEER_KEY, PEER_CN = "peer.crt", "peer.key", "raftfl-etcd-peer"


def _write_new(path: Path, data: bytes, mode: int, force: bool) -> None:
    if path.is_symlink():
        raise RaftflError(f"refusing to write {path}: it is a symlink")
    if path.exists() and not force:
        raise RaftflError(f"{path} exists; pass --force to overwrite it")
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(path, mode)


def init_ca(directory: Path, cluster: str, force: bool = False) -> Path:
    """Create the cluster CA in `directory` (0700). Returns the CA certificate's path."""
    make_private_dir(directory)
    for name in (CA_CERT, CA_KEY):
        if (directory / name).exists() and not force:
            raise RaftflError(f"{directory / name} exists; pass --force to overwrite it")
    ca = certs.make_ca(cluster)
    _write_new(directory / CA_KEY, ca.key_pem, 0o600, force)
    _write_new(directory / CA_CERT, ca.cert_pem, 0o644, force)
    _write_new(directory / CLUSTER, cluster.encode() + b"\n", 0o644, force)
    return directory / CA_CERT


def load_ca(directory: Path) -> tuple[certs.Issued, str]:
    try:
        ca = certs.Issued((directory / CA_CERT).read_bytes(), (directory / CA_KEY).read_bytes())
        cluster = (directory / CLUSTER).read_text().strip()
    except OSError as exc:
        raise RaftflError(f"no cluster CA in {directory} ({exc.strerror or exc}); "
                          "run `raftfl certs init --dir DIR --cluster NAME` first") from exc
    return ca, cluster


def _peer_ca(directory: Path, cluster: str) -> certs.Issued:
    """The CA of etcd's peer port, made beside the cluster CA on first use."""
    cert, key = directory / PEER_CA_CERT, directory / PEER_CA_KEY
    if not cert.is_file():
        ca = certs.make_ca(f"{cluster} etcd peers")
        _write_new(key, ca.key_pem, 0o600, force=True)
        _write_new(cert, ca.cert_pem, 0o644, force=True)
    return certs.Issued(cert.read_bytes(), key.read_bytes())


def issue_bundle(directory: Path, bundle: str, common_name: str, hosts: list[str],
                 force: bool = False) -> Path:
    """Issue `common_name`'s certificate under the CA in `directory`, into `directory/bundle`."""
    ca, cluster = load_ca(directory)
    target = directory / bundle
    if (target / KEY).exists() and not force:
        raise RaftflError(f"{target / KEY} exists; pass --force to overwrite it")
    issued = certs.issue(ca, common_name, hosts)
    make_private_dir(target)
    _write_new(target / KEY, issued.key_pem, 0o600, force)
    _write_new(target / CERT, issued.cert_pem, 0o644, force)
    if common_name != certs.ROOT_CN and not common_name.startswith(certs.OPERATOR_PREFIX):
        peer_ca = _peer_ca(directory, cluster)  # a node: it runs an etcd member
        peer = certs.issue(peer_ca, PEER_CN, hosts)
        _write_new(target / PEER_KEY, peer.key_pem, 0o600, force)
        _write_new(target / PEER_CERT, peer.cert_pem, 0o644, force)
        _write_new(target / PEER_CA_CERT, peer_ca.cert_pem, 0o644, force)
    _write_new(target / CA_CERT, ca.cert_pem, 0o644, force)
    _write_new(target / CLUSTER, cluster.encode() + b"\n", 0o644, force)
    return target


@dataclass(frozen=True)
class Identity:
    """One party's bundle: the cluster CA, its certificate and key (paths), its CN."""

    ca: Path
    cert: Path
    key: Path
    name: str
    cluster: str

    def grpc_credentials(self) -> Any:
        import grpc

        return grpc.ssl_channel_credentials(self.ca.read_bytes(), self.key.read_bytes(),
                                            self.cert.read_bytes())

    @property
    def peer(self) -> tuple[Path, Path, Path] | None:
        """The bundle's etcd peer certificate, key and CA (a node's bundle of this version)."""
        files = (self.cert.with_name(PEER_CERT), self.key.with_name(PEER_KEY),
                 self.ca.with_name(PEER_CA_CERT))
        return files if all(f.is_file() for f in files) else None

    def server_context(self) -> ssl.SSLContext:
        """Serve TLS and require a client certificate from this cluster's CA."""
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(self.ca))
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_cert_chain(str(self.cert), str(self.key))
        return ctx

    def client_context(self) -> ssl.SSLContext:
        """Connect with our certificate; the server must hold one of this cluster's CA for
        the address we dial."""
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.ca))
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(str(self.cert), str(self.key))
        return ctx


def load(bundle: Path) -> Identity:
    """Read and check a bundle directory (one clear line when something is missing or wrong)."""
    paths = [bundle / CA_CERT, bundle / CERT, bundle / KEY]
    for path in paths:
        if not path.is_file():
            raise RaftflError(f"--certs {bundle}: {path.name} missing (a bundle made by "
                              "`raftfl certs issue` holds ca.crt, tls.crt, tls.key)")
    try:
        ca_pem, cert_pem = paths[0].read_bytes(), paths[1].read_bytes()
        if not certs.signed_by(cert_pem, ca_pem):
            raise RaftflError(f"--certs {bundle}: tls.crt was not issued by ca.crt")
        name = certs.common_name(cert_pem)
        cluster_file = bundle / CLUSTER
        cluster = cluster_file.read_text().strip() if cluster_file.is_file() else ""
    except (OSError, ValueError) as exc:
        raise RaftflError(f"--certs {bundle}: unreadable certificate ({exc})") from exc
    if paths[2].stat().st_mode & 0o077:
        raise RaftflError(f"--certs {bundle}: tls.key is readable by others; chmod 600 it")
    return Identity(*paths, name=name, cluster=cluster)


def peer_common_name(peer_cert: dict[str, Any] | None) -> str:
    """The subject CN of a certificate as `SSLSocket.getpeercert()` returns it ("" if none)."""
    for rdn in (peer_cert or {}).get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return ""


_current: Identity | None = None


def configure(identity: Identity | None) -> None:
    global _current
    _current = identity


def current() -> Identity | None:
    """This process's identity, or None when it runs without TLS."""
    return _current
