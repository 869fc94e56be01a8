"""Probe the aggregator's endpoints from a follower, for early takeover (core/evidence.py).

A thread of its own, because evidence must arrive in tenths of a second while the HA loop
may sleep for a second: it connects to the holder's etcd client and Flower ports every
`PROBE_INTERVAL_S`, folds the outcomes with the pure `evidence.fold`, publishes the result
as an immutable value, and wakes the loop when the holder turns out to be gone. It decides
nothing itself.
"""

from __future__ import annotations

import errno
import socket
import threading
import time
from collections.abc import Callable

from raftfl.core.evidence import Evidence, Probe, fold, gone

PROBE_INTERVAL_S = 0.05
CONNECT_TIMEOUT_S = 1.0  # well above a WAN round trip: a refusal comes back in one RTT anyway


def probe(host: str, port: int, timeout: float = CONNECT_TIMEOUT_S) -> Probe:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return Probe.OK
    except ConnectionRefusedError:
        return Probe.REFUSED
    except OSError as exc:
        return Probe.REFUSED if exc.errno == errno.ECONNREFUSED else Probe.FAILED


class HolderProbe:
    """`follow` (the HA loop) sets the target; only the probe thread writes `latest`."""

    def __init__(self, evidence_s: float, wake: Callable[[], None]):
        self.evidence_s = evidence_s
        self.wake = wake
        self._target: tuple[int, str, tuple[tuple[str, int], ...]] | None = None
        self.latest: Evidence | None = None  # replaced whole, never mutated
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="holder-probe", daemon=True)
        self._thread.start()

    def follow(self, term: int | None, holder: str | None = None,
               endpoints: tuple[tuple[str, int], ...] = ()) -> None:
        """Probe these endpoints of `holder` for `term`; None stops probing."""
        target = (term, holder or "", endpoints) if term is not None and endpoints else None
        if target != self._target:
            self._target = target

    @property
    def following(self) -> int | None:
        """The term whose holder is probed, if any."""
        target = self._target
        return target[0] if target is not None else None

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(PROBE_INTERVAL_S):
            target, ev = self._target, self.latest
            if target is None:
                self.latest = None
                continue
            if ev is None or ev.term != target[0]:
                ev = Evidence(target[0], target[1])  # a new holder: fresh evidence
            now = time.monotonic()
            new = fold(ev, [probe(h, p) for h, p in target[2]], now)
            if self._target is not target:
                continue  # retargeted while probing: these outcomes belong to the old holder
            self.latest = new
            if gone(new, time.monotonic(), self.evidence_s) and not gone(ev, now, self.evidence_s):
                self.wake()
