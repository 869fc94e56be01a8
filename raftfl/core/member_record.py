"""The member record: what each node publishes about itself under `members/<node>`.

It is bound to the node's lease (so it vanishes with the node) and is the context every
node ranks candidates by, so its fields are typed and range-checked like every record:
a hand-written record with a string for a port or a NaN priority is skipped, not ranked.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import ClassVar

from raftfl.core.address import check_node_name
from raftfl.core.errors import RaftflError
from raftfl.core.records import Record, require

MAX_ADDRESS = 255


@dataclass
class MemberInfo(Record):
    KIND: ClassVar[str] = "member record"

    node: str
    ip: str
    client_port: int
    flower_address: str
    priority: float = 0.0
    nofailover: bool = False
    cpu_free: float = 0.0
    mem_free_mb: float = 0.0
    ts: float = field(default_factory=time.time)
    finished: bool = False
    pid: int = 0
    max_examples: int = 0  # the most training examples this node declares (0: none declared)
    models_address: str = ""  # its model service (node/models.py); "" in older records

    def check(self) -> None:
        try:
            check_node_name(self.node)
        except RaftflError as exc:
            raise ValueError(str(exc)) from None
        require(0 < len(self.ip) <= MAX_ADDRESS, f"ip of {len(self.ip)} characters")
        require(0 < len(self.flower_address) <= MAX_ADDRESS,
                f"flower_address of {len(self.flower_address)} characters")
        require(len(self.models_address) <= MAX_ADDRESS,
                f"models_address of {len(self.models_address)} characters")
        require(0 < self.client_port < 65536, f"client_port {self.client_port}")
        require(not math.isnan(self.priority), "priority is NaN")
        for name in ("cpu_free", "mem_free_mb", "ts"):
            require(math.isfinite(getattr(self, name)), f"{name} is not finite")
        require(self.pid >= 0, f"pid {self.pid}")
        require(self.max_examples >= 0, f"max_examples {self.max_examples}")
