"""RaftGrid: Flower's public `Grid`, over the fleet transport, for one aggregator term.

A user's ServerApp and its strategy talk to workers only through this Grid, as they would to
Flower's SuperLink. What it adds is invisible to them:

* every instruction carries raftfl's `Stamp` (run, term, global round, base-model hash)
  beside the Message, so a worker can refuse a stale instruction before its ClientApp runs;
* it carries where the run resumes (`Resume`) and the `RoundHooks` that record each step,
  which `raftfl.start` reads;
* once the fleet server is stopped (the node lost the role), every Grid call raises
  `AggregatorStopped`, which unwinds the ServerApp's thread.

Replies that cannot come (the worker disconnected, went silent, or was never connected) are
returned as error replies with Flower's `NODE_UNAVAILABLE` code, as Flower's SuperLink does;
replies still missing at the timeout are simply absent, as in Flower's own grids. A reply of
any message kind that fails `screen_reply` (non-finite values, another dtype than the one
sent, a `num-examples` that is not a count under the cluster's cap; for a train reply, arrays
other than the model sent or an update norm over the bound) is returned as an error reply
from its worker with code `UPDATE_REJECTED`: the strategy counts it as a failure and never
aggregates it. So is a train update of one `send_and_receive` whose norm is far above the
median of that call's updates (`screen.outliers`; Flower's round loop makes one call per
round); replies pulled one by one (`pull_messages`) are screened alone.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

from flwr.app import ArrayRecord, Error, Message, Metadata, RecordDict
from flwr.serverapp import Grid

from raftfl.flower.codec import CodecError, decode_message, encode_message
from raftfl.flower.fleet import FleetServer, FleetStopped, Lost
from raftfl.flower.hooks import RoundHooks
from raftfl.flower.identity import SERVER_NODE_ID, adopt_server_identity
from raftfl.flower.journal import (
    Journal,
    decode_ids,
    decode_replies,
    encode_ids,
    encode_replies,
    journal_request,
    message_digest,
)
from raftfl.flower.screen import ScreenPolicy, judge_reply, outliers, spread

log = logging.getLogger(__name__)

# Flower's ErrorCode values (flwr.common.constant is not a public module).
UNKNOWN = 0
CLIENT_APP_RAISED_EXCEPTION = 2
NODE_UNAVAILABLE = 5
MOD_FAILED_PRECONDITION = 6  # raftfl: a worker refused a stale instruction
UPDATE_REJECTED = 1001  # raftfl's own code: the aggregator refused a hostile reply


class AggregatorStopped(BaseException):  # noqa: N818 - a control-flow signal like SystemExit
    """This node no longer serves the run (fleet stopped, or a hook reported it deposed).

    A BaseException so that a ServerApp's `except Exception` does not swallow it."""


@dataclass(frozen=True)
class Stamp:
    """raftfl's instruction header: who sent it, for which global round, from which model."""

    run_id: int
    term: int
    round: int = 0  # global round (0: outside raftfl.start)
    base: str = ""  # sha256 of the arrays the instruction carries ("" outside raftfl.start)
    call: int = 0  # an own-loop ServerApp's grid call (journal.py; 0: not journaled)

    def to_json(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "term": self.term, "round": self.round, "base": self.base,
                "call": self.call}

    @classmethod
    def from_json(cls, raw: Any) -> Stamp:
        fields = {"run_id": int, "term": int, "round": int, "base": str, "call": int}
        if not (isinstance(raw, dict) and set(raw) == set(fields)
                and all(type(raw[k]) is t for k, t in fields.items())):
            raise CodecError(f"malformed raftfl stamp: {str(raw)[:200]}")
        return cls(**raw)


@dataclass(frozen=True)
class Resume:
    """Where a new aggregator picks the run up: the next global round and the arrays
    committed before it."""

    next_round: int
    arrays: ArrayRecord
    state: bytes = b""  # the ServerApp's durable state committed with that round (durable.py)


@dataclass(frozen=True)
class RunInfo:
    """What `Grid.run` reports (Flower's own `Run` class is not public)."""

    run_id: int


@dataclass(frozen=True)
class _Sent:
    dst_node_id: int
    message_type: str
    group_id: str
    deadline: float  # wall-clock end of the message's TTL
    arrays: dict[str, ArrayRecord]  # the instruction's ArrayRecords, to screen the reply against


