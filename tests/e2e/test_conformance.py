"""The Flower conformance suite (issue 17): Flower's own examples, made offline with small
synthetic data (examples/conformance, see its NOTICE), each run UNMODIFIED by `raftfl demo`
on 3 real node processes with the aggregator SIGKILLed mid-round 2, and judged by outcome:

* round-based apps (`strategy.start`): every round committed exactly once, one failover,
  both survivors hold the same final model, federated-evaluation metrics in every round
  where the app asks for them;
* apps with their own loop (custom `@app.main()`, SecAgg+ inside `DefaultWorkflow`, query
  messages): the run completes once, its journaled grid calls are recorded once each
  (1..K), one failover; the custom loop's final arrays (the sha256 its resumed ServerApp
  logs) equal those of an uninterrupted run.

The apps never import raftfl (checked here too). Run one at a time: each starts a cluster.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest

from raftfl.core.events import AggregatorElected, RoundStarted
from raftfl.lab.demo import kill_point
from raftfl.lab.testhooks import HOLD_ENV

ROOT = Path(__file__).resolve().parents[2]
APPS = ROOT / "examples" / "conformance"
FINAL_LINE = re.compile(r"custom-loop final arrays sha256 ([0-9a-f]{64})")


@dataclass(frozen=True)
class Case:
    app: str
    rounds: int  # --rounds: the app's num-server-rounds
    own_loop: bool = False  # drives the grid itself: journaled calls, no committed rounds
    kill_at: int = 2
    client_eval: frozenset[str] = frozenset()  # evaluate_clientapp keys asked for, per round
    server_eval: frozenset[str] = frozenset()  # the app's evaluate_fn keys, per round
    min_calls: int = 0  # own loop: grid calls an uninterrupted run makes at least
    failed_line: str = ""  # a line the app logs when it silently gave up on a round


EVAL = frozenset({"eval_loss", "eval_acc"})
CASES = [
    # fraction-evaluate 0.5 of 3 nodes: Flower's FedAvg samples 2 (min_evaluate_nodes).
    Case("quickstart-pytorch", rounds=3, client_eval=EVAL,
         server_eval=frozenset({"accuracy", "loss"})),
    # The template's FedAvg keeps fraction_evaluate=1.0: federated evaluation every round.
    Case("flwr-new-pytorch", rounds=3, client_eval=EVAL),
    # FedAdam's moments and the DP accountant are restored by the successor (durable.py);
    # `raftfl bench transparency` compares their final models and epsilon with a worker kill.
    Case("fedadam", rounds=3, client_eval=EVAL, server_eval=frozenset({"accuracy", "loss"})),
    # No federated evaluation: Flower's fixedclipping_mod raises on evaluate messages.
    Case("dp-fixed-clipping", rounds=3, server_eval=frozenset({"accuracy", "loss", "epsilon"})),
    # SecAgg+ in DefaultWorkflow: 5 grid calls a round (setup, share keys, collect masked
    # vectors, unmask; evaluate). Killed in call 2, round 1's share-keys stage (`demo` takes
    # no --kill-aggregator-at above --rounds, so round 2's calls 6..10 are out of reach).
    Case("secagg", rounds=3, own_loop=True, min_calls=15,
         failed_line="Secure aggregation halted"),
    # Call 1 reads the node ids, call 2 is the one query: killed in the middle of the query,
    # its successor replays call 1 (the same nodes, the same sample) and sends the query.
    Case("federated-analytics", rounds=1, own_loop=True, kill_at=2, min_calls=2),
    Case("custom-loop", rounds=3, own_loop=True, min_calls=3),
]


@pytest.mark.e2e
@pytest.mark.parametrize("case", CASES, ids=[c.app for c in CASES])
def test_flower_app_survives_an_aggregator_kill(case: Case, tmp_path: Path) -> None:
    app = APPS / case.app
    assert not [p for p in app.rglob("*.py") if re.search(r"^\s*(import|from) raftfl\b",
                                                           p.read_text(), re.M)], \
        "a conformance app names raftfl"
    killed = _demo(app, case, tmp_path / "killed", kill=True)
    assert len(killed["failovers"]) == 1, killed["failovers"]
    finals = killed["final_model_sha256"]
    assert len(finals) == 2 and len(set(finals.values())) == 1, finals  # both survivors agree
    if case.failed_line:
        assert not _logged(tmp_path / "killed", case.failed_line), case.failed_line
    if case.app == "custom-loop":  # the result first: it is what a user sees
        resumed = _final_digest(tmp_path / "killed")
        clean = _demo(app, case, tmp_path / "clean", kill=False)
        assert _final_digest(tmp_path / "clean") == resumed, "the failover changed the result"
        _own_loop_outcome(case, clean)
    if case.own_loop:
        _own_loop_outcome(case, killed)
    else:
        _round_outcome(case, killed)


def _round_outcome(case: Case, summary: dict) -> None:
    assert summary["committed_rounds"] == list(range(1, case.rounds + 1))  # each exactly once
    # Round 1 by the first term; round 2 (interrupted by the kill) on by the second.
    terms = summary["terms"]
    assert terms[0] < terms[1] == terms[-1], terms
    assert next(iter(summary["final_model_sha256"].values()))  # a model, not ""
    for r, metrics in enumerate(summary["metrics"], start=1):
        assert metrics["train"]["train_loss"] > 0, (r, metrics)
        if case.client_eval:
            assert case.client_eval <= set(metrics.get("evaluate_clientapp", {})), (r, metrics)
        if case.server_eval:
            assert case.server_eval <= set(metrics.get("evaluate_serverapp", {})), (r, metrics)


def _own_loop_outcome(case: Case, summary: dict) -> None:
    assert summary["run_completed"] == 1
    assert summary["committed_rounds"] == []
    assert set(summary["final_model_sha256"].values()) == {""}  # no model committed
    calls = summary["grid_calls"]
    # Each call once, in order; the successor may ask the record's last call again when it is
    # a read of the node ids (those may have died with the aggregator): once, at the kill.
    assert sorted(set(calls)) == list(range(1, max(calls) + 1)), f"calls skipped: {calls}"
    assert len(calls) - len(set(calls)) <= 1, f"calls recorded twice: {calls}"
    assert len(set(calls)) >= case.min_calls, calls


def _hold(case: Case, kill: bool) -> dict[str, str]:
    """An own-loop app's call can end before the kill lands (a query takes milliseconds): its
    workers hold 2 s in the call the aggregator dies in, so the kill is mid-call (the next
    few calls too: reading the node ids, which workers never see, may take call numbers)."""
    calls = range(case.kill_at, case.kill_at + 4)
    return {HOLD_ENV: ",".join(f"call:{c}:2" for c in calls)} if kill and case.own_loop else {}


def _demo(app: Path, case: Case, out: Path, kill: bool) -> dict:
    """`raftfl demo` on 3 nodes; its cluster's logs kept under `out` (TMPDIR), its summary."""
    (out / "tmp").mkdir(parents=True)
    summary = out / "summary.json"
    proc = subprocess.run(
        [sys.executable, "-m", "raftfl", "demo", "--app", str(app), "--nodes", "3",
         "--rounds", str(case.rounds), "--dataset", "synthetic", "--summary-json", str(summary),
         "--out", str(out / "out"), "--keep",
         *(["--kill-aggregator-at", str(case.kill_at)] if kill else [])],
        capture_output=True, text=True, timeout=900, cwd=out,
        env={**os.environ, "TMPDIR": str(out / "tmp"), **_hold(case, kill)})
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    result = json.loads(summary.read_text())
    assert result["ok"], result["violations"]
    return result


