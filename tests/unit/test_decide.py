"""Table tests of the pure HA decision (Patroni's tests/test_ha.py checks its sentences so).

Each row is one situation a node can be in; the test asserts the action and the sentence.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from raftfl.core.decide import Action, Chore, Local, View, decide
from raftfl.core.events import AggregatorElected, RunCompleted, RunStopped
from raftfl.core.maintenance import HandoverRequest
from raftfl.core.ranking import Ranked
from raftfl.core.replay import FLState, Logged, replay
from raftfl.core.role import MalformedRole, RoleHolder, parse_role

ME, OTHER = "10.0.0.1:5000", "10.0.0.2:5000"
LEASE = 0xA1


def elected(node: str, term: int) -> AggregatorElected:
    return AggregatorElected(node=node, term=term, flower_address="x:1", rank=0, score=1.0,
                             revision=term, ranking=[])


def state(*events: object) -> FLState:
    return replay(Logged(i + 1, 100 + i, ev) for i, ev in enumerate(events))  # type: ignore[misc]


def ranked(*names: str) -> tuple[Ranked, ...]:
    return tuple(Ranked(node=n, score=10.0 - i, rtt_ms=1.0, stale=False, previous=False)
                 for i, n in enumerate(names))


HELD_BY_ME = RoleHolder(ME, "a:1", term=7, lease=LEASE, mod_revision=8)
HELD_BY_OTHER = RoleHolder(OTHER, "b:1", term=9, lease=0xB2, mod_revision=9)
MY_OLD_KEY = RoleHolder(ME, "a:1", term=5, lease=0xDEAD, mod_revision=5)
MALFORMED = MalformedRole("not JSON: x", term=11, lease=0, mod_revision=12)
ELECTED = state(elected(OTHER, 3))
LOCAL = Local(name=ME, now=100.0, lease=LEASE, lease_valid=True, serving_term=None,
              rank_step=1.0, malformed_grace_s=3.0, handover_wait_s=3.0)
DONE = state(elected(ME, 7), RunCompleted(node=ME, term=7, rounds=3, model_sha256="ab" * 32))
MINE = state(elected(ME, 7))
TO_OTHER = HandoverRequest(holder=ME, term=7, to=OTHER)  # the operator moves our term 7
TO_ME = HandoverRequest(holder=OTHER, term=9, to=ME)  # ...or term 9 of OTHER to us
TO_C = HandoverRequest(holder=OTHER, term=9, to="c")
AFTER_9 = state(elected(OTHER, 9))

CASES = [
    # (id, view, local, action, words in the sentence)
    ("completed-exit", View(50, HELD_BY_ME, DONE, run=None), replace(LOCAL, exit_on_complete=True),
     Action.FINISH, "run completed (term 7, model abababababab)"),
    ("stopped-exit", View(50, None, state(RunStopped(node="cli")), run=None),
     replace(LOCAL, exit_on_complete=True), Action.FINISH, "the last run was stopped: leaving"),
    ("completed-stay", View(50, HELD_BY_ME, DONE, run=None), LOCAL,
     Action.IDLE, "no run queued: waiting for `raftfl run submit`"),
    ("no-run-yet", View(50, None, FLState(), run=None), replace(LOCAL, exit_on_complete=True),
     Action.IDLE, "no run queued"),
    ("idle-lease-lost-while-serving", View(50, HELD_BY_ME, DONE, run=None),
     replace(LOCAL, serving_term=7, lease_valid=False), Action.STEP_DOWN, "stepping down"),
    ("next-run-needs-its-record", View(50, HELD_BY_ME, FLState(), run=2), LOCAL,
     Action.RECORD_ELECTION, "holding term 7 without its election record"),
    ("next-run-vacant-no-bootstrap", View(50, None, FLState(), ranking=ranked(OTHER, ME), run=2,
                                          elected_before=True, vacancy_revision=48),
     replace(LOCAL, bootstrap=OTHER, vacancy_seen=100.0), Action.WAIT_RANK, "my rank 1"),
    ("lease-lost-while-serving", View(50, HELD_BY_ME, state(elected(ME, 7))),
     replace(LOCAL, serving_term=7, lease_valid=False),
     Action.STEP_DOWN, "lease not refreshed within its TTL: stepping down from term 7"),
    ("no-lease", View(50, None, ELECTED), replace(LOCAL, lease=None, lease_valid=False),
     Action.OPEN_LEASE, "no lease"),
    ("malformed-fresh", View(50, MALFORMED, ELECTED), replace(LOCAL, malformed_seen=99.0),
     Action.WAIT_MALFORMED, "role key malformed (not JSON: x): deleting it in 2.0s"),
    ("malformed-old", View(50, MALFORMED, ELECTED), replace(LOCAL, malformed_seen=90.0),
     Action.CLEAR_MALFORMED, "guarded by revision 12"),
    ("malformed-while-serving", View(50, MALFORMED, ELECTED), replace(LOCAL, serving_term=7),
     Action.STEP_DOWN, "malformed value"),
    ("mine-without-record", View(50, HELD_BY_ME, ELECTED), LOCAL,
     Action.RECORD_ELECTION, "holding term 7 without its election record"),
    ("mine-serve", View(50, HELD_BY_ME, state(elected(ME, 7))), LOCAL,
     Action.SERVE, "aggregator for term 7: serving run 1, the first round"),
    ("other-while-serving", View(50, HELD_BY_OTHER, ELECTED), replace(LOCAL, serving_term=7),
     Action.STEP_DOWN, f"{OTHER} holds term 9: stepping down from term 7"),
    ("my-key-old-lease", View(50, MY_OLD_KEY, ELECTED), LOCAL,
     Action.WAIT_OWN_KEY, "which it lost: waiting for it to expire"),
    ("follow", View(50, HELD_BY_OTHER, ELECTED), LOCAL,
     Action.FOLLOW, f"worker for {OTHER} (term 9)"),
    ("holder-gone-unconfirmed", View(50, HELD_BY_OTHER, ELECTED, holder_gone=True,
                                     live_members=frozenset({ME, OTHER, "c"})), LOCAL,
     Action.SUSPECT, "1 of 2 other members agree, waiting for a majority"),
    ("holder-gone-confirmed", View(50, HELD_BY_OTHER, ELECTED, holder_gone=True,
                                   suspected_by=frozenset({"c"}),
                                   live_members=frozenset({ME, OTHER, "c"})), LOCAL,
     Action.TAKEOVER, "2 of 2 other members agree: ending term 9"),
    ("holder-gone-two-nodes", View(50, HELD_BY_OTHER, ELECTED, holder_gone=True,
                                   live_members=frozenset({ME, OTHER})), LOCAL,
     Action.TAKEOVER, "1 of 1 other members agree"),
    ("holder-gone-five-nodes", View(50, HELD_BY_OTHER, ELECTED, holder_gone=True,
                                    suspected_by=frozenset({"c"}),
                                    live_members=frozenset({ME, OTHER, "c", "d", "e"})), LOCAL,
     Action.SUSPECT, "2 of 4 other members agree"),
    ("vacant-while-serving", View(50, None, ELECTED), replace(LOCAL, serving_term=7),
     Action.STEP_DOWN, "the role key is gone: stepping down from term 7"),
    ("nofailover", View(50, None, ELECTED, ranked(OTHER)), replace(LOCAL, nofailover=True),
     Action.NOFAILOVER, "nofailover"),
    ("bootstrap-self", View(50, None, FLState()), replace(LOCAL, bootstrap="self"),
     Action.CAMPAIGN, "bootstrap: campaigning"),
    ("bootstrap-named-me", View(50, None, FLState()), replace(LOCAL, bootstrap=ME),
     Action.CAMPAIGN, "bootstrap"),
    ("bootstrap-other", View(50, None, FLState()), replace(LOCAL, bootstrap=OTHER),
     Action.WAIT_BOOTSTRAP, f"waiting for bootstrap aggregator {OTHER}"),
    ("bootstrap-auto-unmeasured", View(50, None, FLState(), ranked(ME), peers_measured=False),
     replace(LOCAL, bootstrap="auto"), Action.WAIT_SAMPLES, "latency samples"),
    ("bootstrap-auto-measured", View(50, None, FLState(), ranked(ME, OTHER), 50),
     replace(LOCAL, bootstrap="auto"), Action.CAMPAIGN, "my rank 0"),
    ("not-candidate", View(50, None, ELECTED, ranked(OTHER), 44, 44), LOCAL,
     Action.NOT_CANDIDATE, "vacancy at rev 44: this node is not among the 1 candidates"),
    ("rank0-now", View(50, None, ELECTED, ranked(ME, OTHER), 44, 44), LOCAL,
     Action.CAMPAIGN, "vacancy at rev 44: my rank 0"),
    ("rank1-waits", View(50, None, ELECTED, ranked(OTHER, ME), 44, 44),
     replace(LOCAL, vacancy_seen=99.6), Action.WAIT_RANK, "my rank 1 [10.0.0.2:5000=10.00, "
     "10.0.0.1:5000=9.00], campaigning in 0.6s"),
    ("rank1-due", View(50, None, ELECTED, ranked(OTHER, ME), 44, 44),
     replace(LOCAL, vacancy_seen=98.9), Action.CAMPAIGN, "my rank 1"),
    ("rank1-fast-step", View(50, None, ELECTED, ranked(OTHER, ME), 44, 44, max_rtt_ms=1.0),
     replace(LOCAL, vacancy_seen=99.75), Action.CAMPAIGN, "my rank 1"),
    ("rank1-slow-links", View(50, None, ELECTED, ranked(OTHER, ME), 44, 44, max_rtt_ms=200.0),
     replace(LOCAL, vacancy_seen=99.8), Action.WAIT_RANK, "campaigning in 0.5s"),
    ("polled-vacancy", View(50, None, ELECTED, ranked(ME), 50), LOCAL,
     Action.CAMPAIGN, "vacancy seen by polling at rev 50"),
    # -- planned handover (raftfl aggregator handover) --
    ("handover-serving", View(50, HELD_BY_ME, MINE, handover=TO_OTHER, handover_revision=48),
     replace(LOCAL, serving_term=7), Action.HAND_OVER, f"handover of term 7 to {OTHER} "
     "requested at rev 48: finishing run 1's round 1, then resigning"),
    ("handover-idle", View(50, HELD_BY_ME, DONE, run=None, handover=TO_OTHER,
                           handover_revision=48), LOCAL,
     Action.HAND_OVER, "no run in progress, resigning now"),
    ("handover-needs-the-record-first", View(50, HELD_BY_ME, ELECTED, handover=TO_OTHER), LOCAL,
     Action.RECORD_ELECTION, "holding term 7 without its election record"),
    ("handover-of-an-older-term", View(50, HELD_BY_ME, MINE,
                                       handover=replace(TO_OTHER, term=5)), LOCAL,
     Action.SERVE, "aggregator for term 7"),
    ("handover-of-the-holder-we-follow", View(50, HELD_BY_OTHER, ELECTED, handover=TO_ME), LOCAL,
     Action.FOLLOW, f"worker for {OTHER} (term 9)"),
    ("vacant-handover-to-me", View(50, None, AFTER_9, ranked("c", OTHER, ME), 44, 44,
                                   handover=TO_ME), replace(LOCAL, vacancy_seen=100.0),
     Action.CAMPAIGN, f"handover from {OTHER} (term 9) to this node: campaigning now"),
    ("vacant-handover-to-other", View(50, None, AFTER_9, ranked(ME, "c"), 44, 44, handover=TO_C),
     replace(LOCAL, vacancy_seen=99.5), Action.WAIT_HANDOVER,
     "handover to c: waiting for its campaign (2.5s, then ranking)"),
    ("vacant-handover-target-silent", View(50, None, AFTER_9, ranked(ME, "c"), 44, 44,
                                           handover=TO_C), replace(LOCAL, vacancy_seen=96.5),
     Action.CAMPAIGN, "vacancy at rev 44: my rank 0"),
    ("vacant-handover-target-silent-rank1", View(50, None, AFTER_9, ranked(OTHER, ME), 44, 44,
                                                 handover=TO_C),
     replace(LOCAL, vacancy_seen=96.5), Action.WAIT_RANK, "my rank 1"),
    ("vacant-handover-stale", View(50, None, state(elected(OTHER, 12)), ranked(ME), 44, 44,
                                   handover=TO_C), replace(LOCAL, vacancy_seen=100.0),
     Action.CAMPAIGN, "vacancy at rev 44: my rank 0"),
    ("vacant-handover-to-me-while-paused", View(50, None, AFTER_9, ranked(ME), 44, 44,
                                                handover=TO_ME, paused_since=30), LOCAL,
     Action.CAMPAIGN, "handover from"),
    ("vacant-handover-to-other-while-paused", View(50, None, AFTER_9, ranked(ME), 44, 44,
                                                   handover=TO_C, paused_since=30),
     replace(LOCAL, vacancy_seen=90.0), Action.PAUSED,
     "handover to c; failover paused since rev 30: not campaigning"),
    ("nofailover-target", View(50, None, AFTER_9, ranked(OTHER), 44, 44, handover=TO_ME),
     replace(LOCAL, nofailover=True), Action.NOFAILOVER, "nofailover"),
    # -- maintenance mode (raftfl pause / resume) --
    ("paused-vacant", View(50, None, ELECTED, ranked(ME), 44, 44, paused_since=40), LOCAL,
     Action.PAUSED, "role vacant; failover paused since rev 40: not campaigning"),
    ("paused-next-run", View(50, None, FLState(), ranked(ME), 44, 44, run=2, elected_before=True,
                             paused_since=40), LOCAL, Action.PAUSED, "paused since rev 40"),
    ("paused-first-election", View(50, None, FLState(), paused_since=40),
     replace(LOCAL, bootstrap="self"), Action.CAMPAIGN, "bootstrap: campaigning"),
    ("paused-holder-gone", View(50, HELD_BY_OTHER, ELECTED, holder_gone=True,
                                suspected_by=frozenset({"c"}), paused_since=40,
                                live_members=frozenset({ME, OTHER, "c"})), LOCAL,
     Action.PAUSED, f"{OTHER} is evidently gone, but failover is paused since rev 40"),
    ("paused-holder-serves", View(50, HELD_BY_ME, MINE, paused_since=40),
     replace(LOCAL, serving_term=7), Action.SERVE, "aggregator for term 7"),
    ("paused-follow", View(50, HELD_BY_OTHER, ELECTED, paused_since=40), LOCAL,
     Action.FOLLOW, f"worker for {OTHER}"),
    ("paused-lease-lost-still-steps-down", View(50, HELD_BY_ME, MINE, paused_since=40),
     replace(LOCAL, serving_term=7, lease_valid=False), Action.STEP_DOWN, "stepping down"),
]


@pytest.mark.parametrize("view,local,action,words", [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_decide(view: View, local: Local, action: Action, words: str) -> None:
    decision = decide(view, local)
    assert decision.action is action, decision.sentence
    assert words in decision.sentence


def test_every_action_has_a_row() -> None:
    seen = {decide(c[1], c[2]).action for c in CASES}
    assert seen == set(Action)


def test_wait_rank_topic_is_stable_while_the_wait_ticks_down() -> None:
    view = View(50, None, ELECTED, ranked(OTHER, ME), 44, 44)
    a = decide(view, replace(LOCAL, vacancy_seen=99.6))
    b = decide(view, replace(LOCAL, vacancy_seen=99.6, now=100.2))
    assert a.sentence != b.sentence and a.topic == b.topic and b.wait_s == pytest.approx(0.4)


def test_wait_handover_topic_is_stable_while_the_wait_ticks_down() -> None:
    view = View(50, None, AFTER_9, ranked(ME, "c"), 44, 44, handover=TO_C)
    a = decide(view, replace(LOCAL, vacancy_seen=99.0))
    b = decide(view, replace(LOCAL, vacancy_seen=99.0, now=101.0))
    assert a.action is b.action is Action.WAIT_HANDOVER and a.topic == b.topic
    assert b.wait_s == pytest.approx(1.0)


ACTIVE = replace(LOCAL, active_run=1)
SERVING = replace(ACTIVE, serving_term=7, serving_run=1)
CHORES = [
    # (id, view, local, chores): the housekeeping a cycle does before its action, in order
    ("steady-worker", View(50, HELD_BY_OTHER, ELECTED), ACTIVE, (Chore.TEND_VOTERS,)),
    ("new-run", View(50, HELD_BY_OTHER, ELECTED, run=2), ACTIVE,
     (Chore.ACTIVATE_RUN, Chore.TEND_VOTERS)),
    ("first-run", View(50, HELD_BY_OTHER, ELECTED), LOCAL,
     (Chore.ACTIVATE_RUN, Chore.TEND_VOTERS)),
    ("run-ended", View(50, HELD_BY_ME, MINE, run=None), SERVING,
     (Chore.ACTIVATE_RUN, Chore.RETIRE_SERVER, Chore.TEND_VOTERS)),
    ("run-finished", View(50, HELD_BY_OTHER, ELECTED, finished_runs=(1,), run=2),
     replace(ACTIVE, serving_run=None),
     (Chore.ACTIVATE_RUN, Chore.SAVE_FINISHED, Chore.TEND_VOTERS)),
    ("serving-leader-due", View(50, HELD_BY_ME, MINE), replace(SERVING, leader_check_due=True),
     (Chore.MOVE_LEADER, Chore.TEND_VOTERS)),
    ("serving-leader-checked", View(50, HELD_BY_ME, MINE), SERVING, (Chore.TEND_VOTERS,)),
    ("worker-never-moves-leader", View(50, HELD_BY_OTHER, ELECTED),
     replace(ACTIVE, leader_check_due=True), (Chore.TEND_VOTERS,)),
    ("finish-does-nothing-else", View(50, HELD_BY_ME, DONE, run=None, finished_runs=(1,)),
     replace(SERVING, exit_on_complete=True), ()),
]


@pytest.mark.parametrize("view,local,chores", [c[1:] for c in CHORES], ids=[c[0] for c in CHORES])
def test_chores(view: View, local: Local, chores: tuple[Chore, ...]) -> None:
    assert decide(view, local).chores == chores


def test_every_chore_has_a_row() -> None:
    assert {c for row in CHORES for c in row[3]} == set(Chore)


@pytest.mark.parametrize("raw,lease,reason", [
    (b'{"node": "n", "flower_address": "h:1", "term": 3}', 5, None),
    (b"garbage", 5, "not JSON"),
    (b"[" * 1500 + b"]" * 1500, 5, "nested more than"),
    (b'["n"]', 5, "not a JSON object"),
    (b'{"node": 3}', 5, "no node name"),
    (b'{"node": "n", "flower_address": 7}', 5, "flower_address"),
    (b'{"node": "n", "flower_address": "h:1"}', 0, "not bound to a lease"),
    (b'{"node": "n", "pad": "' + b"x" * 5000 + b'"}', 5, "bytes"),
])
def test_parse_role(raw: bytes, lease: int, reason: str | None) -> None:
    role = parse_role(raw, create_revision=42, lease=lease, mod_revision=43)
    if reason is None:
        assert role == RoleHolder("n", "h:1", term=42, lease=5, mod_revision=43)
    else:
        assert isinstance(role, MalformedRole) and reason in role.reason and role.term == 42


def test_term_is_the_create_revision_not_the_value() -> None:
    role = parse_role(b'{"node": "n", "flower_address": null, "term": 999}', 42, 5, 50)
    assert isinstance(role, RoleHolder) and role.term == 42


@pytest.mark.parametrize("refused,failed,since,now,gone_", [
    (0, 0, None, 10.0, False),
    (2, 2, 9.8, 10.0, False),
    (3, 3, 9.7, 10.0, True),  # three refusals in a row: nothing listens there any more
    (0, 5, 9.0, 10.0, False),  # silent for 1 s: not yet (half of a 3 s TTL)
    (0, 15, 8.4, 10.0, True),  # silent for 1.6 s
])
def test_evidence_gone(refused: int, failed: int, since: float | None, now: float,
                       gone_: bool) -> None:
    from raftfl.core.evidence import Evidence, gone

    assert gone(Evidence(7, "h", refused, failed, since), now, evidence_s=1.5) is gone_


def test_evidence_fold_resets_on_any_answer() -> None:
    from raftfl.core.evidence import Evidence, Probe, fold

    ev = Evidence(7, "h")
    ev = fold(ev, [Probe.REFUSED, Probe.REFUSED], 1.0)
    ev = fold(ev, [Probe.REFUSED, Probe.FAILED], 1.1)
    assert (ev.refused, ev.failed, ev.since) == (0, 2, 1.0)
    ev = fold(ev, [Probe.REFUSED, Probe.REFUSED], 1.2)
    assert (ev.refused, ev.failed) == (1, 3)
    assert fold(ev, [Probe.OK, Probe.REFUSED], 1.3) == Evidence(7, "h")  # one answer: alive
    assert fold(ev, [], 1.3) == Evidence(7, "h")  # nothing probed: no evidence


@pytest.mark.parametrize("rtt,cap,step", [(None, 1.0, 1.0), (1.0, 1.0, 0.2), (100.0, 1.0, 0.4),
                                          (500.0, 1.0, 1.0), (100.0, 0.3, 0.3)])
def test_rank_step_adapts_to_rtt(rtt: float | None, cap: float, step: float) -> None:
    from raftfl.core.evidence import rank_step

    assert rank_step(rtt, cap) == pytest.approx(step)
