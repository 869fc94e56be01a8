"""TEST ONLY fault-injection points, inert unless RAFTFL_TEST_HOLD is set.

`RAFTFL_TEST_HOLD="phase:round:seconds[,...]"` makes the process sleep at that point of that
round, so the fault harness can kill or freeze it at an exact phase:

    round_start  aggregator, before recording round_started (between rounds)
    fit_start    aggregator, after round_started, before instructions go out (before fit)
    fit          worker, inside fit (during fit)
    checkpoint   aggregator, after aggregation, before the checkpoint write

`RAFTFL_TEST_HOSTILE="fault[@R][,...]"` makes a worker tamper with its own train replies (with
`@R`, only in global round R), as a hostile worker would; the aggregator must refuse them:

    nan          the first array's first value becomes NaN
    shape        the first array loses its last row
    examples=N   every `num-examples` metric becomes N
"""

from __future__ import annotations

import logging
import os
import time

log = logging.getLogger(__name__)
HOLD_ENV = "RAFTFL_TEST_HOLD"
HOSTILE_ENV = "RAFTFL_TEST_HOSTILE"


def hold(phase: str, rnd: int) -> None:
    for spec in filter(None, os.environ.get(HOLD_ENV, "").split(",")):
        want_phase, _, rest = spec.partition(":")
        want_round, _, seconds = rest.partition(":")
        if want_phase == phase and want_round.isdigit() and int(want_round) == rnd:
            log.warning("test hold: %s of round %d for %ss", phase, rnd, seconds or 5)
            time.sleep(float(seconds or 5))


def tamper(reply: bytes, rnd: int) -> bytes:
    """A worker's encoded reply in global round `rnd`, tampered with as `RAFTFL_TEST_HOSTILE`
    says (a train reply with content only); unchanged when it is unset."""
    faults = [f for f in os.environ.get(HOSTILE_ENV, "").split(",") if f]
    if not faults:
        return reply
    import numpy as np
    from flwr.app import Array

    from raftfl.flower.codec import decode_message, encode_message

    message, extra = decode_message(reply)
    if message.metadata.message_type != "train" or not message.has_content():
        return reply
    arrays = next(iter(message.content.array_records.values()), None)
    for fault in faults:
        fault, _, nth = fault.partition("@")
        if nth and int(nth) != rnd:
            continue
        name, _, value = fault.partition("=")
        if name in ("nan", "shape") and arrays:
            key = next(iter(arrays))
            data = arrays[key].numpy().astype(np.float32)
            if name == "nan":
                data.flat[0] = np.nan
            else:
                data = data[:-1]
            arrays[key] = Array(np.ascontiguousarray(data))
        elif name == "examples":
            for record in message.content.metric_records.values():
                if "num-examples" in record:
                    record["num-examples"] = int(value)
        log.warning("test hostile: %s in the train reply", fault)
    return encode_message(message, extra)