class RaftGrid(Grid):
    """A `Grid` whose nodes are the workers connected to `fleet`."""

    def __init__(self, fleet: FleetServer, *, run_id: int, term: int, hooks: RoundHooks,
                 resume: Resume | None = None, screen: ScreenPolicy | None = None,
                 journal: Journal | None = None):
        adopt_server_identity(run_id)  # see identity.py: Flower's Message() needs it
        self.fleet = fleet
        self.run_id = run_id
        self.term = term
        self.hooks = hooks
        self.resume = resume
        self.screen = screen or ScreenPolicy()
        self.stamp = Stamp(run_id, term)
        self._run: Any = RunInfo(run_id)
        self._sent: dict[str, _Sent] = {}
        self._norms: dict[str, float] = {}  # train updates that passed: message id -> norm
        self.journal = journal  # a ServerApp with its own loop: its grid calls, recorded
        self.app_state: RecordDict | None = None  # the ServerApp's context.state (its host
        # sets it), recorded with each commit

    def set_round(self, server_round: int, base: str) -> None:
        """Stamp the instructions that follow with this global round and base model."""
        self.stamp = Stamp(self.run_id, self.term, server_round, base)

    # ---- flwr.serverapp.Grid

    def set_run(self, run: Any) -> None:
        self._run = run

    @property
    def run(self) -> Any:
        return self._run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int,
                       group_id: str, ttl: float | None = None) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        if self.journal is None:
            return self._node_ids()
        seen = self.journal.nodes(self._node_ids)
        if seen is None:
            raise AggregatorStopped("get_node_ids not recorded: this node no longer serves "
                                    "the run")
        return seen

    def _node_ids(self) -> list[int]:
        with _fleet_call():
            return self.fleet.node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        messages = list(messages)
        for message in messages:
            if message.metadata.reply_to_message_id or not message.has_content():
                raise ValueError(f"not an instruction message: {message.metadata}")
        journal = self.journal
        if journal is None:
            return self._push(messages)
        request = journal_request("push", [message_digest(m) for m in messages], ordered=True)
        call = journal.next_call
        ids = journal.answer("push", request, _describe(messages), decode_ids)
        if ids is not None and len(ids) == len(messages):
            journal.replayed_push(ids, messages, call)
            return ids
        ids = self._push(messages, call=journal.next_call)
        self._record(journal, "push", request, encode_ids(ids), 0)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        ids = list(message_ids)
        journal = self.journal
        if journal is None:
            return self._pull(ids)
        request = journal_request("pull", ids)
        replies = journal.answer("pull", request, f"a pull of {len(ids)} messages",
                                 decode_replies)
        if replies is not None:
            journal.answered(replies)
            return replies
        for msg_id, (message, call) in journal.take_pending(ids).items():  # replayed pushes
            self._push([message], [msg_id], call)
        replies = self._pull(ids)
        if replies:  # an empty pull is not recorded: replayed, the next answer comes sooner
            self._record(journal, "pull", request, encode_replies(replies), len(replies))
        return replies

    def send_and_receive(self, messages: Iterable[Message], *,
                         timeout: float | None = None) -> Iterable[Message]:
        messages = list(messages)
        journal = self.journal
        if journal is None:
            return self._send_and_receive(messages, timeout)
        request = journal_request("send_and_receive", [message_digest(m) for m in messages])
        replies = journal.answer("send_and_receive", request, _describe(messages),
                                 decode_replies)
        if replies is not None:
            return replies
        replies = self._send_and_receive(messages, timeout, call=journal.next_call)
        self._record(journal, "send_and_receive", request, encode_replies(replies),
                     len(replies))
        return replies

    def _record(self, journal: Journal, kind: str, request: str, answer: bytes,
                replies: int) -> None:
        if not journal.recorded(kind, request, answer, replies):
            raise AggregatorStopped(f"after call {journal.calls}: this node no longer serves "
                                    "the run (deposed, or handing it over)")

    # ---- the fleet

    def _push(self, messages: list[Message], ids: list[str] | None = None,
              call: int = 0) -> list[str]:
        stamp = replace(self.stamp, call=call).to_json()
        ids = ids or [uuid.uuid4().hex for _ in messages]
        for message, msg_id in zip(messages, ids, strict=True):
            md = message.metadata
            payload = encode_message(message, stamp, {"message_id": msg_id, "run_id": self.run_id,
                                                      "src_node_id": SERVER_NODE_ID})
            self._sent[msg_id] = _Sent(md.dst_node_id, md.message_type, md.group_id,
                                       md.created_at + md.ttl,
                                       dict(message.content.array_records.items()))
            with _fleet_call():
                self.fleet.push(md.dst_node_id, msg_id, payload)
        return ids

    def _pull(self, ids: list[str]) -> list[Message]:
        with _fleet_call():
            ready = self.fleet.collect(ids, 0.0)
        replies = [self._reply(msg_id, item) for msg_id, item in ready.items()]
        for msg_id in ready:  # replies pulled one by one have no round to be judged in
            self._norms.pop(msg_id, None)
        return replies

    def _send_and_receive(self, messages: list[Message], timeout: float | None,
                          call: int = 0) -> list[Message]:
        waiting = set(self._push(messages, call=call))
        deadline = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        while waiting:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                break
            with _fleet_call():
                ready = self.fleet.collect(waiting, remaining)
            replies.extend(self._reply(msg_id, item) for msg_id, item in ready.items())
            waiting -= ready.keys()
        if waiting:
            log.info("grid: %d of %d replies missing after %.0f s", len(waiting),
                     len(waiting) + len(replies), timeout)
            self.fleet.forget(waiting)
            for msg_id in waiting:
                self._sent.pop(msg_id, None)
        return self._refuse_outliers(replies)

    # ---- replies

    def _reply(self, msg_id: str, item: bytes | Lost) -> Message:
        sent = self._sent.pop(msg_id)
        if isinstance(item, Lost):
            return self._error_reply(msg_id, sent, NODE_UNAVAILABLE, item.reason)
        try:
            reply, _ = decode_message(item, {"message_id": uuid.uuid4().hex})
        except CodecError as exc:
            return self._error_reply(msg_id, sent, UNKNOWN, f"node {sent.dst_node_id}: {exc}")
        md = reply.metadata
        if (md.reply_to_message_id, md.src_node_id, md.run_id) != (msg_id, sent.dst_node_id,
                                                                    self.run_id):
            return self._error_reply(msg_id, sent, UNKNOWN,
                                     f"node {sent.dst_node_id}: reply metadata does not match "
                                     f"the instruction ({md})")
        policy = self.screen
        verdict = judge_reply(sent.arrays, reply, policy.declared(sent.dst_node_id),
                              policy.max_norm, sent.message_type, policy.max_examples)
        if verdict.reason:
            return self._reject(reply, verdict.reason)
        if verdict.norm is not None:
            self._norms[msg_id] = verdict.norm
        return reply

    def _reject(self, reply: Message, reason: str) -> Message:
        md = reply.metadata
        log.warning("grid: round %d: %s reply from node %d rejected: %s", self.stamp.round,
                    md.message_type, md.src_node_id, reason)
        return rejected(reply, reason)

    def _refuse_outliers(self, replies: list[Message]) -> list[Message]:
        """The train updates of one call whose norm is far above the call's median
        (screen.outliers), refused like any other hostile reply."""
        ids = [msg.metadata.reply_to_message_id for msg in replies]
        norms = {i: self._norms.pop(i) for i in ids if i in self._norms}
        if norms:
            median, ratio = spread(norms.values())
            log.info("grid: round %d: %d updates, norm median %.4g, largest %.3g x the median",
                     self.stamp.round, len(norms), median, ratio)
        refused = outliers(norms, self.screen.outlier_factor)
        return [self._reject(msg, refused[i]) if i in refused else msg
                for i, msg in zip(ids, replies, strict=True)]

    def _error_reply(self, msg_id: str, sent: _Sent, code: int, reason: str) -> Message:
        """An error reply in the form Flower's SuperLink gives one it makes itself."""
        now = time.time()
        metadata = Metadata(run_id=self.run_id, message_id=uuid.uuid4().hex,
                            src_node_id=SERVER_NODE_ID, dst_node_id=SERVER_NODE_ID,
                            reply_to_message_id=msg_id, group_id=sent.group_id, created_at=now,
                            ttl=max(sent.deadline - now, 0.0), message_type=sent.message_type)
        return Message(metadata=metadata, error=Error(code=code, reason=reason))


def rejected(reply: Message, reason: str) -> Message:
    """`reply` refused: an error reply from its worker, which a strategy counts as a
    failure and never aggregates."""
    return Message(metadata=reply.metadata, error=Error(code=UPDATE_REJECTED,
                                                        reason=f"update rejected: {reason}"))


def _describe(messages: list[Message]) -> str:
    """The first instruction of a call, for a divergence warning."""
    if not messages:
        return "no instructions"
    md = messages[0].metadata
    more = f" and {len(messages) - 1} more" if len(messages) > 1 else ""
    return f"{md.message_type} to node {md.dst_node_id}{more}"


@contextmanager
def _fleet_call() -> Iterator[None]:
    try:
        yield
    except FleetStopped as exc:
        raise AggregatorStopped(str(exc)) from None
