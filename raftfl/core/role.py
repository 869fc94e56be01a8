"""The aggregator role key, parsed in exactly one place.

The key `aggregator` holds `{node, flower_address, term}` on its holder's lease. Its **term is
the key's create revision**, never the value's `term` field (a value can be written by
anyone with `etcdctl`; a create revision cannot be chosen). A value that is not a role
record is reported as `MalformedRole`, so a hand-written key never crashes a node.

In a secured cluster the value also holds the holder's `lease` and `sig`, its signature over
the key and the value (raftfl/core/seal.py), and readers pass `check` (raftfl/etcd/signers.py
`read_role`): a value not signed by the node it names, or copied from an older claim (its
`term`, when set, is not the key's create revision; its `lease` is not the key's), is
malformed with a reason that starts "forged:". The check comes before the lease check, so a
forged value put without a lease is reported as forged.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

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


# (the node the value names, the parsed value) -> why its signature does not hold, or None
SignatureCheck = Callable[[str, dict[str, Any]], str | None]


def role_record(node: str, flower_address: str | None, term: int,
                lease: int | None = None) -> dict[str, Any]:
    """The role value as a dict (with the holder's lease when it is to be signed)."""
    out: dict[str, Any] = {"node": node, "flower_address": flower_address, "term": term}
    if lease is not None:
        out["lease"] = lease
    return out


def role_value(node: str, flower_address: str | None, term: int) -> str:
    return json.dumps(role_record(node, flower_address, term), sort_keys=True)


def _forged(obj: dict[str, Any], node: str, create_revision: int, lease: int,
            check: SignatureCheck) -> str | None:
    why = check(node, obj)
    if why is not None:
        return why
    term = obj.get("term")
    if type(term) is not int or (term and term != create_revision):
        return (f"its term {str(term)[:20]} is not the key's create revision {create_revision} "
                "(a copied claim)")
    if obj.get("lease") != lease:
        return f"its lease {str(obj.get('lease'))[:20]} is not the key's {lease} (a copied claim)"
    return None


def parse_role(value: bytes, create_revision: int, lease: int, mod_revision: int,
               check: SignatureCheck | None = None) -> RoleHolder | MalformedRole:
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
    if check is not None:
        forged = _forged(obj, node, create_revision, lease, check)
        if forged is not None:
            return bad(f"forged: {forged}")
    if not lease:
        return bad("not bound to a lease")
    return RoleHolder(node, address, create_revision, lease, mod_revision)
