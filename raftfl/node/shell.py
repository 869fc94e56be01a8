"""What a node's rooms share: its options, etcd, its voice, and the loop's wake and stop.

Rooms (the observer, the aggregator and worker roles, voter upkeep) get a `Shell`, never the
node itself. Only the HA loop's thread changes a node's state; other threads may `say` a line,
`wake` the loop or read the `stop` event.
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass, field
from typing import TextIO

from raftfl.core.keys import Keys
from raftfl.etcd.store import Store
from raftfl.node.faults import NO_FAULTS, FaultHooks
from raftfl.node.options import NodeOptions


class Voice:
    """A node's lines on its output; `once` lines are said once (from the loop thread)."""

    def __init__(self, name: str, out: TextIO | None = None):
        self.name = name
        self.out = out or sys.stdout
        self._said: set[str] = set()

    def __call__(self, text: str, once: str | None = None) -> None:
        if once:
            if once in self._said:
                return
            self._said.add(once)
        stamp = time.strftime("%H:%M:%S")
        print(f"{stamp} [{self.name}] {text}", file=self.out, flush=True)


@dataclass(frozen=True)
class Shell:
    opts: NodeOptions
    keys: Keys
    store: Store
    say: Voice
    wake: threading.Event = field(default_factory=threading.Event)
    stop: threading.Event = field(default_factory=threading.Event)
    hooks: FaultHooks = NO_FAULTS

    @property
    def name(self) -> str:
        return self.opts.name
