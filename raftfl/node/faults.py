"""Fault-injection points a node offers the lab, as one injected object.

The product never reads `RAFTFL_TEST_*` itself: a node runs with `NO_FAULTS` unless the lab
(`python -m raftfl.lab.node`, see raftfl/lab/testhooks.py) builds a `FaultHooks` of its own
and passes it in, which logs once what it will do.
"""

from __future__ import annotations

from typing import Protocol


class FaultHooks(Protocol):
    """What the lab may do to a node: pause at a phase, tamper with a reply, add latency."""

    extra_rtt_ms: float  # added to every RTT the node measures

    def hold(self, phase: str, rnd: int) -> None:
        """Pause at `phase` (round_start, fit_start, fit, checkpoint) of global round `rnd`."""

    def tamper(self, reply: bytes, rnd: int) -> bytes:
        """A worker's encoded reply in global round `rnd`, as a hostile worker would send it."""


class _NoFaults:
    extra_rtt_ms = 0.0

    def hold(self, phase: str, rnd: int) -> None:
        return None

    def tamper(self, reply: bytes, rnd: int) -> bytes:
        return reply


NO_FAULTS: FaultHooks = _NoFaults()
