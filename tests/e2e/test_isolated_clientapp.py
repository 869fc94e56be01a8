"""`--isolation process` on three real nodes: the quick-start app, whose ClientApp on
partition 1 kills its own process (`os._exit`) in round 2. In-thread that would end the node;
here only the child dies: the round commits from the other two updates, the node trains
round 3 in a fresh child, every round commits once and every node saves the same model.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from raftfl.core.invariants import check
from raftfl.lab.localcluster import LocalCluster

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
WAIT = 240
ROUNDS = 3
CRASH = ("    partition_id, num_partitions = _partition(context)\n"
         "    trainset, _ = task.load_data(")
CRASHING = ("    partition_id, num_partitions = _partition(context)\n"
            "    if partition_id == 1 and int(msg.content['config']['server-round']) == 2:\n"
            "        import os\n"
            "        os._exit(9)  # the test's crash: the ClientApp's process dies mid-round\n"
            "    trainset, _ = task.load_data(")


def children(pid: int) -> list[int]:
    """The PIDs of `pid`'s ClientApp processes (children running raftfl.flower.isolation)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid and b"raftfl.flower.isolation" in cmdline:
            found.append(int(entry.name))
    return found


def test_a_clientapp_process_that_dies_leaves_the_node_and_the_run_whole(tmp_path: Path) -> None:
    app = tmp_path / "app"
    shutil.copytree(ROOT / "examples" / "quickstart", app)
    client = app / "quickstart" / "client_app.py"
    code = client.read_text()
    assert code.count(CRASH) == 1, "the quick-start ClientApp changed: update CRASH"
    client.write_text(code.replace(CRASH, CRASHING))
    (tmp_path / "c").mkdir()
    first = ["--app", str(app), "--run-config",
             'dataset="synthetic" train-size=600 test-size=200']
    with LocalCluster(n=3, rounds=ROUNDS, cluster="t-isolation", workdir=tmp_path / "c",
                      extra_args=["--isolation", "process"],
                      node_args={0: first, 2: ["--isolation-memory-mb", "8000"]}) as c:
        c.wait_event(lambda e: e.type == "round_committed" and e.round == 1, WAIT, "round 1")
        # Node 1's first child may be gone already (it exits in round 2): the others' are alive.
        alive = {n.name: children(n.pid) for n in c.nodes}
        c.wait_event(lambda e: e.type == "run_completed", WAIT, "the run to complete")
        c.wait_exit(60)
        state = c.state()
        finals = c.final_models()
        codes = {n.name: n.proc.poll() if n.proc else None for n in c.nodes}
        logs = {n.name: n.log_path.read_text(errors="replace") for n in c.nodes}
        fits = {i.event.round: i.event for i in c.log if i.event.type == "fit_results"}

    started = re.compile(r"\] ClientApp of run 1 in process (\d+) \(--isolation process\)")
    spawned = {name: [int(pid) for pid in started.findall(text)] for name, text in logs.items()}
    assert all(spawned.values()), spawned  # every node ran its ClientApp in a child
    for name, pids in alive.items():  # at most the one the node said it started
        assert set(pids) <= set(spawned[name]) and len(pids) <= 1, (name, pids, spawned)
    assert codes == dict.fromkeys(codes, 0), codes  # every node lived to the end
    died = re.compile(r"\] ClientApp process died: exited with code 9 \(pid \d+\)")
    crashed = [name for name, text in logs.items() if died.search(text)]
    assert len(crashed) == 1, {name: text[-3000:] for name, text in logs.items()}
    assert crashed[0] != c.nodes[0].name  # partition 1 is a worker's; the aggregator's
    assert re.search(r"Received error in reply from node \d+: ClientApp process died: "  # Flower
                     r"exited with code 9", logs[c.nodes[0].name])  # was told why
    assert (fits[2].results, fits[2].failures) == (2, 1), fits[2]
    assert (fits[3].results, fits[3].failures) == (3, 0), fits[3]  # a fresh child trained
    assert state.commit_order == list(range(1, ROUNDS + 1))
    verdict = check(state, ROUNDS, finals)
    assert verdict.ok, verdict.violations
    assert len(finals) == 3 and len(set(finals.values())) == 1
    assert state.completed is not None and set(finals.values()) == {state.completed.model_sha256}
