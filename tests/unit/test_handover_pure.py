"""Planned handover and maintenance mode, the pure parts: the CLI's choice of target (every
refusal is one line), the request records, and the recorder's stop between rounds."""

from __future__ import annotations

import pytest

from raftfl.core.errors import RaftflError
from raftfl.core.events import Event, RoundStarted
from raftfl.core.keys import Keys
from raftfl.core.maintenance import HandoverRequest, Pause, handover_target
from raftfl.core.member_record import MemberInfo
from raftfl.core.ranking import Ranked
from raftfl.core.records import MalformedRecord
from raftfl.etcd.store import Fence
from raftfl.node.recorder import AppRecorder

A, B, C, D = "10.0.0.1:5000", "10.0.0.2:5000", "10.0.0.3:5000", "10.0.0.4:5000"


def member(name: str, **kw: object) -> MemberInfo:
    return MemberInfo(node=name, ip="10.0.0.9", client_port=5100, flower_address="x:1",
                      **kw)  # type: ignore[arg-type]


def ranked(*names: str) -> list[Ranked]:
    return [Ranked(n, 10.0 - i, 1.0, False, False) for i, n in enumerate(names)]


LIVE = {A: member(A), B: member(B), C: member(C)}
KNOWN = {A, B, C, D}  # D is a member of the federation, but down


@pytest.mark.parametrize("to,live,ranking,want", [
    (None, LIVE, ranked(A, C, B), C),  # the best-ranked other node
    (None, LIVE, ranked(C, B, A), C),
    (None, {**LIVE, C: member(C, finished=True)}, ranked(A, C, B), B),  # leaving: skipped
    (B, LIVE, ranked(C, B), B),  # named: taken whatever its rank
    (None, {A: member(A)}, ranked(A), "no other live node can take the role from"),
    ("10.9.9.9:1", LIVE, ranked(B, C), "unknown node 10.9.9.9:1 (the nodes are: "),
    (A, LIVE, ranked(B, C), f"{A} already holds the aggregator role"),
    (D, LIVE, ranked(B, C), f"{D} is not alive (no member record): it cannot take the role"),
    (B, {**LIVE, B: member(B, nofailover=True)}, ranked(C),
     f"{B} runs with --nofailover: it never takes the role"),
    (C, {**LIVE, C: member(C, finished=True)}, ranked(B), f"{C} is leaving"),
])
def test_handover_target(to: str | None, live: dict[str, MemberInfo], ranking: list[Ranked],
                         want: str) -> None:
    if want in KNOWN:
        assert handover_target(A, to, KNOWN, live, ranking) == want
    else:
        with pytest.raises(RaftflError) as err:
            handover_target(A, to, KNOWN, live, ranking)
        assert want in str(err.value) and "\n" not in str(err.value)


def test_requests_round_trip_and_refuse_bad_values() -> None:
    req = HandoverRequest(holder=A, term=7, to=B, ranked=True, by="alice@host")
    assert HandoverRequest.from_json(req.to_json()) == req
    pause = Pause(by="alice@host", reason="etcd upgrade")
    assert Pause.from_json(pause.to_json()) == pause
    for raw in (b'{"holder": "a", "term": 0, "to": "b"}', b'{"holder": "", "term": 3, "to": "b"}',
                b'{"holder": "a", "term": "3", "to": "b"}', b"[" * 100, b"nope"):
        with pytest.raises(MalformedRecord):
            HandoverRequest.from_json(raw)
    with pytest.raises(MalformedRecord):
        Pause.from_json(b'{"reason": "' + b"x" * 600 + b'"}')


def test_control_keys_share_one_prefix() -> None:
    keys = Keys("c1")
    assert keys.handover.startswith(keys.control) and keys.paused.startswith(keys.control)
    assert keys.control == "/raftfl/c1/control/"


class FakeLog:
    def __init__(self) -> None:
        self.appended: list[Event] = []

    def append_all(self, events: list[Event], fence: Fence | None = None) -> list[int]:
        self.appended.extend(events)
        return list(range(len(self.appended) - len(events) + 1, len(self.appended) + 1))


def recorder(log: FakeLog, woken: list[int], workers: object = lambda: 2) -> AppRecorder:
    return AppRecorder(store=None, keys=Keys("c1").run(1), events=log,  # type: ignore[arg-type]
                       fence=Fence("k", 7), node=A, models=None,  # type: ignore[arg-type]
                       workers=workers,  # type: ignore[arg-type]
                       on_event=lambda ev: None, on_halt=lambda: woken.append(1))


def test_recorder_starts_rounds_until_a_handover_then_none() -> None:
    log, woken = FakeLog(), []
    rec = recorder(log, woken)
    assert rec.round_started(1) is True
    assert [type(e) for e in log.appended] == [RoundStarted] and not rec.halted.is_set()
    rec.hand_over()
    assert rec.round_started(2) is False  # the ServerApp stops at this round boundary
    assert len(log.appended) == 1 and rec.halted.is_set() and woken == [1]


def test_a_handover_asked_while_waiting_for_workers_starts_no_round() -> None:
    log, woken = FakeLog(), []
    holder: list[AppRecorder] = []

    def workers() -> int:
        holder[0].hand_over()  # the HA loop asks while the round waits for its workers
        return 2

    holder.append(recorder(log, woken, workers))
    assert holder[0].round_started(3) is False
    assert log.appended == [] and woken == [1]
