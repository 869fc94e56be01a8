"""TEST ONLY fault-injection points, inert unless RAFTFL_TEST_HOLD is set.

`RAFTFL_TEST_HOLD="phase:round:seconds[,...]"` makes the process sleep at that point of that
round, so the fault harness can kill or freeze it at an exact phase:

    round_start  aggregator, before recording round_started (between rounds)
    fit_start    aggregator, after round_started, before instructions go out (before fit)
    fit          worker, inside fit (during fit)
    checkpoint   aggregator, after aggregation, before the checkpoint write
"""

from __future__ import annotations

import logging
import os
import time

log = logging.getLogger(__name__)
HOLD_ENV = "RAFTFL_TEST_HOLD"


def hold(phase: str, rnd: int) -> None:
    for spec in filter(None, os.environ.get(HOLD_ENV, "").split(",")):
        want_phase, _, rest = spec.partition(":")
        want_round, _, seconds = rest.partition(":")
        if want_phase == phase and want_round.isdigit() and int(want_round) == rnd:
            log.warning("test hold: %s of round %d for %ss", phase, rnd, seconds or 5)
            time.sleep(float(seconds or 5))
