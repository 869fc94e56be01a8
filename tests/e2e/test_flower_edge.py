"""The Flower edge on its own (no etcd): a real fleet server on 127.0.0.1, real workers in
threads, the user's ServerApp on a RaftGrid and ClientApps answering over HTTP.

Fast runs: the quickstart app on a few hundred synthetic images; the mechanics (resume, a
killed worker, stale terms, stopping) on a numpy-only test app whose every call is observable.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAdam, FedAvg

import raftfl
from raftfl.flower import start as start_module
from raftfl.flower.app import load_app
from raftfl.flower.codec import arrays_sha256
from raftfl.flower.fleet import FleetClient, FleetError, FleetServer
from raftfl.flower.grid import MOD_FAILED_PRECONDITION, NODE_UNAVAILABLE, RaftGrid, Resume, Stamp
from raftfl.flower.hooks import RoundReport, TrainReport
from raftfl.flower.host import ClientAppHost, ServerAppHost
from raftfl.flower.start import NoTrainResults
from raftfl.lab.localcluster import port_slice

HOST = "127.0.0.1"
RUN_ID = 42
QUICKSTART = Path(__file__).resolve().parents[2] / "examples" / "quickstart"
# The synthetic set is about as hard as CIFAR-10: 900 images, 2 local epochs are what it takes
# for 3 rounds to lower the central loss.
SMALL = "train-size=900 test-size=90 batch-size=32 local-epochs=2 learning-rate=0.03"


def start_fleet(**kwargs: Any) -> FleetServer:
    """A fleet server on a random free port below 32768."""
    for _ in range(50):
        try:
            return FleetServer(HOST, random.randrange(*port_slice(20000, 32000)), **kwargs).start()
        except OSError:
            continue
    raise RuntimeError("no free port for the fleet server")


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@dataclass
class Recorder:
    """RoundHooks that remember every call; `deposed_at` makes that round's commit fail."""

    deposed_at: int | None = None
    started: list[int] = field(default_factory=list)
    trained: list[tuple[int, TrainReport]] = field(default_factory=list)
    commits: list[tuple[int, RoundReport]] = field(default_factory=list)
    arrays: dict[int, ArrayRecord] = field(default_factory=dict)
    states: dict[int, bytes] = field(default_factory=dict)  # the ServerApp's, per commit

    def round_started(self, server_round: int) -> bool:
        self.started.append(server_round)
        return True

    def train_done(self, server_round: int, report: TrainReport) -> None:
        self.trained.append((server_round, report))

    def commit(self, server_round: int, arrays: ArrayRecord, report: RoundReport,
               state: bytes = b"") -> bool:
        if server_round == self.deposed_at:
            return False
        self.commits.append((server_round, report))
        self.arrays[server_round] = arrays
        self.states[server_round] = state
        return True

    def committed(self) -> list[int]:
        return [rnd for rnd, _ in self.commits]


@dataclass
class Worker:
    host: ClientAppHost
    client: FleetClient
    thread: threading.Thread
    error: list[BaseException] = field(default_factory=list)


@dataclass
class Federation:
    fleet: FleetServer
    grid: RaftGrid
    server: ServerAppHost
    workers: list[Worker]


def _serve(worker: Worker) -> None:
    try:
        worker.client.run(worker.host.handle)
    except FleetError as exc:
        worker.error.append(exc)


@contextmanager
def federation(server_app: Any, client_app: Any, run_config: dict[str, Any], hooks: Recorder, *,
               workers: int = 3, term: int = 1, resume: Resume | None = None,
               admit: Callable[[Stamp, Message], str | None] | None = None,
               node_timeout: float = 3.0) -> Iterator[Federation]:
    """Fleet + `workers` connected ClientApps + the ServerApp (started once all are connected);
    everything is stopped and joined on exit, also when the test failed."""
    fleet = start_fleet(node_timeout=node_timeout)
    started: list[Worker] = []
    try:
        for i in range(workers):
            host = ClientAppHost(client_app, run_id=RUN_ID, node_id=10 + i,
                                 node_config={"partition-id": i, "num-partitions": workers},
                                 run_config=run_config, admit=admit)
            worker = Worker(host, FleetClient(fleet.address, 10 + i, f"w{i}"), threading.Thread())
            worker.thread = threading.Thread(target=_serve, args=(worker,), daemon=True)
            worker.thread.start()
            started.append(worker)
        wait_until(lambda: len(fleet.node_ids()) == workers, 10, "workers to register")
        grid = RaftGrid(fleet, run_id=RUN_ID, term=term, hooks=hooks, resume=resume)
        yield Federation(fleet, grid, ServerAppHost(server_app, grid, run_config).start(), started)
    finally:
        fleet.stop()
        for worker in started:
            worker.client.abort()
        for worker in started:
            worker.thread.join(10)


