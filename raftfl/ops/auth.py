"""Who an API request is and what it may do, decided from its client certificate (pure).

With `--certs` the API serves TLS and asks for a client certificate of the cluster's CA (a
certificate of another CA fails the handshake). The certificate's CN names the party, by the
convention of raftfl/core/certs.py and etcd's RBAC (raftfl/etcd/rbac.py): `root` is the
admin, `operator-NAME` an operator, anything else a node. Admins read and write; operators
and nodes read (a node that needs to write has etcd for it). A request without a certificate
gets nothing. Without `--certs` (loopback, or `--insecure`) anyone who reaches the port may
read and write, exactly as they may reach etcd there.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any
from urllib.parse import urlsplit

from raftfl.core.certs import OPERATOR_PREFIX, ROOT_CN
from raftfl.tls import peer_common_name

WRITE_METHODS = frozenset({"POST"})


class Role(Enum):
    ADMIN = "admin"  # CN root: reads and writes
    OPERATOR = "operator"  # CN operator-NAME: reads
    NODE = "node"  # any other certificate of the cluster's CA: reads
    PLAIN = "plain"  # no TLS: reads and writes
    NONE = "none"  # TLS without a client certificate: nothing

    @property
    def writes(self) -> bool:
        return self in (Role.ADMIN, Role.PLAIN)


@dataclass(frozen=True)
class Caller:
    role: Role
    name: str  # the certificate's CN ("" without one)
    ip: str

    @property
    def who(self) -> str:
        """How records name the caller (`by`), like the CLI's user@host."""
        return f"{self.name or 'api'}@{self.ip}"[:255]


def caller(secured: bool, peer_cert: dict[str, Any] | None, ip: str) -> Caller:
    if not secured:
        return Caller(Role.PLAIN, "", ip)
    name = peer_common_name(peer_cert)
    if not peer_cert:
        return Caller(Role.NONE, "", ip)
    if name == ROOT_CN:
        return Caller(Role.ADMIN, name, ip)
    if name.startswith(OPERATOR_PREFIX):
        return Caller(Role.OPERATOR, name, ip)
    return Caller(Role.NODE, name, ip)


def refusal(who: Caller, method: str, path: str) -> tuple[int, str] | None:
    """(status, one line) when `who` may not make this request; None when it may."""
    if who.role is Role.NONE:
        return 401, "a client certificate of the cluster's CA is required"
    if method in WRITE_METHODS and not who.role.writes:
        return 403, (f"{who.name} ({who.role.value}) may only read: {method} {path} needs the "
                     f"admin certificate (CN {ROOT_CN})")
    return None


def cross_origin(method: str, origin: str | None, host: str | None) -> tuple[int, str] | None:
    """(403, why) for a browser's write from another origin (a page that would use the
    operator's certificate or loopback access); None otherwise. Reads are left to the
    browser's same-origin policy (the API sends no CORS headers)."""
    if method not in WRITE_METHODS or origin is None or urlsplit(origin).netloc == host:
        return None
    return 403, f"cross-origin {method} from {origin[:100]} refused"
