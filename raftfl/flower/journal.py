"""Durable execution for ServerApps with their own loop: the grid's journal.

A ServerApp whose `@app.main()` drives the grid itself (`send_and_receive`, `push_messages`/
`pull_messages`; Flower's `DefaultWorkflow` and `SecAggPlusWorkflow` among them) has state no
snapshot can reach: its local variables. raftfl therefore records its conversation, as
Temporal records a workflow's history, and rebuilds the rest by re-running it:

* every exchange is a numbered `call`: its kind, the sha256 of what the app asked (the
  instructions' destinations, types, groups and contents, in a canonical order; for a pull,
  the ids), and the answer (the replies, or the ids a push returned) stored as a blob beside
  the models, its hash in a fenced `grid_exchange` event;
* a successor re-runs the ServerApp from the start; while the app asks what the record says
  it asked, the grid answers from the record without sending anything, so the app walks the
  same path to the same state; at the first call past the record it goes live;
* an app that asks something else than the record (it is not deterministic, or its code
  changed) gets one warning naming the first call that differs, and continues live from
  there: its state is what the replayed prefix rebuilt, and the calls it makes now are
  recorded in place of the old ones (a later term's call replaces an earlier term's);
* instructions replayed as pushed whose replies the record does not hold yet are sent for
  real when the app goes live, so a `pull_messages` loop interrupted mid-round still ends.

The strategy round loop (`strategy.start`, start.py) is not journaled: it resumes from its
last commit with the strategy's state snapshot (durable.py), which is far cheaper.
"""

from __future__ import annotations

import hashlib
import json
import logging
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

from flwr.app import Message, Metadata

from raftfl.flower.codec import CodecError, decode_message, encode_message

log = logging.getLogger(__name__)

KINDS = ("send_and_receive", "push", "pull", "nodes")
_MAGIC = b"RAFTJRN1"
_LEN = struct.Struct(">Q")
MAX_ITEMS = 100_000
T = TypeVar("T")


class JournalError(CodecError):
    """A recorded answer that cannot be read back."""


@dataclass(frozen=True)
class Exchange:
    """One recorded grid call (the `grid_exchange` event's content)."""

    call: int  # 1, 2, ... in the order the ServerApp made them
    kind: str  # one of KINDS
    request: str  # sha256 of what the app asked
    answer: str  # sha256 of the stored answer blob
    term: int  # the term that recorded it
    start_state: str = ""  # call 1 only: the process RNGs as the ServerApp started (durable.py)


def message_digest(message: Message) -> str:
    """What an instruction asks, apart from ids and timestamps."""
    md = message.metadata
    bare = Message(metadata=Metadata(run_id=0, message_id="", src_node_id=0,
                                     dst_node_id=md.dst_node_id, reply_to_message_id="",
                                     group_id=md.group_id, created_at=0.0, ttl=0.0,
                                     message_type=md.message_type),
                   content=message.content)
    return hashlib.sha256(encode_message(bare)).hexdigest()


def journal_request(kind: str, parts: list[str], ordered: bool = False) -> str:
    """sha256 of a call: its kind and its parts (message digests or ids), in order only where
    the answer depends on it (a push returns one id per instruction, in order)."""
    return hashlib.sha256(json.dumps([kind, parts if ordered else sorted(parts)]).encode()
                          ).hexdigest()


def pack(items: list[bytes]) -> bytes:
    return _MAGIC + b"".join(_LEN.pack(len(item)) + item for item in items)


def unpack(blob: bytes) -> list[bytes]:
    if not blob.startswith(_MAGIC):
        raise JournalError("not a journal blob")
    items, at = [], len(_MAGIC)
    while at < len(blob):
        if at + _LEN.size > len(blob) or len(items) >= MAX_ITEMS:
            raise JournalError("journal blob truncated or too long")
        (size,) = _LEN.unpack_from(blob, at)
        at += _LEN.size
        if at + size > len(blob):
            raise JournalError("journal blob truncated")
        items.append(blob[at:at + size])
        at += size
    return items


def valid_prefix(recorded: dict[int, Exchange]) -> list[Exchange]:
    """The calls 1..k a successor may replay: consecutive, and never from an older term than
    the call before (an older term's call past a divergence belongs to an abandoned path)."""
    out: list[Exchange] = []
    for call in range(1, len(recorded) + 1):
        ex = recorded.get(call)
        if ex is None or (out and ex.term < out[-1].term):
            break
        out.append(ex)
    return out


# (call, kind, request sha, answer blob, replies in it, start state blob or b"") -> recorded
# (False: deposed)
Record = Callable[[int, str, str, bytes, int, bytes], bool]
Load = Callable[[str], bytes]  # answer sha -> blob


