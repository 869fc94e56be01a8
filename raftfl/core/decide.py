"""`decide(view, local) -> Decision`: what a node should do this cycle, as a pure function.

Like Patroni's `ha.py`, a node's HA loop is level-triggered: each cycle observes etcd at one
revision (`View`), adds what only this node knows (`Local`), and this function returns one
action and one readable sentence. The node carries the action out and logs the sentence when
it changes. Keeping the decision pure means every branch is a table row in
`tests/unit/test_decide.py`, and no thread can change the inputs half-way through a cycle.

An operator steers it through two keys (raftfl/core/maintenance.py): a handover request makes
the holder resign after its current round and the named node campaign at once while the
others wait for it; a pause (maintenance mode) stops every node from filling a vacancy or
taking over on evidence, and leaves the holder serving.

Besides its one action, a decision names the cycle's housekeeping (`Chore`): activating a new
run, retiring a ServerApp whose run ended, saving finished runs' models, moving etcd's Raft
leadership off the aggregator, and voter upkeep. The node does nothing a decision did not
name.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum

from raftfl.core.evidence import confirmed, rank_step
from raftfl.core.maintenance import HandoverRequest
from raftfl.core.ranking import Ranked
from raftfl.core.replay import FLState
from raftfl.core.role import MalformedRole, RoleHolder


class Action(Enum):
    FINISH = "finish"  # --exit-on-complete, and the last run completed: fetch its model, leave
    IDLE = "idle"  # no run queued or running: wait for `raftfl run submit`
    OPEN_LEASE = "open_lease"  # no lease (first cycle, or lost): grant one, publish presence
    STEP_DOWN = "step_down"  # stop serving now
    RECORD_ELECTION = "record_election"  # our term has no aggregator_elected yet: append it
    SERVE = "serve"  # make sure our Flower server runs for our term
    FOLLOW = "follow"  # train for the holder
    SUSPECT = "suspect"  # the holder is evidently gone: publish it, keep following
    TAKEOVER = "takeover"  # ...and a majority agrees: delete the role key, fenced on its term
    WAIT_OWN_KEY = "wait_own_key"  # the key names us on a lease we lost: it will expire
    WAIT_MALFORMED = "wait_malformed"  # a malformed role key: report, give it one TTL
    CLEAR_MALFORMED = "clear_malformed"  # ...then delete it, guarded by its revisions
    NOFAILOVER = "nofailover"  # vacant, but this node never campaigns
    WAIT_BOOTSTRAP = "wait_bootstrap"  # first election: the -a flag names another node
    WAIT_SAMPLES = "wait_samples"  # first election with -a auto: not every peer measured yet
    NOT_CANDIDATE = "not_candidate"  # vacant, but this node is not in the ranking
    WAIT_RANK = "wait_rank"  # vacant: a better-ranked node goes first
    CAMPAIGN = "campaign"  # vacant and our turn: create-if-absent
    HAND_OVER = "hand_over"  # a handover names our term: finish the round, record, resign
    WAIT_HANDOVER = "wait_handover"  # vacant by a handover to another node: let it campaign
    PAUSED = "paused"  # failover is paused: fill no vacancy, take nothing over


class Chore(Enum):
    """Housekeeping a cycle does, in this order: the first three before its action, the
    last two after it (the action, a takeover say, never waits for them)."""

    ACTIVATE_RUN = "activate_run"  # the active run changed: load its app, watch its log
    RETIRE_SERVER = "retire_server"  # our ServerApp serves a run that is no longer active
    SAVE_FINISHED = "save_finished"  # a run finished: write its final model to the data dir
    MOVE_LEADER = "move_leader"  # serving, and due to check that our member does not lead Raft
    TEND_VOTERS = "tend_voters"  # voter upkeep (the aggregator), an upgrade request (a client)

    @property
    def after_action(self) -> bool:
        return self in (Chore.MOVE_LEADER, Chore.TEND_VOTERS)


@dataclass(frozen=True)
class View:
    """Everything etcd says, read at one revision."""

    revision: int
    role: RoleHolder | MalformedRole | None
    state: FLState  # the active run's; with no active run, the newest finished run's
    ranking: tuple[Ranked, ...] = ()  # when vacant: every node's ranking at `ranked_at`
    ranked_at: int = 0
    vacancy_revision: int | None = None  # the role key's delete revision, once a watch saw it
    peers_measured: bool = True  # -a auto bootstrap: every expected node has samples
    max_rtt_ms: float | None = None  # largest mean RTT in the ranking: paces the rank steps
    holder_gone: bool = False  # this node's probes say the holder's host is gone
    suspected_by: frozenset[str] = frozenset()  # nodes that published the same evidence
    live_members: frozenset[str] = frozenset()  # nodes with a member record
    run: int | None = 1  # the active run: the lowest one neither completed nor stopped
    elected_before: bool = False  # an earlier run recorded an election (bootstrap is over)
    handover: HandoverRequest | None = None  # control/handover, if present
    handover_revision: int = 0  # its mod revision
    paused_since: int | None = None  # control/paused's create revision, while paused
    finished_runs: tuple[int, ...] = ()  # runs finished since the node last saved their models


@dataclass(frozen=True)
class Local:
    """What only this node knows, owned by its HA loop."""

    name: str
    now: float  # monotonic seconds
    lease: int | None
    lease_valid: bool  # refreshed within its TTL, as this node measures it
    serving_term: int | None  # the term our Flower server runs for, if it runs
    bootstrap: str = "auto"  # -a: "self", "auto" or the name of the bootstrap aggregator
    nofailover: bool = False
    rank_step: float = 1.0
    malformed_grace_s: float = 3.0  # a malformed role key is deleted after this long
    handover_wait_s: float = 3.0  # a handover's named node gets this long to campaign
    vacancy_seen: float | None = None  # monotonic time this node first saw the vacancy
    malformed_seen: float | None = None  # monotonic time this node first saw a malformed key
    exit_on_complete: bool = False  # leave once no run is left and the last one completed
    active_run: int | None = None  # the run whose app and log the node has taken up
    serving_run: int | None = None  # the run our ServerApp serves, if one runs
    leader_check_due: bool = False  # our etcd member may lead Raft, unchecked for a while


@dataclass(frozen=True)
class Decision:
    action: Action
    sentence: str
    term: int | None = None
    holder: RoleHolder | None = None
    rank: int | None = None
    wait_s: float | None = None
    run: int | None = None
    chores: tuple[Chore, ...] = ()

    @property
    def topic(self) -> tuple[Action, int | None, int | None, int | None]:
        """What makes two decisions 'the same' for logging (the wait figure ticks down)."""
        return self.action, self.term, self.rank, self.run


def decide(view: View, local: Local) -> Decision:
    """The cycle's action and sentence, and the housekeeping it needs."""
    decision = _action(view, local)
    return replace(decision, chores=_chores(view, local, decision))


