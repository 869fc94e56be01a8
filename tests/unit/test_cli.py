"""The command line's assembly: the lab's commands come from an entry point, and the fault
hooks a launcher injects reach the node (no etcd, no node process)."""

from __future__ import annotations

import os
from typing import Any

import click
import pytest
from click.testing import CliRunner

from raftfl.cli import cli
from raftfl.cli.node_cmd import FAULT_HOOKS
from raftfl.core.status import Published
from raftfl.lab import commands as lab_cli
from raftfl.lab.testhooks import EXTRA_RTT_ENV, HOLD_ENV, EnvFaultHooks, Hold, hooks_from_env
from raftfl.node.faults import NO_FAULTS

pytestmark = pytest.mark.unit
PRODUCT = {"node", "status", "history", "run", "aggregator", "pause", "resume", "certs",
           "worker"}
LAB = {"demo", "faults", "soak", "bench"}


def test_the_lab_commands_come_from_the_entry_point() -> None:
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0, result.output
    listed = {line.split()[0] for line in result.output.split("Commands:")[1].splitlines()
              if line.strip()}
    assert listed == PRODUCT | LAB


def test_without_the_lab_extra_the_lab_adds_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lab_cli, "find_spec", lambda name: None)
    group = click.Group()
    with pytest.raises(ImportError):
        lab_cli.register(group)
    assert group.commands == {}


def test_the_hooks_come_from_the_environment_only_when_asked() -> None:
    assert hooks_from_env({}) is NO_FAULTS
    assert hooks_from_env({HOLD_ENV: "", EXTRA_RTT_ENV: ""}) is NO_FAULTS
    hooks = hooks_from_env({HOLD_ENV: "fit:2:3,round_start:1,bad:x:1", EXTRA_RTT_ENV: "80"})
    assert isinstance(hooks, EnvFaultHooks)
    assert hooks.holds == (Hold("fit", 2, 3.0), Hold("round_start", 1, 5.0))
    assert hooks.extra_rtt_ms == 80.0


class _Started(Exception):
    pass


@pytest.mark.parametrize("obj", [None, "lab"])
def test_node_start_builds_its_options_once_and_passes_the_hooks(
        obj: str | None, monkeypatch: pytest.MonkeyPatch) -> None:
    import raftfl.node.ha

    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.setenv(var, os.environ.get(var, "1"))  # node start sets them
    seen: dict[str, Any] = {}

    class FakeNode:
        def __init__(self, opts: Any, hooks: Any) -> None:
            seen.update(opts=opts, hooks=hooks)
            self.published = Published()

        def run(self) -> int:
            raise _Started

    monkeypatch.setattr(raftfl.node.ha, "Node", FakeNode)
    hooks = EnvFaultHooks({HOLD_ENV: "fit:1:1"})
    result = CliRunner().invoke(
        cli, ["node", "start", "-a", "self", "-r", "2", "-s", "127.0.0.1:5000", "--exit-on-complete",
              "--insecure", "--max-voters", "3", "--voter-grace", "7"],
        obj={FAULT_HOOKS: hooks} if obj else None)
    assert isinstance(result.exception, _Started), result.output
    assert seen["hooks"] is (hooks if obj else NO_FAULTS)
    opts = seen["opts"]
    assert (opts.exit_on_complete, opts.max_voters, opts.voter_grace) == (True, 3, 7.0)
