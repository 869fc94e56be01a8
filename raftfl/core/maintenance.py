"""An operator's requests to the HA loop: a planned handover, and pausing failover.

Both are keys under `control/`, read by every node at the revision it decides at, like the
role key (Patroni keeps its switchover request in a `/failover` key and its maintenance mode
in the cluster config, for the same reason: the request must outlive the process that made
it, and every node must see the same one).

* `control/handover` (`HandoverRequest`) names the holder and term it applies to and the node
  that is to take over. The holder finishes its current round, records `handover`, and
  resigns (deletes the role key, fenced on its term); the named node campaigns at once
  while the others wait one lease TTL for it, then rank as after any vacancy. The term the
  request names makes a late or repeated request harmless: no later holder acts on it.
* `control/paused` (`Pause`): while it exists, a vacant role is not filled automatically
  and no node takes over on evidence; the holder keeps serving. Its create revision is
  "paused since".

`handover_target` is the CLI's check of a request, pure so that every refusal is a table row.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from raftfl.core.errors import RaftflError
from raftfl.core.member_record import MemberInfo
from raftfl.core.ranking import Ranked
from raftfl.core.records import Record, require

MAX_NAME = 255


@dataclass(frozen=True)
class HandoverRequest(Record):
    """Move the role from `holder` (term `term`) to `to`."""

    KIND: ClassVar[str] = "handover request"

    holder: str
    term: int
    to: str
    ranked: bool = False  # `to` was the best-ranked other node (no --to)
    by: str = ""  # who asked (user@host)
    ts: float = field(default_factory=time.time)

    def check(self) -> None:
        for name in ("holder", "to"):
            require(0 < len(getattr(self, name)) <= MAX_NAME, f"{name} of "
                    f"{len(getattr(self, name))} characters")
        require(self.term > 0, f"term {self.term}")
        require(len(self.by) <= MAX_NAME, f"by of {len(self.by)} characters")


@dataclass(frozen=True)
class Pause(Record):
    """Automatic failover is paused (maintenance mode) while this record exists."""

    KIND: ClassVar[str] = "pause"

    by: str = ""
    reason: str = ""
    ts: float = field(default_factory=time.time)

    def check(self) -> None:
        require(len(self.by) <= MAX_NAME, f"by of {len(self.by)} characters")
        require(len(self.reason) <= 500, f"reason of {len(self.reason)} characters")


def handover_target(holder: str, to: str | None, known: set[str],
                    live: Mapping[str, MemberInfo], ranking: Sequence[Ranked]) -> str:
    """The node a handover from `holder` goes to: `to` if it can take the role, else (no
    `to`) the best-ranked other live node. Raises RaftflError with one line saying why not.

    `known` are the federation's nodes (etcd members and the cluster config's nodes),
    `live` the member records (each bound to its node's lease), `ranking` every live
    candidate, best first (as `rank` orders them)."""
    if to is None:
        for r in ranking:
            member = live.get(r.node)
            if r.node != holder and member is not None and not member.finished:
                return r.node
        raise RaftflError(f"no other live node can take the role from {holder}")
    if to == holder:
        raise RaftflError(f"{to} already holds the aggregator role")
    if to not in known and to not in live:
        names = ", ".join(sorted(known | set(live))) or "none"
        raise RaftflError(f"unknown node {to} (the nodes are: {names})")
    member = live.get(to)
    if member is None:
        raise RaftflError(f"{to} is not alive (no member record): it cannot take the role")
    if member.nofailover:
        raise RaftflError(f"{to} runs with --nofailover: it never takes the role")
    if member.finished:
        raise RaftflError(f"{to} is leaving (its run is finished): it cannot take the role")
    return to