def _chores(view: View, local: Local, decision: Decision) -> tuple[Chore, ...]:
    if decision.action is Action.FINISH:
        return ()
    chores = []
    if view.run != local.active_run:
        chores.append(Chore.ACTIVATE_RUN)
    if local.serving_run is not None and local.serving_run != view.run:
        chores.append(Chore.RETIRE_SERVER)
    if view.finished_runs:
        chores.append(Chore.SAVE_FINISHED)
    if decision.action is Action.SERVE and local.leader_check_due:
        chores.append(Chore.MOVE_LEADER)
    chores.append(Chore.TEND_VOTERS)
    return tuple(chores)


def _action(view: View, local: Local) -> Decision:
    state, role = view.state, view.role
    if view.run is None and local.exit_on_complete and state.finished:
        if state.completed is None:
            return Decision(Action.FINISH, "the last run was stopped: leaving")
        return Decision(Action.FINISH, f"run completed (term {state.completed.term}, model "
                        f"{state.completed.model_sha256[:12]}): fetching the final model")
    if local.serving_term is not None and not local.lease_valid:
        return Decision(Action.STEP_DOWN, f"lease not refreshed within its TTL: stepping down "
                        f"from term {local.serving_term}", term=local.serving_term)
    if local.lease is None:
        return Decision(Action.OPEN_LEASE, "no lease: opening one and publishing this node")
    if view.run is None:
        if isinstance(role, RoleHolder) and _asked_to_hand_over(role, view, local):
            return _hand_over(role, view)
        return Decision(Action.IDLE, "no run queued: waiting for `raftfl run submit`")
    if isinstance(role, MalformedRole):
        return _malformed(role, local)
    if isinstance(role, RoleHolder):
        return _held(role, view, local)
    return _vacant(view, local)