def _node_logs(out: Path) -> list[Path]:
    return sorted((out / "tmp").glob("raftfl-*/node*.log"))


def _logged(out: Path, text: str) -> list[str]:
    """The node logs (file names) with a line containing `text`."""
    return [log.name for log in _node_logs(out) if text in log.read_text(errors="replace")]


def _final_digest(out: Path) -> str:
    """The final-arrays digest the custom loop's ServerApp logged, from one node's log:
    the ServerApp that finished (after a failover, the resumed one). Flower's logger writes
    each line twice to a node's log (its console handler and the node's)."""
    found = {log.name: {m.group(1) for m in FINAL_LINE.finditer(log.read_text(errors="replace"))}
             for log in _node_logs(out)}
    found = {name: digests for name, digests in found.items() if digests}
    assert len(found) == 1 and len(next(iter(found.values()))) == 1, found
    return next(iter(next(iter(found.values()))))


@pytest.mark.unit
@pytest.mark.parametrize(("event", "kill_at", "expected"), [
    (RoundStarted(node="a", term=5, round=2, base_model="x", clients=3), 2, True),
    (RoundStarted(node="a", term=5, round=1, base_model="x", clients=3), 2, False),
    (RoundStarted(node="a", term=5, round=1, base_model="x", clients=3), 1, True),
    (SimpleNamespace(type="grid_exchange", call=1, node="a"), 2, True),
    (SimpleNamespace(type="grid_exchange", call=2, node="a"), 2, False),
    (SimpleNamespace(type="grid_exchange", call=3, node="a"), 4, True),
    (SimpleNamespace(type="grid_exchange", call=1, node="a"), 1, False),
    (AggregatorElected(node="a", term=5, flower_address="a", rank=0, score=None, revision=5,
                       ranking=[]), 1, True),
    (AggregatorElected(node="a", term=5, flower_address="a", rank=0, score=None, revision=5,
                       ranking=[]), 2, False),
    (SimpleNamespace(type="fit_results", node="a"), 2, False),
])
def test_kill_point(event: object, kill_at: int, expected: bool) -> None:
    """Where `--kill-aggregator-at R` strikes: round R's start, or mid-grid-call R of an own
    loop (once call R-1 is recorded; R=1: the first election)."""
    assert kill_point(event, kill_at) is expected
