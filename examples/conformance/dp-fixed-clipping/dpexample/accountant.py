"""A privacy accountant for the Gaussian mechanism: Rényi DP, composed over releases.

Flower's public API (flwr 1.42) offers no accountant, so this app brings its own. Each round
releases one noised aggregate: the central-DP wrappers clip every update to `clipping_norm`
and add Gaussian noise of standard deviation `noise_multiplier * clipping_norm / n` to the
mean of n updates, a Gaussian mechanism of noise multiplier `noise_multiplier` (every node
takes part in every round: no sampling amplification). Its Rényi DP of order a is
a / (2 sigma^2) per release; T releases compose to T a / (2 sigma^2), which converts to
(epsilon, delta)-DP as epsilon = min over a of T a / (2 sigma^2) + log(1 / delta) / (a - 1)
(Mironov, "Rényi Differential Privacy", 2017, Propositions 1 and 3).

The step count is the whole state: `state_dict()` / `load_state_dict()` expose it (plain
scalars), so a host that takes over a run can carry the privacy spent so far. An accountant
that restarts at zero under-reports epsilon.
"""

from __future__ import annotations

import math
from typing import Any

ORDERS = (1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 12.0, 16.0, 20.0, 24.0,
          32.0, 48.0, 64.0, 128.0, 256.0, 512.0, 1024.0)


class GaussianRdpAccountant:
    """Privacy spent by `steps` releases of a Gaussian mechanism, at a fixed delta."""

    def __init__(self, noise_multiplier: float, delta: float) -> None:
        if not noise_multiplier > 0:
            raise ValueError("the noise multiplier must be positive")
        if not 0 < delta < 1:
            raise ValueError("delta must be in (0, 1)")
        self.noise_multiplier = float(noise_multiplier)
        self.delta = float(delta)
        self.steps = 0

    def step(self) -> None:
        """Account for one more release."""
        self.steps += 1

    def epsilon(self) -> float:
        """Epsilon of the releases so far, at `delta` (0.0 before the first one)."""
        if self.steps == 0:
            return 0.0
        per_order = self.steps / (2 * self.noise_multiplier ** 2)
        return min(per_order * a + math.log(1 / self.delta) / (a - 1) for a in ORDERS)

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "noise_multiplier": self.noise_multiplier,
                "delta": self.delta}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        steps = state.get("steps")
        if type(steps) is not int or steps < 0:
            raise ValueError(f"steps must be a count, not {steps!r}")
        if (state.get("noise_multiplier"), state.get("delta")) != (self.noise_multiplier,
                                                                   self.delta):
            raise ValueError("the state is of an accountant with other parameters: "
                             f"{state.get('noise_multiplier')}, {state.get('delta')}")
        self.steps = steps
