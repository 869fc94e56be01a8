"""The worker role: run this node's ClientApp for whichever node holds the aggregator role.

A worker follows the role key, not a fixed address: when the role moves, the node calls
`follow` and the runner cuts its current connection and connects to the new holder (the
aggregator's own node included: it trains too). Before the user's ClientApp sees an
instruction, `admit` refuses one whose term is not the current one, or whose arrays are not
the base model the instruction names.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

RECONNECT_WAIT_S = 0.2


class WorkerRunner:
    """Keeps one fleet connection to the current aggregator, in a thread of its own."""

    def __init__(self, node_id: int, name: str, handle: Callable[[str, bytes], bytes]):
        self.node_id = node_id
        self.name = name
        self.handle = handle
        self._target: tuple[str, int] | None = None
        self._client: Any = None
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
        client = self._client
        if client is not None:
            client.abort()

    def stop(self) -> None:
        self._stop.set()
        self.follow(None, None)

    def join(self, timeout: float) -> bool:
        """Wait for the thread to end (a fit in flight finishes: torch aborts a process that
        exits while one of its ops runs); True if it has."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        from raftfl.flower.fleet import FleetClient, FleetError

        while not self._stop.is_set():
            self._changed.clear()  # before reading the target: a later follow() sets it again
            target = self._target
            if target is None:
                self._changed.wait(1.0)
                continue
            client = self._client = FleetClient(target[0], self.node_id, self.name)
            if self._target != target:  # moved while we connected: start over
                continue
            try:
                client.run(self.handle)
            except FleetError as exc:
                log.info("worker: %s", str(exc).splitlines()[0][:160])
            except Exception:  # noqa: BLE001 - a bug here must not kill the worker thread
                log.exception("worker connection failed")
            finally:
                self._client = None
            self._changed.wait(RECONNECT_WAIT_S)
