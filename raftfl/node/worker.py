"""The worker role: train on this node's shard for whichever node holds the aggregator role.

A worker follows the role key, not a fixed address: when the role moves it cuts its current
connection and reconnects to the new holder. It refuses an instruction whose term is not the
current one, or whose base model is not the one the instruction names.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from raftfl.core.errors import RaftflError
from raftfl.flower.legacy import ClientSession, is_connection_error
from raftfl.lab.testhooks import hold

log = logging.getLogger(__name__)

RECONNECT_WAIT_S = 0.3


class StaleInstruction(RaftflError):
    """A fit instruction from an aggregator term that is no longer current."""


class Trainer:
    def __init__(self, node: str, current_term: Callable[[], int | None],
                 train: Callable[[list[np.ndarray], int], tuple[list[np.ndarray], int]],
                 on_fit: Callable[[int, int], None] = lambda rnd, term: None):
        self.node = node
        self.current_term = current_term
        self.train = train
        self.on_fit = on_fit

    def fit(self, params: list[np.ndarray], config: dict[str, Any]) -> tuple[
            list[np.ndarray], int, dict[str, Any]]:
        from raftfl.task.model import weights_sha256

        term, rnd = int(config["term"]), int(config["round"])
        current = self.current_term()
        if term != current:
            raise StaleInstruction(f"refusing round {rnd} from term {term}: current term is {current}")
        if weights_sha256(params) != config["base_model"]:
            raise StaleInstruction(f"round {rnd}: parameters do not match base model "
                                   f"{str(config['base_model'])[:12]}")
        self.on_fit(rnd, term)
        hold("fit", rnd)
        weights, examples = self.train(params, rnd)
        return weights, examples, {"node": self.node}


class WorkerRunner:
    """Keeps one Flower client connected to the current aggregator."""

    def __init__(self, trainer: Trainer):
        self.trainer = trainer
        self._target: tuple[str, int] | None = None
        self._session: ClientSession | None = None
        self._changed = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="worker", daemon=True)
        self._thread.start()

    def follow(self, address: str | None, term: int | None) -> None:
        target = (address, term) if address and term else None
        if target == self._target:
            return
        self._target = target
        self._changed.set()
        session = self._session
        if session is not None and (target is None or session.address != address):
            session.abort()

    def stop(self) -> None:
        self._stop.set()
        self.follow(None, None)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._changed.clear()  # before reading the target: a later follow() sets it again
            target = self._target
            if target is None:
                self._changed.wait(1.0)
                continue
            session = self._session = ClientSession(target[0], self.trainer.fit)
            try:
                session.run()
                # A clean disconnect: the aggregator finished or stepped down. Wait for the
                # role key (or the end of the run) to say what comes next.
                self._changed.wait(1.0)
            except Exception as exc:  # noqa: BLE001
                if not (is_connection_error(exc) or isinstance(exc, StaleInstruction)):
                    log.exception("worker connection failed")
                else:
                    log.info("worker: %s", str(exc).splitlines()[0][:160])
                self._changed.wait(RECONNECT_WAIT_S)
            finally:
                self._session = None
