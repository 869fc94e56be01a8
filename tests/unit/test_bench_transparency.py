"""`raftfl bench transparency`'s pure parts: the models' relative difference, epsilon from the
event log, and whether a run followed its scenario. No processes."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord

from raftfl.core.events import AggregatorElected, RoundCommitted, RoundStarted, RunStarted
from raftfl.core.replay import Logged, replay
from raftfl.lab.bench_transparency import (
    TARGET_MAX_REL_DIFF,
    RunOutcome,
    compare,
    deviation,
    epsilon_after,
    max_rel_diff,
    max_rel_diff_elementwise,
    round_rows,
)

W = np.array([[1.0, -2.0], [4.0, 0.5]])
B = np.array([0.0, 1e-9, 3.0])


@pytest.mark.parametrize(("a", "b", "expected"), [
    ({"w": W, "b": B}, {"w": W, "b": B}, 0.0),
    ({"w": W + 4e-6, "b": B}, {"w": W, "b": B}, 1e-6),  # 4e-6 of the array's scale, 4
    ({"w": W, "b": B + np.array([0.0, 0.0, 3e-3])}, {"w": W, "b": B}, 1e-3),
    ({"w": W, "b": B + np.array([0.0, 1e-9, 0.0])}, {"w": W, "b": B}, 1e-9 / 3),  # not 1
    ({"z": np.zeros(3)}, {"z": np.zeros(3)}, 0.0),  # an all-zero array: no division by zero
    ({"z": np.full(2, 1e-6)}, {"z": np.zeros(2)}, 1e-6 / 1e-12),
    ({"e": np.zeros((0, 4))}, {"e": np.zeros((0, 4))}, 0.0),
])
def test_max_rel_diff_is_relative_to_each_arrays_scale(a: dict, b: dict, expected: float
                                                       ) -> None:
    assert max_rel_diff(a, b) == pytest.approx(expected, rel=1e-6, abs=1e-15)


def test_the_elementwise_figure_is_dominated_by_values_near_zero() -> None:
    a, b = {"b": B + np.array([0.0, 1e-9, 0.0])}, {"b": B}
    assert max_rel_diff(a, b) < 1e-9 and max_rel_diff_elementwise(a, b) == pytest.approx(1.0)


@pytest.mark.parametrize(("a", "b", "message"), [
    ({"w": W}, {"w": W, "b": B}, "different arrays"),
    ({"w": W, "x": B}, {"w": W, "b": B}, "different arrays"),
    ({"w": W[:1]}, {"w": W}, "shape"),
])
def test_models_that_do_not_hold_the_same_arrays_are_refused(a: dict, b: dict, message: str
                                                              ) -> None:
    with pytest.raises(ValueError, match=message):
        max_rel_diff(a, b)


def test_a_nan_is_infinitely_different() -> None:
    assert max_rel_diff({"w": np.array([np.nan, 1.0])}, {"w": np.array([1.0, 1.0])}) == math.inf


def test_npz_files_and_array_records_compare_like_dicts(tmp_path: Path) -> None:
    path = tmp_path / "final_model.npz"
    np.savez(path, w=W.astype(np.float32), b=B.astype(np.float32))
    record = ArrayRecord({"w": Array(W.astype(np.float32) * (1 + 2e-6)),
                          "b": Array(B.astype(np.float32))})
    with np.load(path) as npz:
        assert max_rel_diff(npz, record) == pytest.approx(2e-6, rel=0.05)
        assert max_rel_diff(npz, npz) == 0.0


def _log(metrics_by_round: list[dict[str, Any]], duplicate: dict[str, Any] | None = None
         ) -> list[Logged]:
    events: list = [RunStarted(node="a", rounds=len(metrics_by_round), initial_model="m0"),
                    AggregatorElected(node="a", term=7, flower_address="a:1", rank=0, score=0.0,
                                      revision=7, ranking=[])]
    for r, metrics in enumerate(metrics_by_round, 1):
        events.append(RoundStarted(node="a", term=7, round=r, base_model=f"m{r - 1}", clients=3))
        events.append(RoundCommitted(node="a", term=7, round=r, model_sha256=f"m{r}",
                                     base_model=f"m{r - 1}", loss=1.0, accuracy=0.5, results=3,
                                     metrics=metrics))
    if duplicate is not None:  # a second commit of the last round: replay keeps the first
        r = len(metrics_by_round)
        events.append(RoundCommitted(node="b", term=7, round=r, model_sha256="x",
                                     base_model=f"m{r - 1}", loss=1.0, accuracy=0.5, results=3,
                                     metrics=duplicate))
    return [Logged(i + 1, 100 + i, ev) for i, ev in enumerate(events)]


def _eps(value: Any) -> dict[str, Any]:
    return {"evaluate_serverapp": {"accuracy": 0.5, "epsilon": value}}


@pytest.mark.parametrize(("metrics", "duplicate", "expected"), [
    ([], None, None),  # nothing committed
    ([_eps(1.5), _eps(2.5)], None, 2.5),  # the last round's, not the largest or the first
    ([_eps(1.5), _eps(0)], None, 0.0),  # an int is a number
    ([_eps(1.5), {"evaluate_serverapp": {"accuracy": 0.5}}], None, None),  # not reported
    ([_eps(1.5), {}], None, None),  # no evaluate_fn at all
    ([_eps(1.5), {"evaluate_serverapp": None}], None, None),
    ([_eps(1.5), _eps(True)], None, None),  # a flag is not an epsilon
    ([_eps(1.5), _eps("3.0")], None, None),
    ([_eps(1.5), _eps(2.5)], _eps(9.9), 2.5),  # a duplicate commit does not count
])
def test_epsilon_after_the_last_committed_round(metrics: list, duplicate: Any,
                                                expected: float | None) -> None:
    assert epsilon_after(replay(_log(metrics, duplicate))) == expected


def test_round_rows_carry_accuracy_loss_epsilon_and_the_aggregator() -> None:
    rows = round_rows(replay(_log([_eps(1.5), {}])))
    assert rows == [
        {"round": 1, "accuracy": 0.5, "loss": 1.0, "epsilon": 1.5, "term": 7, "aggregator": "a"},
        {"round": 2, "accuracy": 0.5, "loss": 1.0, "epsilon": None, "term": 7, "aggregator": "a"},
    ]


def _rows(*commits: tuple[str, int]) -> list[dict[str, Any]]:
    return [{"round": r, "aggregator": node, "term": term}
            for r, (node, term) in enumerate(commits, 1)]


V, X, Y = "victim:1", "x:2", "y:3"


@pytest.mark.parametrize(("rows", "kill_aggregator", "problem"), [
    (_rows((V, 6), (V, 6), (X, 50), (X, 50), (X, 50), (X, 50)), True, None),
    (_rows((X, 6), (X, 6), (X, 6), (X, 6), (X, 6), (X, 6)), False, None),
    (_rows((V, 6), (V, 6), (X, 50), (X, 50)), True, None),  # --rounds 4
    ([], True, "no round"),
    # Run B: the role moved early, to the victim, whose kill then was an aggregator's.
    (_rows((V, 18), (V, 18), (X, 83), (X, 83)), False, "not in one term"),
    (_rows((V, 6), (V, 6), (V, 6), (V, 6)), False, "committed a round"),
    (_rows((X, 6), (X, 6), (X, 9), (X, 9)), False, "not in one term"),  # re-elected
    # Run A: someone else held the role before the kill, or a second failover after it.
    (_rows((X, 6), (X, 6), (Y, 50), (Y, 50)), True, "not by node-1"),
    (_rows((V, 6), (X, 9), (Y, 50), (Y, 50)), True, "not in one term"),
    (_rows((V, 6), (V, 6), (X, 50), (Y, 70)), True, "not in one term"),
    (_rows((V, 6), (V, 6), (V, 6), (V, 6)), True, "committed a round"),  # never killed
])
def test_a_run_that_strays_from_its_scenario_is_named(rows: list, kill_aggregator: bool,
                                                      problem: str | None) -> None:
    found = deviation(rows, V, kill_aggregator)
    assert found == problem if problem is None else problem in (found or "")


def _outcome(label: str, arrays: dict | None, epsilon: float | None) -> RunOutcome:
    return RunOutcome(label, True, 1.0, arrays, epsilon=epsilon)


@pytest.mark.parametrize(("scale", "eps_a", "eps_b", "ok", "equal"), [
    (1.0, None, None, True, None),  # FedAdam app: no epsilon
    (1 + TARGET_MAX_REL_DIFF / 2, 14.75, 14.75, True, True),
    (1 + TARGET_MAX_REL_DIFF * 2, 11.75, 14.75, False, False),  # the successor restarted at 0
    (1.0, 14.75, None, True, False),  # one run did not report it
])
def test_compare_judges_both_figures(scale: float, eps_a: float | None, eps_b: float | None,
                                     ok: bool, equal: bool | None) -> None:
    figures = compare(_outcome("killed_aggregator", {"w": W * scale}, eps_a),
                      _outcome("killed_worker", {"w": W}, eps_b))
    assert figures["fedadam_ok"] is ok
    assert figures["epsilon_equal"] is equal
    assert (figures["epsilon_killed_aggregator"], figures["epsilon_killed_worker"]) == (eps_a,
                                                                                        eps_b)


def test_compare_without_a_model_or_with_different_models_says_so() -> None:
    missing = compare(_outcome("a", None, None), _outcome("b", {"w": W}, None))
    assert missing["max_rel_diff"] is None and missing["fedadam_ok"] is False
    other = compare(_outcome("a", {"v": W}, None), _outcome("b", {"w": W}, None))
    assert other["max_rel_diff"] is None and "different arrays" in other["models_comparable"]


def _accountant_class() -> Any:
    """The DP conformance app's accountant, loaded from its file (the app is not a package
    of this repository)."""
    import importlib.util

    path = (Path(__file__).resolve().parents[2] / "examples" / "conformance"
            / "dp-fixed-clipping" / "dpexample" / "accountant.py")
    spec = importlib.util.spec_from_file_location("dp_conformance_accountant", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.GaussianRdpAccountant


def test_the_dp_apps_accountant_grows_and_carries_its_steps_over() -> None:
    accountant = _accountant_class()
    first = accountant(1.0, 1e-5)
    spent = []
    for _ in range(6):
        spent.append(first.epsilon())
        first.step()
    spent.append(first.epsilon())
    assert spent[0] == 0.0 and all(a < b for a, b in zip(spent, spent[1:], strict=False))
    # Mironov's bound for T releases of sigma=1: min over orders of T*a/2 + log(1/delta)/(a-1)
    assert spent[6] == pytest.approx(14.7565, abs=1e-3) and spent[4] == pytest.approx(11.7565,
                                                                                       abs=1e-3)
    successor = accountant(1.0, 1e-5)  # a fresh ServerApp on the next aggregator
    successor.load_state_dict(first.state_dict())
    assert successor.epsilon() == first.epsilon()
    for bad in ({"steps": -1, "noise_multiplier": 1.0, "delta": 1e-5},
                {"steps": 2.0, "noise_multiplier": 1.0, "delta": 1e-5},
                {"steps": True, "noise_multiplier": 1.0, "delta": 1e-5},
                {"steps": 2, "noise_multiplier": 0.5, "delta": 1e-5}, {}):
        with pytest.raises(ValueError):
            successor.load_state_dict(bad)
    assert successor.steps == 6  # a refused state leaves the accountant as it was
