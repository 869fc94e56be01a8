"""`raftfl worker`'s run check (raftfl/node/edge_runs.py) and its command line's bad input."""

from __future__ import annotations

import subprocess
import sys

import pytest

from raftfl.node.edge_runs import RunInfo, mismatch, run_info

SHA = "a" * 64


@pytest.mark.parametrize(("body", "expected"), [
    ({"run": 2, "app": "scale", "app_sha256": SHA, "run_config": {"x": 1}},
     RunInfo(2, "scale", SHA, {"x": 1})),
    ({"run": "2", "app": "scale", "app_sha256": SHA, "run_config": {}}, None),
    ({"run": 2, "app": "scale", "app_sha256": SHA}, None),
    ({"run": 2, "app": None, "app_sha256": SHA, "run_config": {}}, None),
    ({"run": True, "app": "scale", "app_sha256": SHA, "run_config": {}}, None),
    ([1, 2], None),
    ({"error": "no active run"}, None),
], ids=["ok", "run-as-text", "no-config", "no-app", "bool-run", "list", "error-body"])
def test_run_info_reads_only_a_whole_answer(body: object, expected: RunInfo | None) -> None:
    assert run_info(body) == expected


@pytest.mark.parametrize(("sha", "refused"), [
    (SHA, None),
    ("b" * 64, "run 2's app 'scale' is aaaaaaaaaaaa, this worker's is bbbbbbbbbbbb"),
], ids=["same-package", "another-package"])
def test_a_worker_serves_only_its_own_app(sha: str, refused: str | None) -> None:
    assert mismatch(RunInfo(2, "scale", SHA, {}), sha) == refused


@pytest.mark.parametrize(("args", "says"), [
    (["--node", "ftp://x", "--app", "examples/scale"], "is not a node API URL"),
    (["--node", "http://127.0.0.1:1", "--app", "/nonexistent"], "does not exist"),
    (["--node", "https://127.0.0.1:1", "--app", "examples/scale", "--cluster", "t-nope-ca"],
     "https node APIs need --certs DIR"),
], ids=["scheme", "app-dir", "https-without-ca"])
def test_worker_bad_input_is_one_line_and_exit_2_or_1(args: list[str], says: str) -> None:
    r = subprocess.run([sys.executable, "-m", "raftfl", "worker", *args], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode in (1, 2) and says in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