# ---------------------------------------------------------------- the quickstart app

def _run_quickstart(overrides: str, rounds: int) -> tuple[Recorder, Federation, list[Any]]:
    app = load_app(QUICKSTART)
    run_config = app.run_config(f"num-server-rounds={rounds} {SMALL} {overrides}")
    hooks = Recorder()
    seen: list[Any] = []

    def admit(stamp: Stamp, message: Message) -> None:
        seen.append((stamp, message.metadata.message_type, dict(message.content["config"])))

    with federation(app.load_server_app(), app.load_client_app(), run_config, hooks,
                    admit=admit) as fed:
        assert fed.server.join(180), "ServerApp did not finish"
    assert fed.server.state == "completed", fed.server.error
    return hooks, fed, seen


def test_quickstart_fedavg_three_workers_three_rounds() -> None:
    hooks, _, seen = _run_quickstart("fraction-evaluate=1.0", 3)
    assert hooks.committed() == [0, 1, 2, 3]  # round 0 = the initial model, once each
    assert hooks.started == [1, 2, 3]
    for rnd, report in hooks.commits[1:]:
        assert (report.train.results, report.train.failures) == (3, 0), rnd
        assert report.evaluate_results == 3 and report.evaluate_clientapp is not None
        assert sorted(m["node_id"] for m in report.train.client_metrics) == [10, 11, 12]
    central = {rnd: report.evaluate_serverapp for rnd, report in hooks.commits}
    assert set(central) == {0, 1, 2, 3} and all("accuracy" in m for m in central.values())
    assert central[3]["loss"] < central[0]["loss"]  # it learns
    hashes = [report.sha256 for _, report in hooks.commits]
    assert len(set(hashes)) == 4
    assert arrays_sha256(hooks.arrays[3]) == hashes[3]
    # every instruction was stamped with its global round and the model it started from
    train_stamps = [(s.round, s.base, s.term) for s, kind, _ in seen if kind == "train"]
    assert sorted(train_stamps) == sorted((r, hashes[r - 1], 1) for r in (1, 2, 3) for _ in range(3))
    # the user's final model converts to a torch state_dict
    assert set(hooks.arrays[3].to_torch_state_dict()) >= {"conv1.weight", "fc3.bias"}


@pytest.mark.parametrize("strategy", ["fedprox", "fedadam"])
def test_quickstart_fedprox_and_fedadam(strategy: str) -> None:
    hooks, _, seen = _run_quickstart(f'strategy="{strategy}" fraction-evaluate=0.5', 2)
    assert hooks.committed() == [0, 1, 2]
    assert all(np.isfinite(report.evaluate_serverapp["loss"]) for _, report in hooks.commits)
    assert all(report.train.results == 3 for _, report in hooks.commits[1:])
    train_configs = [config for _, kind, config in seen if kind == "train"]
    if strategy == "fedprox":
        assert {c.get("proximal-mu") for c in train_configs} == {0.1}
    else:
        assert all("proximal-mu" not in c for c in train_configs)


# ---------------------------------------------------------------- mechanics, on a numpy app

@dataclass
class Probe:
    """What the test app saw, and a gate that can hold one node's training in one round."""

    evaluate_fn_rounds: list[int] = field(default_factory=list)
    trained: list[tuple[int, int]] = field(default_factory=list)  # (node, round)
    hold: tuple[int, int] | None = None  # (node, round) whose training waits for `release`
    entered: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)


