"""The full-log fallback of a snapshot reader reads the log in pages (gRPC refuses answers
over 64 MiB: a whole log of about 170,000 events is one), and a page that is still too big
(values written by hand, up to 1.5 MiB each) is read again in smaller ones."""

from __future__ import annotations

import grpc
import pytest
from conftest import RpcFailure

from raftfl.core.events import NodeJoined
from raftfl.core.keys import Keys
from raftfl.etcd import eventlog
from raftfl.etcd.eventlog import EventLog
from raftfl.etcd.store import KV


class PagedStore:
    """Answers range reads of `n` events; refuses (as gRPC does) pages over `max_keys`."""

    def __init__(self, n: int, max_keys: int) -> None:
        keys = Keys("c1").run(1)
        value = NodeJoined(node="a").to_json().encode()
        self.kvs = [KV(keys.event(s), value, 10 + s, 10 + s, 0) for s in range(1, n + 1)]
        self.max_keys = max_keys
        self.calls: list[tuple[int | None, int | None, str | None]] = []  # revision, limit, start

    def range(self, prefix: str, revision: int | None = None, limit: int | None = None,
              min_mod_revision: int | None = None,
              start: str | None = None) -> tuple[list[KV], int]:
        self.calls.append((revision, limit, start))
        if limit is None or limit > self.max_keys:
            raise RpcFailure(grpc.StatusCode.RESOURCE_EXHAUSTED, "Received message larger than max")
        return [kv for kv in self.kvs if start is None or kv.key >= start][:limit], 999


def test_the_log_is_read_in_pages_pinned_to_the_first_ones_revision(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(eventlog, "PAGE_KEYS", 10)
    store = PagedStore(25, max_keys=10)
    result = EventLog(store, Keys("c1").run(1)).read()  # type: ignore[arg-type]
    assert [e.seq for e in result.events] == list(range(1, 26)) and result.revision == 999
    assert [(rev, limit) for rev, limit, _ in store.calls] == [(None, 10), (999, 10), (999, 10)]


def test_a_page_too_big_for_grpc_is_read_again_smaller(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(eventlog, "PAGE_KEYS", 64)
    store = PagedStore(20, max_keys=8)
    result = EventLog(store, Keys("c1").run(1)).read()  # type: ignore[arg-type]
    assert [e.seq for e in result.events] == list(range(1, 21))
    assert [limit for _, limit, _ in store.calls][:2] == [64, 8]
    with pytest.raises(grpc.RpcError):  # a single value too big is etcd's to refuse, not ours
        EventLog(PagedStore(3, max_keys=0), Keys("c1").run(1)).read()  # type: ignore[arg-type]
