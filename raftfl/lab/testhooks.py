"""TEST ONLY fault hooks, as the RAFTFL_TEST_* variables of a lab-launched node say.

The lab starts its nodes with `python -m raftfl.lab.node` (raftfl/lab/node.py), which builds
`hooks_from_env()` and injects it into the node; the product never reads these variables.

`RAFTFL_TEST_HOLD="phase:round:seconds[,...]"` makes the process sleep at that point of that
round, so the fault harness can kill or freeze it at an exact phase:

    round_start  aggregator, before recording round_started (between rounds)
    fit_start    aggregator, after round_started, before instructions go out (before fit)
    fit          worker, inside fit (during fit)
    checkpoint   aggregator, after aggregation, before the checkpoint write
    call         worker, answering grid call N of a ServerApp with its own loop ("round" N)

`RAFTFL_TEST_HOSTILE="fault[@R][,...]"` makes a worker tamper with its own replies (with `@R`,
only in global round R), as a hostile worker would; the aggregator must refuse them:

    nan              train: the first array's first value becomes NaN
    shape            train: the first array loses its last row
    f64=V            train: the first array becomes float64, its first value V (e.g. 1e300)
    examples=N       train: every `num-examples` metric becomes N
    eval-examples=N  evaluate: every `num-examples` metric becomes N

`RAFTFL_TEST_EXTRA_RTT_MS=N` adds N ms to every RTT the node measures: on loopback all RTTs
are equal, so tests use it to make one node look far away.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass

from raftfl.node.faults import NO_FAULTS, FaultHooks

log = logging.getLogger(__name__)
HOLD_ENV = "RAFTFL_TEST_HOLD"
HOSTILE_ENV = "RAFTFL_TEST_HOSTILE"
EXTRA_RTT_ENV = "RAFTFL_TEST_EXTRA_RTT_MS"


@dataclass(frozen=True)
class Hold:
    phase: str
    round: int
    seconds: float


def _holds(text: str) -> tuple[Hold, ...]:
    holds = []
    for spec in filter(None, text.split(",")):
        phase, _, rest = spec.partition(":")
        rnd, _, seconds = rest.partition(":")
        if rnd.isdigit():
            holds.append(Hold(phase, int(rnd), float(seconds or 5)))
    return tuple(holds)


def _extra_rtt(raw: str) -> float:
    try:
        return float(raw) if raw else 0.0
    except ValueError:
        log.warning("ignoring %s=%r: not a number", EXTRA_RTT_ENV, raw)
        return 0.0


class EnvFaultHooks:
    """The `FaultHooks` (raftfl/node/faults.py) that RAFTFL_TEST_HOLD, RAFTFL_TEST_HOSTILE and
    RAFTFL_TEST_EXTRA_RTT_MS in `env` describe; says once, as a warning, what they will do."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.holds = _holds(env.get(HOLD_ENV, ""))
        self.hostile = tuple(f for f in env.get(HOSTILE_ENV, "").split(",") if f)
        self.extra_rtt_ms = _extra_rtt(env.get(EXTRA_RTT_ENV, ""))
        log.warning("TEST ONLY fault hooks: hold %s; hostile %s; extra RTT %g ms",
                    ",".join(f"{h.phase}:{h.round}:{h.seconds:g}" for h in self.holds) or "none",
                    ",".join(self.hostile) or "none", self.extra_rtt_ms)

    def hold(self, phase: str, rnd: int) -> None:
        for hold in self.holds:
            if hold.phase == phase and hold.round == rnd:
                log.warning("test hold: %s of round %d for %gs", phase, rnd, hold.seconds)
                time.sleep(hold.seconds)

    def tamper(self, reply: bytes, rnd: int) -> bytes:
        """A worker's encoded reply in global round `rnd`, tampered with as RAFTFL_TEST_HOSTILE
        says (a train or evaluate reply with content only); unchanged when it is unset."""
        if not self.hostile:
            return reply
        import numpy as np
        from flwr.app import Array

        from raftfl.flower.codec import decode_message, encode_message

        message, extra = decode_message(reply)
        kind = message.metadata.message_type
        if kind not in ("train", "evaluate") or not message.has_content():
            return reply
        arrays = next(iter(message.content.array_records.values()), None)
        for fault in self.hostile:
            fault, _, nth = fault.partition("@")
            name, _, value = fault.partition("=")
            if (nth and int(nth) != rnd) or (name == "eval-examples") != (kind == "evaluate"):
                continue
            if name in ("nan", "shape", "f64") and arrays:
                key = next(iter(arrays))
                data = arrays[key].numpy().astype(np.float64 if name == "f64" else np.float32)
                if name == "shape":
                    data = data[:-1]
                else:
                    data.flat[0] = np.nan if name == "nan" else float(value)
                arrays[key] = Array(np.ascontiguousarray(data))
            elif name in ("examples", "eval-examples"):
                for record in message.content.metric_records.values():
                    if "num-examples" in record:
                        record["num-examples"] = int(value)
            log.warning("test hostile: %s in the %s reply", fault, kind)
        return encode_message(message, extra)


def hooks_from_env(env: Mapping[str, str] = os.environ) -> FaultHooks:
    """`EnvFaultHooks` when a RAFTFL_TEST_* variable is set, else `NO_FAULTS`."""
    if any(env.get(name) for name in (HOLD_ENV, HOSTILE_ENV, EXTRA_RTT_ENV)):
        return EnvFaultHooks(env)
    return NO_FAULTS