def _malformed(role: MalformedRole, local: Local) -> Decision:
    if local.serving_term is not None:
        return Decision(Action.STEP_DOWN, f"the role key was replaced by a malformed value "
                        f"({role.reason}): stepping down", term=local.serving_term)
    seen = local.malformed_seen if local.malformed_seen is not None else local.now
    if local.now - seen >= local.malformed_grace_s:
        return Decision(Action.CLEAR_MALFORMED, f"role key malformed for {local.malformed_grace_s:.0f}s "
                        f"({role.reason}): deleting it (guarded by revision {role.mod_revision})",
                        term=role.term)
    return Decision(Action.WAIT_MALFORMED, f"role key malformed ({role.reason}): deleting it "
                    f"in {local.malformed_grace_s - (local.now - seen):.1f}s unless it changes",
                    term=role.term)


def _held(role: RoleHolder, view: View, local: Local) -> Decision:
    mine = role.node == local.name and role.lease == local.lease
    if mine:
        if not any(e.term == role.term for e in view.state.elections):
            return Decision(Action.RECORD_ELECTION, f"holding term {role.term} without its "
                            "election record: recording it", term=role.term, holder=role)
        if _asked_to_hand_over(role, view, local):
            return _hand_over(role, view)
        rounds = view.state.rounds
        nxt = view.state.next_round
        where = f"round {nxt} of {rounds}" if rounds else "the first round"
        return Decision(Action.SERVE, f"aggregator for term {role.term}: serving run "
                        f"{view.run}, {where}", term=role.term, holder=role, run=view.run)
    if local.serving_term is not None:
        return Decision(Action.STEP_DOWN, f"{role.node} holds term {role.term}: stepping down "
                        f"from term {local.serving_term}", term=local.serving_term, holder=role)
    if role.node == local.name:
        return Decision(Action.WAIT_OWN_KEY, f"the role key names this node on lease "
                        f"{role.lease:x}, which it lost: waiting for it to expire",
                        term=role.term, holder=role)
    if view.holder_gone and view.paused_since is not None:
        return Decision(Action.PAUSED, f"{role.node} is evidently gone, but failover is paused "
                        f"since rev {view.paused_since}: not taking over (raftfl resume)",
                        term=role.term, holder=role)
    if view.holder_gone:
        agree = view.suspected_by | {local.name}
        others = view.live_members - {role.node}
        tally = f"{len(agree & others)} of {len(others)} other members agree"
        if confirmed(agree, view.live_members, role.node):
            return Decision(Action.TAKEOVER, f"{role.node} is evidently gone (its etcd and Flower "
                            f"endpoints fail) and {tally}: ending term {role.term}",
                            term=role.term, holder=role)
        return Decision(Action.SUSPECT, f"{role.node} is evidently gone (its etcd and Flower "
                        f"endpoints fail); {tally}, waiting for a majority",
                        term=role.term, holder=role)
    return Decision(Action.FOLLOW, f"worker for {role.node} (term {role.term})",
                    term=role.term, holder=role)


