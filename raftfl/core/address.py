"""Node addressing and the port rule.

A node is named by its `-s host:port` address, where `port` is its etcd *peer* (Raft) port,
as in the seed. Every other port the node needs is derived from it, so three nodes on one
laptop need nothing but the seed's three commands:

    etcd client port = raft port + 100   (5000 -> 5100)
    Flower port      = raft port + 200   (5000 -> 5200)
    model service    = raft port + 300   (5000 -> 5300; node/models.py)

Each can be overridden per node (`--client-port`, `--flower-port`, `--models-port`, `--api-port`).

Names are restricted to a safe character set, because they end up in etcd keys, in etcd's
YAML configuration and in paths under the data root: a cluster named `../../x` or one
holding a quote and a newline must be refused, not interpreted.

Pure: resolving a host to the IP etcd listens on, and checking that a port is free, are the
network edge's (raftfl/net/address.py, raftfl/net/ports.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from raftfl.core.errors import RaftflError

CLIENT_PORT_OFFSET = 100
FLOWER_PORT_OFFSET = 200
MODELS_PORT_OFFSET = 300
API_PORT_OFFSET = 400  # the node's HTTP API: health, metrics, the dashboard


_CLUSTER = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
_HOST = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,252}")
_NODE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,254}")


def check_cluster_name(name: str) -> str:
    """`name` if it is a safe cluster name (letters, digits, `.`, `_`, `-`; 1-63 characters,
    starting with a letter or digit), else a one-line RaftflError."""
    if not _CLUSTER.fullmatch(name):
        raise RaftflError(f"invalid cluster name {name!r}: use 1-63 letters, digits, '.', '_' or "
                          "'-', starting with a letter or digit")
    return name


def check_node_name(name: str) -> str:
    """`name` if it is a safe node (etcd member) name, such as `host:port`."""
    if not _NODE.fullmatch(name):
        raise RaftflError(f"invalid node name {name!r}: use letters, digits, '.', '_', '-' and "
                          "':', starting with a letter or digit")
    return name


@dataclass(frozen=True)
class NodeAddress:
    """A `host:raft_port` address as given on the command line."""

    host: str
    port: int

    @property
    def name(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def client_port(self) -> int:
        return self.port + CLIENT_PORT_OFFSET

    @property
    def flower_port(self) -> int:
        return self.port + FLOWER_PORT_OFFSET

    @property
    def models_port(self) -> int:
        return self.port + MODELS_PORT_OFFSET

    @property
    def api_port(self) -> int:
        return self.port + API_PORT_OFFSET


def parse_address(text: str) -> NodeAddress:
    """Parse `host:port`; raise a one-line error for anything else."""
    host, sep, port = text.strip().rpartition(":")
    if (not sep or not _HOST.fullmatch(host) or not port.isdigit()
            or not 0 < int(port) < 65536 - API_PORT_OFFSET):
        raise RaftflError(f"invalid node address {text!r}: expected host:port, e.g. localhost:5000 "
                          "(host: letters, digits, '.', '_', '-')")
    return NodeAddress(host, int(port))
