"""The aggregator role key, parsed in exactly one place.

The key `aggregator` holds `{node, flower_address, term}` on its holder's lease. Its **term is
the key's create revision**, never the value's `term` field (a value can be written by
anyone with `etcdctl`; a create revision cannot be chosen). A value that is not a role
record is reported as `MalformedRole`, so a hand-written key never crashes a node.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from raftfl.core.records import MalformedRecord, loads_bounded

MAX_ROLE_BYTES = 4096


@dataclass(frozen=True)
class RoleHolder:
    node: str
    flower_address: str | None
    term: int  # the key's create revision
    lease: int
    mod_revision: int

    def to_json(self) -> str:
        return role_value(self.node, self.flower_address, self.term)


@dataclass(frozen=True)
class MalformedRole:
    """The key exists but does not hold a role record (written by hand, or by a stranger)."""

    reason: str
    term: int
    lease: int
    mod_revision: int


def role_value(node: str, flower_address: str | None, term: int) -> str:
    return json.dumps({"node": node, "flower_address": flower_address, "term": term},
                      sort_keys=True)


def parse_role(value: bytes, create_revision: int, lease: int,
               mod_revision: int) -> RoleHolder | MalformedRole:
    def bad(reason: str) -> MalformedRole:
        return MalformedRole(reason, create_revision, lease, mod_revision)

    try:
        obj = loads_bounded(value, MAX_ROLE_BYTES)
    except MalformedRecord as exc:
        return bad(str(exc))
    if not isinstance(obj, dict):
        return bad("not a JSON object")
    node, address = obj.get("node"), obj.get("flower_address")
    if not isinstance(node, str) or not node or len(node) > 255:
        return bad("no node name")
    if address is not None and not isinstance(address, str):
        return bad("flower_address is not a string")
    if not lease:
        return bad("not bound to a lease")
    return RoleHolder(node, address, create_revision, lease, mod_revision)