def numpy_apps(probe: Probe, strategy: Callable[[], Any] = lambda: FedAvg(fraction_evaluate=0.0)
               ) -> tuple[ServerApp, ClientApp]:
    server_app, client_app = ServerApp(), ClientApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
            probe.evaluate_fn_rounds.append(server_round)
            return MetricRecord({"sum": float(arrays["w"].numpy().sum())})

        raftfl.start(strategy(), grid=grid,
                     initial_arrays=ArrayRecord({"w": Array(np.zeros(4))}),
                     num_rounds=int(context.run_config["num-server-rounds"]),
                     evaluate_fn=evaluate_fn, timeout=30)

    @client_app.train()
    def train(msg: Message, context: Context) -> Message:
        server_round = int(msg.content["config"]["server-round"])
        probe.trained.append((context.node_id, server_round))
        if probe.hold == (context.node_id, server_round):
            probe.entered.set()
            probe.release.wait(30)
        w = msg.content["arrays"]["w"].numpy() + 1.0
        metrics = MetricRecord({"num-examples": 10, "round": server_round})
        return Message(RecordDict({"arrays": ArrayRecord({"w": Array(w)}), "metrics": metrics}),
                       reply_to=msg)

    return server_app, client_app


def test_resume_at_round_three_of_four_uses_global_rounds() -> None:
    probe, hooks = Probe(), Recorder()
    resumed = ArrayRecord({"w": Array(np.full(4, 2.0))})
    with federation(*numpy_apps(probe), {"num-server-rounds": 4}, hooks,
                    resume=Resume(3, resumed), term=7) as fed:
        assert fed.server.join(60)
    assert fed.server.state == "completed", fed.server.error
    assert probe.evaluate_fn_rounds == [3, 4]  # not 0, 1, 2: those were done before
    assert hooks.started == [3, 4] and hooks.committed() == [3, 4]
    assert sorted({rnd for _, rnd in probe.trained}) == [3, 4]  # configure_train saw 3 and 4
    client_rounds = {m["metrics"]["metrics"]["round"] for _, r in hooks.trained
                     for m in r.client_metrics}
    assert client_rounds == {3, 4}
    assert hooks.commits[-1][1].evaluate_serverapp == {"sum": 16.0}  # (2 + 1 + 1) * 4
    np.testing.assert_array_equal(hooks.arrays[4]["w"].numpy(), np.full(4, 4.0))


def _fedadam() -> FedAdam:
    return FedAdam(fraction_evaluate=0.0)


def test_a_successor_continues_fedadam_with_its_moments() -> None:
    """Rounds 3..4 resumed from round 2's model and recorded state end where 4 uninterrupted
    rounds end; without the state (FedAdam's m_t and v_t from zero) they do not."""
    whole = Recorder()
    with federation(*numpy_apps(Probe(), _fedadam), {"num-server-rounds": 4}, whole) as fed:
        assert fed.server.join(60)
    assert fed.server.state == "completed", fed.server.error
    assert all(whole.states[r] for r in range(5))
    ends = {}
    for label, state in (("with", whole.states[2]), ("without", b"")):
        hooks = Recorder()
        with federation(*numpy_apps(Probe(), _fedadam), {"num-server-rounds": 4}, hooks,
                        resume=Resume(3, whole.arrays[2], state), term=9) as fed:
            assert fed.server.join(60)
        assert fed.server.state == "completed", fed.server.error
        assert hooks.committed() == [3, 4]
        ends[label] = hooks.arrays[4]["w"].numpy()
    np.testing.assert_array_equal(ends["with"], whole.arrays[4]["w"].numpy())
    assert not np.allclose(ends["without"], whole.arrays[4]["w"].numpy())


class _Locked(FedAvg):
    """A strategy holding something no snapshot can record."""

    def __init__(self) -> None:
        super().__init__(fraction_evaluate=0.0)
        self.lock = threading.Lock()


def test_state_that_cannot_be_recorded_is_named_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="raftfl.flower.start")
    with federation(*numpy_apps(Probe(), _Locked), {"num-server-rounds": 3}, Recorder()) as fed:
        assert fed.server.join(60)
    assert fed.server.state == "completed", fed.server.error
    lost = [r.getMessage() for r in caplog.records if "cannot be recorded" in r.getMessage()]
    assert len(lost) == 1 and "strategy.lock" in lost[0], lost


