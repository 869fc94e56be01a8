"""Where a node is on the network: etcd listens on IPs, not names.

A `NodeAddress` (raftfl/core/address.py) names a host; the URLs and endpoints etcd is given
are built from its IP, resolved each time one is built.
"""

from __future__ import annotations

import socket

from raftfl.core.address import NodeAddress
from raftfl.core.errors import RaftflError


def resolve(host: str) -> str:
    """Resolve to an IPv4 address; etcd listens on IPs, not names."""
    try:
        return socket.gethostbyname(host)
    except OSError as exc:
        raise RaftflError(f"node address {host!r} does not resolve: {exc}") from exc


def peer_url(address: NodeAddress) -> str:
    """The node's etcd peer (Raft) URL, as in `--initial-cluster`."""
    return f"http://{resolve(address.host)}:{address.port}"


def client_endpoint(address: NodeAddress) -> str:
    """The node's etcd client endpoint (`ip:port`), by the port rule."""
    return f"{resolve(address.host)}:{address.client_port}"


def client_endpoints(addresses: list[NodeAddress]) -> list[str]:
    """The etcd client endpoints (`ip:port`) derived from node addresses by the port rule."""
    return [client_endpoint(a) for a in addresses]
