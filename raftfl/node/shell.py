"""What a node's rooms share: its options, etcd, its voice, and the loop's wake and stop.

Rooms (the observer, the aggregator and worker roles, voter upkeep) get a `Shell`, never the
node itself. Only the HA loop's thread changes a node's state; other threads may `say` a line,
`wake` the loop or read the `stop` event.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar, TextIO

from raftfl.core.keys import Keys
from raftfl.etcd.store import Store
from raftfl.node.faults import NO_FAULTS, FaultHooks
from raftfl.node.options import NodeOptions


@dataclass(frozen=True)
class LineContext:
    """Where a node stands as it says a line; None where it does not know."""

    term: int | None = None
    run: int | None = None
    round: int | None = None


# (node name, text, the typed event's name if the line tells one) -> the line as printed
LineFormat = Callable[[str, str, str | None], str]


def text_line(name: str, text: str, event: str | None = None) -> str:
    """`HH:MM:SS [name] text`, for people."""
    return f"{time.strftime('%H:%M:%S')} [{name}] {text}"


class Voice:
    """A node's lines on its output; `once` lines are said once (from the loop thread), and a
    line that tells a typed event may name it (`event`, e.g. "round_committed").

    How a line looks is the process's choice, `Voice.line_format` (JSON objects with
    `--log-format json`: raftfl/cli/logs.py). A node may register where it stands under its
    name in `Voice.contexts`; JSON lines carry it as term, run and round.
    """

    line_format: ClassVar[LineFormat] = text_line
    contexts: ClassVar[dict[str, Callable[[], LineContext]]] = {}

    def __init__(self, name: str, out: TextIO | None = None):
        self.name = name
        self.out = out or sys.stdout
        self._said: set[str] = set()

    def __call__(self, text: str, once: str | None = None, event: str | None = None) -> None:
        if once:
            if once in self._said:
                return
            self._said.add(once)
        print(Voice.line_format(self.name, text, event), file=self.out, flush=True)


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