def test_worker_killed_mid_round_counts_as_failure_and_round_commits() -> None:
    probe, hooks = Probe(hold=(12, 2)), Recorder()
    with federation(*numpy_apps(probe), {"num-server-rounds": 3}, hooks,
                    node_timeout=1.0) as fed:
        assert probe.entered.wait(30), "node 12 never started round 2"
        fed.workers[2].client.abort()  # the worker dies mid-round: no reply, no heartbeat
        assert fed.server.join(60)
        probe.release.set()
    assert fed.server.state == "completed", fed.server.error
    assert hooks.committed() == [0, 1, 2, 3]
    reports = dict(hooks.trained)
    assert (reports[2].results, reports[2].failures) == (2, 1)
    assert [e["code"] for e in reports[2].errors] == [NODE_UNAVAILABLE]
    assert (reports[3].sent, reports[3].results, reports[3].failures) == (2, 2, 0)
    assert fed.workers[2].error and "aborted" in str(fed.workers[2].error[0])


def test_stale_term_is_refused_before_the_client_app_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(start_module, "RETRY_WAIT_S", 0.05)
    probe, hooks = Probe(), Recorder()

    def admit(stamp: Stamp, message: Message) -> str | None:
        return None if stamp.term >= 5 else f"term {stamp.term} is stale, current term is 5"

    with federation(*numpy_apps(probe), {"num-server-rounds": 2}, hooks, term=4,
                    admit=admit) as fed:
        assert fed.server.join(60)
    assert probe.trained == []  # the ClientApp never ran
    assert fed.server.state == "failed" and isinstance(fed.server.error, NoTrainResults)
    assert hooks.committed() == [0] and hooks.started == [1, 1, 1]
    for _, report in hooks.trained:
        assert (report.results, report.failures) == (0, 3)
        assert {e["code"] for e in report.errors} == {MOD_FAILED_PRECONDITION}
        assert "stale" in report.errors[0]["reason"]


def test_deposed_commit_stops_the_server_app() -> None:
    probe, hooks = Probe(), Recorder(deposed_at=2)
    with federation(*numpy_apps(probe), {"num-server-rounds": 4}, hooks) as fed:
        assert fed.server.join(60)
    assert fed.server.state == "stopped"
    assert hooks.committed() == [0, 1] and hooks.started == [1, 2]


def test_stopping_the_fleet_unwinds_a_waiting_server_app() -> None:
    probe, hooks = Probe(), Recorder()
    # one worker, FedAvg needs two: the ServerApp waits in Flower's node sampling
    with federation(*numpy_apps(probe), {"num-server-rounds": 2}, hooks, workers=1) as fed:
        time.sleep(1.5)
        assert fed.server.state == "running"
        t0 = time.monotonic()
        fed.server.stop()
        assert fed.server.join(5), "ServerApp still running after stop()"
        assert time.monotonic() - t0 < 2.5
    assert fed.server.state == "stopped" and hooks.committed() == [0]


# ---------------------------------------------------------------- transport failures

def test_stopped_fleet_server_makes_workers_fail_fast() -> None:
    probe, hooks = Probe(), Recorder()
    with federation(*numpy_apps(probe), {"num-server-rounds": 1}, hooks) as fed:
        assert fed.server.join(30)
        t0 = time.monotonic()
        fed.fleet.stop()
        for worker in fed.workers:
            worker.thread.join(5)
        elapsed = time.monotonic() - t0
    assert all(w.error and isinstance(w.error[0], FleetError) for w in fed.workers)
    assert elapsed < 1.5, f"workers took {elapsed:.2f} s to notice"


def test_worker_of_a_vanished_server_fails_within_a_second() -> None:
    fleet = start_fleet()
    address = fleet.address
    fleet.stop()  # nothing listens there any more
    t0 = time.monotonic()
    with pytest.raises(FleetError, match="Connection refused"):
        FleetClient(address, 10).run(lambda msg_id, payload: b"")
    assert time.monotonic() - t0 < 1.0


def test_busy_port_is_one_clear_os_error() -> None:
    fleet = start_fleet()
    try:
        host, port = fleet.address.rsplit(":", 1)
        with pytest.raises(OSError) as info:
            FleetServer(host, int(port))
        assert f"cannot serve the Flower fleet on {fleet.address}" in str(info.value)
        assert "\n" not in str(info.value)
    finally:
        fleet.stop()
