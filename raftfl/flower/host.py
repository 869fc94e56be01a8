"""Hosting a user's Flower app: the ServerApp on the aggregator, the ClientApp on each worker.

`ServerAppHost` runs `ServerApp.__call__(grid, context)` in its own thread over a `RaftGrid`,
as Flower's runtimes do; stopping the grid's fleet server ends it at its next Grid call.

`ClientAppHost.handle` is what a worker's `FleetClient` calls for each instruction: it decodes
the Message, asks the node whether the instruction is current (`admit`), runs
`ClientApp.__call__(message, context)` unmodified and encodes the reply. Failures become error
replies with Flower's codes, so the ServerApp's strategy counts them as failures.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from flwr.app import Context, Error, Message, Metadata, RecordDict

from raftfl.flower import durable
from raftfl.flower.app import UserConfig
from raftfl.flower.codec import CodecError, decode_message, encode_message
from raftfl.flower.grid import (
    CLIENT_APP_RAISED_EXCEPTION,
    MOD_FAILED_PRECONDITION,
    UNKNOWN,
    AggregatorStopped,
    RaftGrid,
    Stamp,
)
from raftfl.flower.identity import SERVER_NODE_ID
from raftfl.flower.start import route_strategy_start
from raftfl.net.origin import origin

log = logging.getLogger(__name__)

# admit(stamp, message) -> None to run the ClientApp, or the reason to refuse the instruction.
Admit = Callable[[Stamp, Message], str | None]


class ServerAppHost:
    """The user's ServerApp for one run and term, in a daemon thread.

    `state` is "running", then "completed" (the ServerApp returned), "stopped" (the node lost
    the role: `AggregatorStopped`) or "failed" (`error` holds the exception)."""

    def __init__(self, server_app: Any, grid: RaftGrid, run_config: UserConfig):
        self.server_app = server_app
        self.grid = grid
        self.context = Context(run_id=grid.run_id, node_id=0, node_config={},
                               state=RecordDict(), run_config=dict(run_config))
        grid.app_state = self.context.state  # recorded with each commit (durable.py)
        self.state = "running"
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"serverapp-{grid.run_id}",
                                        daemon=True)

    def start(self) -> ServerAppHost:
        route_strategy_start()  # an unmodified `strategy.start(grid=...)` resumes too
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving now; the ServerApp thread ends at its next Grid call or hook."""
        self.grid.fleet.stop()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the ServerApp to end; True if it has."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        resume, journal = self.grid.resume, self.grid.journal
        origin("run")
        for blob in (resume.state if resume is not None else b"",  # before the app reads them
                     journal.start(lambda: durable.capture(None, None).blob) if journal else b""):
            if not blob:
                continue
            try:
                durable.restore(blob, None, self.context.state)
            except durable.DurableStateError as exc:
                log.warning("ServerApp of run %d: state not restored: %s", self.grid.run_id,
                            exc)
        try:
            self.server_app(self.grid, self.context)
            self.state = "completed"
        except AggregatorStopped as exc:
            self.state = "stopped"
            log.info("ServerApp of run %d stopped: %s", self.grid.run_id, exc)
        except BaseException as exc:  # noqa: BLE001 - reported to the node through `error`
            self.error = exc
            self.state = "failed"
            log.exception("ServerApp of run %d failed", self.grid.run_id)


