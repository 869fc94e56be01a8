"""`--log-format json`: every line a node writes is one JSON object with the same keys.

Two real nodes train a short run with `--log-format json`; their output (stdout and stderr,
as the lab's cluster collects them in one file per node) must be JSON lines only, each with
time (ISO 8601, UTC), level, node, term, run, round and event, and once the node has
cycled its lines say where it stands.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from raftfl.lab.localcluster import LocalCluster

pytestmark = pytest.mark.slow
RUN_TIMEOUT_S = 120.0
KEYS = {"time", "level", "node", "term", "run", "round", "event"}


def test_every_line_of_a_json_node_is_a_json_object(tmp_path: Path) -> None:
    with LocalCluster(n=2, rounds=2, cluster="t-json", train_size=400, test_size=200,
                      workdir=tmp_path, extra_args=["--log-format", "json"]) as cluster:
        cluster.wait_event(lambda e: e.type == "run_completed", RUN_TIMEOUT_S,
                           "the run to complete")
        cluster.wait_exit(60)
        said: dict[str, list[dict[str, Any]]] = {}
        for node in cluster.nodes:
            texts = node.log_path.read_text().splitlines()
            assert texts, f"{node.name} wrote nothing"
            for text in texts:
                line = json.loads(text)
                assert KEYS <= set(line), text
                assert line["node"] == node.name
                assert line["time"].endswith("Z") and datetime.fromisoformat(line["time"][:-1])
                assert all(line[k] is None or type(line[k]) is int for k in ("term", "run", "round"))
                said.setdefault(node.name, []).append(line)
        for lines in said.values():
            assert any(line["event"].startswith("etcd healthy") for line in lines)
        # Once the node has cycled, its lines say where it stands: the term, run 1, a round.
        committed = [line for line in said[cluster.nodes[0].name]
                     if (line.get("text") or line["event"]).startswith("round 2 committed")]
        assert committed and all(line["run"] == 1 and line["term"] and line["round"] in (2, 3)
                                 for line in committed), committed
