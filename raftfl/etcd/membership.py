"""etcd membership changes behind `raftfl node join` and `raftfl node leave`."""

from __future__ import annotations

from typing import Any

from raftfl.core.address import NodeAddress, parse_address
from raftfl.core.errors import RaftflError
from raftfl.core.keys import Keys
from raftfl.etcd.store import Store


def add_member(opts: Any) -> list[NodeAddress]:
    """Register the new member with the running cluster; return every member's address.

    etcd needs the complete initial-cluster list (with `existing` state) when a member joins.
    """
    if not opts.peers:
        raise RaftflError("node join needs -n with at least one running node")
    store = Store([p.client_endpoint for p in opts.peers], retry_for=10)
    try:
        members = store.members()
        if any(m.name == opts.name for m in members):
            raise RaftflError(f"{opts.name} is already a member; use `raftfl node start`")
        store.call(lambda: store.client.add_member([opts.address.peer_url]))
        return [parse_address(m.name) for m in members if m.name]
    finally:
        store.close()


def remove_member(leaving: NodeAddress, endpoints: list[str], cluster: str = "default") -> str:
    store = Store(endpoints, retry_for=10)
    try:
        match = [m for m in store.members() if m.name == leaving.name]
        if not match:
            raise RaftflError(f"{leaving.name} is not a member of the etcd cluster")
        store.call(lambda: store.client.remove_member(match[0].id))
        store.delete(Keys(cluster).member(leaving.name))
        return f"removed {leaving.name} (member {match[0].id:x}); its node stops by itself"
    finally:
        store.close()
