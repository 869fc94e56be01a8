"""`GET /events?run=N`: a run's event log as server-sent events, live from an etcd watch.

The stream sends the log so far (its newest `MAX_BACKLOG` events, or those after the
`Last-Event-ID` a reconnecting browser sends, or after `?after=SEQ`), then every event
appended from the revision it read on, each once, as `id: <seq>` and one JSON object (the
object `raftfl history` prints, plus `text`, the line the node logs for it).

Bounded per connection: at most `MAX_STREAMS` at once (raftfl/ops/context.py; each holds a
watch, and the server's stop ends them all), each ends after `MAX_STREAM_S` (the browser
reconnects where it left off), a client that stops reading is dropped when its socket write
times out or `QUEUE_MAX` events wait for it, and a comment every `HEARTBEAT_S` finds a client
that went away.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Callable, Iterator

from raftfl.core.errors import RaftflError
from raftfl.core.events import describe
from raftfl.core.keys import RunKeys
from raftfl.core.replay import Logged
from raftfl.etcd.eventlog import EventLog
from raftfl.etcd.store import Store
from raftfl.net.origin import origin

MAX_BACKLOG = 2000
MAX_STREAM_S = 300.0
HEARTBEAT_S = 10.0
QUEUE_MAX = 1000  # events waiting for a slow client; beyond them the stream ends
RETRY_MS = 1000


def event_json(item: Logged) -> dict[str, object]:
    return {"seq": item.seq, "revision": item.revision, **item.event.to_dict(),
            "text": describe(item.event)}


def _frame(item: Logged) -> bytes:
    return f"id: {item.seq}\ndata: {json.dumps(event_json(item))}\n\n".encode()


class EventStream:
    """One client's stream. Reads the log when made (so a failure is an HTTP error, not a
    broken stream); `close()` always ends its watch and frees its slot."""

    def __init__(self, store: Store, keys: RunKeys, after: int, on_close: Callable[[EventStream], None],
                 max_s: float = MAX_STREAM_S):
        self._on_close, self._stop, self._max_s = on_close, threading.Event(), max_s
        self._closed = False
        try:
            self._log = EventLog(store, keys)
            read = self._log.read(from_seq=after + 1 if after else None)
        except BaseException:
            self.close()
            raise
        self._backlog = read.events[-MAX_BACKLOG:]
        self._revision = read.revision
        self._last = max([after, *(item.seq for item in read.events)])

    def __iter__(self) -> Iterator[bytes]:
        deadline = time.monotonic() + self._max_s
        new: queue.Queue[Logged | None] = queue.Queue(QUEUE_MAX)
        threading.Thread(target=self._tail, args=(new,), name="api-events", daemon=True).start()
        yield f"retry: {RETRY_MS}\n\n".encode()
        for item in self._backlog:
            yield _frame(item)
        while time.monotonic() < deadline:
            try:
                item = new.get(timeout=min(HEARTBEAT_S, max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                if self._stop.is_set():  # the watch ended with the queue full
                    return
                yield b": keepalive\n\n"
                continue
            if item is None:  # the watch gave up, or the client is too slow: reconnect
                return
            if item.seq > self._last:
                self._last = item.seq
                yield _frame(item)

    def _tail(self, new: queue.Queue[Logged | None]) -> None:
        origin("api")
        try:
            for item in self._log.tail(self._revision + 1, self._stop):
                new.put(item, timeout=HEARTBEAT_S)
        except (queue.Full, RaftflError):
            pass
        finally:
            self._stop.set()
            try:
                new.put_nowait(None)
            except queue.Full:
                pass

    def close(self) -> None:
        """Ends the watch (the stream then ends too) and frees the slot; idempotent."""
        self._stop.set()
        if not self._closed:
            self._closed = True
            self._on_close(self)