class ClientAppHost:
    """The user's ClientApp for one run on one node. Its Context (and `context.state`) lives as
    long as this object, across reconnections to successive aggregators."""

    def __init__(self, client_app: Any, *, run_id: int, node_id: int, node_config: UserConfig,
                 run_config: UserConfig, admit: Admit | None = None):
        self.client_app = client_app
        self.context = Context(run_id=run_id, node_id=node_id, node_config=dict(node_config),
                               state=RecordDict(), run_config=dict(run_config))
        self.admit = admit or (lambda stamp, message: None)
        self._lock = threading.Lock()  # one ClientApp call at a time, even across sessions
        # The last train reply, by what was asked (see `_reuse`).
        self._last_train: tuple[str, RecordDict] | None = None

    def handle(self, msg_id: str, payload: bytes) -> bytes:
        """Answer one instruction (the `FleetClient.run` callback)."""
        try:
            message, extra = decode_message(payload)
            stamp = Stamp.from_json(extra)
        except CodecError as exc:
            log.warning("node %d: malformed instruction %s: %s", self.context.node_id, msg_id, exc)
            return encode_message(self._bare_error(msg_id, f"malformed instruction: {exc}"))
        return self.answer(message, stamp)

    def answer(self, message: Message, stamp: Stamp) -> bytes:
        """Answer an instruction decoded already (by a caller that routes on its stamp)."""
        with self._lock:
            return encode_message(self._answer(message, stamp))

    def _answer(self, message: Message, stamp: Stamp) -> Message:
        reason = (f"instruction for run {stamp.run_id}, this worker serves run "
                  f"{self.context.run_id}" if stamp.run_id != self.context.run_id
                  else self.admit(stamp, message))
        if reason:
            log.info("node %d: refused round %d from term %d: %s", self.context.node_id,
                     stamp.round, stamp.term, reason)
            return Message(Error(MOD_FAILED_PRECONDITION, f"raftfl refused: {reason}"),
                           reply_to=message)
        key = _reuse_key(message, stamp)
        if key is not None and self._last_train is not None and self._last_train[0] == key:
            log.info("node %d: round %d from term %d asks what this node just trained: "
                     "reusing that reply", self.context.node_id, stamp.round, stamp.term)
            return Message(self._last_train[1], reply_to=message)
        try:
            reply = self.client_app(message, self.context)
            if not isinstance(reply, Message):
                raise TypeError(f"the ClientApp returned {type(reply).__name__}, not a Message")
            if key is not None and not reply.has_error():
                self._last_train = (key, reply.content)
            return reply
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - reported, as Flower does;
            # a ClientApp's sys.exit() must not end the worker thread that called it
            log.exception("node %d: ClientApp raised on %s", self.context.node_id,
                          message.metadata.message_type)
            return Message(Error(CLIENT_APP_RAISED_EXCEPTION, f"{type(exc)}:<'{exc}'>"),
                           reply_to=message)

    def _bare_error(self, msg_id: str, reason: str) -> Message:
        """An error reply when the instruction itself could not be read."""
        metadata = Metadata(run_id=self.context.run_id, message_id="",
                            src_node_id=self.context.node_id, dst_node_id=SERVER_NODE_ID,
                            reply_to_message_id=msg_id, group_id="", created_at=time.time(),
                            ttl=60.0, message_type="query")
        return Message(metadata=metadata, error=Error(UNKNOWN, reason))


def _reuse_key(message: Message, stamp: Stamp) -> str | None:
    """What an instruction asks, apart from who asks: a train instruction's global round, base
    model and content (arrays and config), or an own-loop ServerApp's call and content.

    Why: a worker cannot interrupt a ClientApp call, so when the aggregator dies mid-round
    each worker first finishes training for the dead term. The successor resumes that very
    round from the same committed model with the same content; answering it with the reply
    just computed saves a second full round of local training (at human-paced rounds, most
    of the recovery time). Only rounds driven by `raftfl.start` (a base model) qualify, and
    the calls of an own-loop ServerApp, which its successor replays and then re-sends the
    call in flight: a stateful protocol (SecAgg+ keeps its stage in `context.state`) must be
    answered as before, not run a second time.
    """
    kind = message.metadata.message_type
    if message.has_error() or not (stamp.call or (stamp.base and kind == "train")):
        return None
    bare = Message(metadata=Metadata(run_id=stamp.run_id, message_id="", src_node_id=0,
                                     dst_node_id=0, reply_to_message_id="", group_id="",
                                     created_at=0.0, ttl=0.0, message_type=kind),
                   content=message.content)
    digest = hashlib.sha256(encode_message(bare)).hexdigest()
    return f"{stamp.run_id}:{stamp.round}:{stamp.base}:{stamp.call}:{digest}"