def _asked_to_hand_over(role: RoleHolder, view: View, local: Local) -> bool:
    h = view.handover
    return h is not None and h.term == role.term and h.holder == local.name \
        and role.node == local.name


def _hand_over(role: RoleHolder, view: View) -> Decision:
    assert view.handover is not None
    h = view.handover
    if view.run is None:
        then = "no run in progress, resigning now"
    else:
        then = f"finishing run {view.run}'s round {view.state.next_round}, then resigning"
    return Decision(Action.HAND_OVER, f"handover of term {role.term} to {h.to} requested at rev "
                    f"{view.handover_revision}: {then}", term=role.term, holder=role,
                    run=view.run)


def _pending_handover(view: View) -> HandoverRequest | None:
    """The handover that made (or, its holder gone, still names) this vacancy; a request
    older than the newest recorded election is stale."""
    h = view.handover
    last = view.state.elections[-1].term if view.state.elections else 0
    return h if h is not None and h.term >= last else None


def _vacant(view: View, local: Local) -> Decision:
    if local.serving_term is not None:
        return Decision(Action.STEP_DOWN, f"the role key is gone: stepping down from term "
                        f"{local.serving_term}", term=local.serving_term)
    if local.nofailover:
        return Decision(Action.NOFAILOVER, "role vacant; this node is nofailover and will not "
                        "campaign")
    seen = local.vacancy_seen if local.vacancy_seen is not None else local.now
    handover = _pending_handover(view)
    if handover is not None:
        if handover.to == local.name:
            return Decision(Action.CAMPAIGN, f"handover from {handover.holder} (term "
                            f"{handover.term}) to this node: campaigning now", rank=0)
        if view.paused_since is not None:
            return Decision(Action.PAUSED, f"handover to {handover.to}; failover paused since "
                            f"rev {view.paused_since}: not campaigning")
        wait = seen + local.handover_wait_s - local.now
        if wait > 0:
            return Decision(Action.WAIT_HANDOVER, f"handover to {handover.to}: waiting for its "
                            f"campaign ({wait:.1f}s, then ranking)", wait_s=wait)
        seen += local.handover_wait_s  # it did not take the role: rank, as after any vacancy
    first = not view.state.elections and not view.elected_before
    if view.paused_since is not None and not first:
        return Decision(Action.PAUSED, f"role vacant; failover paused since rev "
                        f"{view.paused_since}: not campaigning (raftfl resume)")
    if first:  # the first election: -a decides
        if local.bootstrap in ("self", local.name):
            return Decision(Action.CAMPAIGN, "bootstrap: campaigning for the first term", rank=0)
        if local.bootstrap != "auto":
            return Decision(Action.WAIT_BOOTSTRAP,
                            f"waiting for bootstrap aggregator {local.bootstrap}")
        if not view.peers_measured:
            return Decision(Action.WAIT_SAMPLES, "waiting for every node to publish latency "
                            "samples before the first election")
    where = (f"vacancy at rev {view.vacancy_revision}" if view.vacancy_revision is not None
             else f"vacancy seen by polling at rev {view.revision}")
    names = [r.node for r in view.ranking]
    if local.name not in names:
        return Decision(Action.NOT_CANDIDATE, f"{where}: this node is not among the "
                        f"{len(names)} candidates")
    my_rank = names.index(local.name)
    top = ", ".join(f"{r.node}={r.score:.2f}" for r in view.ranking[:3])
    wait = seen + my_rank * rank_step(view.max_rtt_ms, local.rank_step) - local.now
    if wait <= 0:
        return Decision(Action.CAMPAIGN, f"{where}: my rank {my_rank} [{top}], campaigning now",
                        rank=my_rank)
    return Decision(Action.WAIT_RANK, f"{where}: my rank {my_rank} [{top}], campaigning in "
                    f"{wait:.1f}s", rank=my_rank, wait_s=wait)
