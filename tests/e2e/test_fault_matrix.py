"""CI's fault matrix (`raftfl faults --quick`: SIGKILL of the aggregator in its checkpoint,
Ctrl-C of the aggregator while it trains, SIGKILL of a worker) as tests, so that it runs beside
the other test files instead of after them. Each scenario is a real 3-node cluster; it passes
when every common invariant and the scenario's own promises hold (raftfl/lab/faults.py). The
table with the recovery times is shown at the end of the run (conftest.py)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from raftfl.lab.faults import Scenario, format_table, run_scenario, select

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("scenario", select(quick=True), ids=lambda s: s.name)
def test_quick_fault_matrix(scenario: Scenario,
                            record_property: Callable[[str, object], None]) -> None:
    outcome = run_scenario(scenario, echo=print)
    record_property("fault_matrix", format_table([outcome]).splitlines()[2])
    assert not outcome.skipped, outcome.outcome
    assert outcome.ok, format_table([outcome])
    if scenario.failovers:
        assert len(outcome.recovery_s) == scenario.failovers, outcome
