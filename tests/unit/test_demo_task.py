"""The demo's own task settings: keys of the bundled app, under the user's --run-config."""

from __future__ import annotations

import pytest

from raftfl.flower.app import load_app, parse_config
from raftfl.lab.demo import DEMO_TASK, _with_demo_task
from raftfl.node.runapp import bundled_app

pytestmark = pytest.mark.unit


def test_the_demo_task_sets_keys_the_bundled_app_has() -> None:
    assert set(DEMO_TASK) <= set(load_app(bundled_app()).config)
    assert parse_config(_with_demo_task(None)) == DEMO_TASK


def test_the_users_run_config_wins_key_by_key() -> None:
    fused = parse_config(_with_demo_task('learning-rate=0.1 strategy="fedprox"'))
    assert fused == {**DEMO_TASK, "learning-rate": 0.1, "strategy": "fedprox"}