class Journal:
    """The record of one run's grid calls, replayed then extended (one per ServerApp run)."""

    def __init__(self, recorded: dict[int, Exchange], load: Load, record: Record):
        self._replay = valid_prefix(recorded)
        self._load = load
        self._record = record
        self.calls = 0  # calls made so far by this ServerApp run
        self.replayed = 0
        self._pending: dict[str, tuple[Message, int]] = {}  # pushed while replaying (and the
        # call that pushed them), not yet answered
        self._nodes: list[int] | None = None  # the node ids the app saw last
        self._start_state = b""  # recorded with call 1

    def start(self, capture: Callable[[], bytes]) -> bytes:
        """As the ServerApp starts: the process RNGs recorded with call 1, to restore before
        it runs again (b"" for a fresh run, whose `capture()` is recorded with call 1)."""
        if self._replay and self._replay[0].start_state:
            try:
                return self._load(self._replay[0].start_state)
            except Exception as exc:  # noqa: BLE001 - the replay may diverge: said then
                log.warning("raftfl: the ServerApp's recorded start state is unusable: %s", exc)
                return b""
        if not self._replay:
            self._start_state = capture()
        return b""

    def nodes(self, live: Callable[[], list[int]]) -> list[int] | None:
        """`get_node_ids()`: what the record says the app saw, else the live answer, recorded
        when it differs from the last one (an app polling for nodes records each change);
        None: it could not be recorded, this node was deposed."""
        request = journal_request("nodes", [])
        if not self.live and self._replay[self.calls].kind != "nodes":
            # A poll whose answer had not changed, so it was not recorded.
            return list(self._nodes) if self._nodes is not None else sorted(live())
        if self.calls == len(self._replay) - 1:
            # The record's last call: nothing recorded depends on its answer, and the nodes
            # it names may have died with the aggregator (which trains too). Asked again live,
            # and recorded again in its place (a later term's call replaces an earlier one's).
            del self._replay[self.calls:]
        if not self.live:
            seen = self.answer("nodes", request, "get_node_ids", decode_nodes)
            if seen is not None:
                self._nodes = seen
                return list(seen)
        seen = sorted(live())
        if seen != self._nodes:
            self._nodes = seen
            if not self.recorded("nodes", request, encode_ids([str(n) for n in seen]), 0):
                return None
        return list(seen)

    @property
    def next_call(self) -> int:
        """The number the app's next grid call will have (stamped on its instructions, so
        that a worker answers an instruction re-sent after a failover as it did before)."""
        return self.calls + 1
    @property
    def live(self) -> bool:
        return self.calls >= len(self._replay)

    def answer(self, kind: str, request: str, what: str, decode: Callable[[bytes], T]
               ) -> T | None:
        """The recorded answer of the app's next call (`what` describes it), or None: make it
        live, and record it with `recorded`."""
        if self.live:
            return None
        ex = self._replay[self.calls]
        if (ex.kind, ex.request) != (kind, request):
            log.warning("raftfl: the ServerApp diverged from its record at call %d: it made a "
                        "%s (%s) that the record does not have (it has a %s there); continuing "
                        "live from here, in place of recorded calls %d..%d",
                        ex.call, kind, what, ex.kind, ex.call, len(self._replay))
            del self._replay[self.calls:]
            return None
        try:
            answer = decode(self._load(ex.answer))
        except Exception as exc:  # noqa: BLE001 - any failure: the app goes live, said once
            log.warning("raftfl: the answer of call %d cannot be read (%s): continuing live "
                        "from there", ex.call, exc)
            del self._replay[self.calls:]
            return None
        self.calls += 1
        self.replayed += 1
        if self.live:
            log.info("raftfl: the ServerApp replayed %d recorded grid calls and is live",
                     self.replayed)
        return answer

    def recorded(self, kind: str, request: str, answer: bytes, replies: int) -> bool:
        """Record a live call's answer (fenced); False: this node was deposed."""
        self.calls += 1
        start, self._start_state = (self._start_state if self.calls == 1 else b""), b""
        return self._record(self.calls, kind, request, answer, replies, start)

    # -- instructions replayed as pushed --------------------------------------------------
    def replayed_push(self, ids: list[str], messages: list[Message], call: int) -> None:
        self._pending.update((i, (m, call)) for i, m in zip(ids, messages, strict=True))

    def answered(self, replies: list[Message]) -> None:
        for reply in replies:
            self._pending.pop(reply.metadata.reply_to_message_id, None)

    def take_pending(self, ids: Iterable[str]) -> dict[str, tuple[Message, int]]:
        """Instructions the app pushed during the replay, still unanswered, among `ids`: to
        be sent now that the app is live."""
        return {i: self._pending.pop(i) for i in list(ids) if i in self._pending}


def encode_replies(replies: list[Message]) -> bytes:
    return pack([encode_message(reply) for reply in replies])


def decode_replies(blob: bytes) -> list[Message]:
    try:
        return [decode_message(item)[0] for item in unpack(blob)]
    except CodecError as exc:
        raise JournalError(f"recorded replies unreadable: {exc}") from None


def decode_nodes(blob: bytes) -> list[int]:
    try:
        return [int(i) for i in decode_ids(blob)]
    except ValueError:
        raise JournalError("recorded node ids unreadable") from None


def encode_ids(ids: list[str]) -> bytes:
    return pack([i.encode() for i in ids])


def decode_ids(blob: bytes) -> list[str]:
    try:
        return [item.decode("ascii") for item in unpack(blob)]
    except UnicodeDecodeError:
        raise JournalError("recorded message ids unreadable") from None
