"""A node's view of the federation's runs: which one is active, its app, its final models.

The HA loop asks `refresh()` each cycle. Runs finish for good (completed or stopped), so the
node keeps a floor below which every run is finished and reads only the logs from there on:
a cycle costs the active run's new events plus one probe for a newly submitted run. A node
that (re)starts folds each run's log once, from the run's snapshot and the events after it
(raftfl/etcd/eventlog.py): a completed run's is written with its `run_completed`, so a
finished run costs its snapshot, and the active run its snapshot and at most about 1,000
events, however long their logs.

Each run's app comes from etcd, not from this node's command line. A node started with
trusted keys (--trusted-entities, raftfl/signing.py) first verifies the run's signature over
its spec and package, and refuses (the run's app "cannot be used", with the reason) a run
that is unsigned, signed by another key, or changed since: nothing of it is unpacked. A node
without trusted keys runs unsigned apps, and says so once as it starts. The package is unpacked
into `<data-dir>/apps/<id>/` and imported in the background as soon as the run is active (so
torch is not imported when the first instruction arrives). One run's app is loaded at a
time: loading the next one unloads the previous one's modules, so two runs of apps with the
same module names work in one process.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raftfl import signing
from raftfl.core.keys import Keys
from raftfl.core.replay import FLState
from raftfl.core.specs import RunSpec
from raftfl.etcd import run_store as stored
from raftfl.etcd.eventlog import EventLog
from raftfl.etcd.store import Store
from raftfl.files import make_private_dir, write_atomic
from raftfl.node.models import Models
from raftfl.node.package import unpack

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunsView:
    """The runs as of one cycle."""

    active: int | None  # the run to train now
    state: FLState  # the active run's state, else the newest finished run's (else empty)
    latest: int | None  # the newest run id
    elected_before: bool  # an earlier run recorded an election: the bootstrap is over


@dataclass
class RunApp:
    """One run's app on this node. `apps` resolves to (ServerApp, ClientApp), or raises why
    the app cannot be used (its package, its name, or its import)."""

    run_id: int
    spec: RunSpec | None
    flower_app: Any  # raftfl.flower.app.FlowerApp, once unpacked
    apps: Future[tuple[Any, Any]]


class Runs:
    def __init__(self, store: Store, keys: Keys, data_dir: Path, models: Models,
                 trust: signing.Trust | None = None):
        self.store = store
        self.keys = keys
        self.data_dir = data_dir
        self.models = models  # where the runs' checkpoints are (node/models.py)
        # The keys runs must be signed by; by default the process's (--trusted-entities).
        self.trust = signing.trust() if trust is None else trust
        self._logs: dict[int, EventLog] = {}
        self._latest = 0  # the newest run id seen
        self._floor = 1  # every run below it is finished
        self._last_finished: FLState | None = None  # the newest finished run's state
        self._elected_before = False
        self.finished: dict[int, FLState] = {}  # finished runs not yet handed out (exports)
        self._app: RunApp | None = None
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(1, "app")

    def log(self, run_id: int) -> EventLog:
        if run_id not in self._logs:
            self._logs[run_id] = EventLog(self.store, self.keys.run(run_id))
        return self._logs[run_id]

    def refresh(self, revision: int | None = None) -> RunsView:
        """Find new runs and the active one (called by the HA loop only)."""
        self._latest += len(stored.ids(self.store, self.keys, after=self._latest,
                                       revision=revision))
        while self._floor <= self._latest:
            state, _ = self.log(self._floor).current(revision)
            if not state.finished:
                return RunsView(self._floor, state, self._latest, self._elected_before)
            self.finished[self._floor] = state
            self._last_finished = state
            self._elected_before |= bool(state.elections)
            self._logs.pop(self._floor)
            self._floor += 1
        return RunsView(None, self._last_finished or FLState(), self._latest or None,
                        self._elected_before)

    def join_log(self) -> EventLog:
        """Where this node's joins and leaves are logged: the active run's log, else the
        newest run's, else run 1's (which the node with -r is about to submit)."""
        if self._floor <= self._latest:
            return self.log(self._floor)
        return EventLog(self.store, self.keys.run(self._latest or 1))

    # -- apps -------------------------------------------------------------------------------
    def app(self, run_id: int) -> RunApp:
        """Run `run_id`'s app, unpacked and importing (from any thread; loaded once)."""
        with self._lock:
            if self._app is not None and self._app.run_id == run_id:
                return self._app
            if self._app is not None and self._app.flower_app is not None:
                self._app.flower_app.unload()
            self._app = self._unpack(run_id)
            return self._app

    def _unpack(self, run_id: int) -> RunApp:
        from raftfl.flower.app import AppError, load_app

        spec = None
        try:
            spec = stored.spec(self.store, self.keys, run_id)
            blob = stored.package(self.store, self.keys, run_id, spec.app_sha256)
            signing.verify_run(spec, blob, self.trust, self.keys.cluster)  # before unpacking
            root = unpack(blob, self.data_dir / "apps" / str(run_id))
            flower_app = load_app(root)
            if flower_app.name != spec.app:
                raise AppError(f"run {run_id}'s package holds app {flower_app.name!r}, "
                               f"its spec names {spec.app!r}")
        except Exception as exc:  # noqa: BLE001 - any failure is the run's, reported on use
            failed: Future[tuple[Any, Any]] = Future()
            failed.set_exception(exc)
            return RunApp(run_id, spec, None, failed)
        return RunApp(run_id, spec, flower_app, self._pool.submit(_import, flower_app))

    # -- final models -----------------------------------------------------------------------
    def save_final_model(self, run_id: int, state: FLState, out: Path, node: str) -> str:
        """Fetch and verify run `run_id`'s final model; write `final_model.npz`, its
        `.sha256` and `result.json` to `out`. Returns the model's path ("" for a run whose
        ServerApp committed no model: then only `result.json`)."""
        from raftfl.flower.codec import arrays_from_bytes, model_npz

        assert state.completed is not None
        sha = state.completed.model_sha256
        make_private_dir(out)
        if not sha:
            write_atomic(out / "result.json", json.dumps({
                "node": node, "run": run_id, "final_model_sha256": "", "final_model_file": "",
                "rounds": state.rounds, "committed": state.commit_order,
                "grid_calls": len(state.exchanges)}))
            return ""
        blob = self.models.load(self.store, self.keys.run(run_id), sha)
        npz = model_npz(arrays_from_bytes(blob))
        path = out / "final_model.npz"
        write_atomic(path, npz)
        file_sha = hashlib.sha256(npz).hexdigest()
        write_atomic(path.with_name(path.name + ".sha256"), f"{file_sha}  {path.name}\n")
        result = {"node": node, "run": run_id, "final_model_sha256": sha,
                  "final_model_file": str(path), "final_model_file_sha256": file_sha,
                  "rounds": state.rounds, "committed": state.commit_order}
        write_atomic(out / "result.json", json.dumps(result))
        return str(path)


def _import(flower_app: Any) -> tuple[Any, Any]:
    """Import the app (and torch with it, if it uses torch) ahead of the first instruction.
    Torch gets one thread per node by default (RAFTFL_TORCH_THREADS): several nodes share a
    host's cores, and the node's keepalive must keep its turn while the ClientApp trains."""
    apps = flower_app.load_server_app(), flower_app.load_client_app()
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(int(os.environ.get("RAFTFL_TORCH_THREADS", "1")))
    return apps
