"""Invariants over a finished run: what "no round lost or committed twice" means, checked.

Pure functions of the replayed log and each node's final model, used by the demo, the fault
harness and the tests. The replayed state keeps every committed round as ranges and the
newest rounds' records only (core/replay.py's WINDOW): the term order is checked over those.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from raftfl.core.events import GridExchange, RoundStarted
from raftfl.core.replay import FLState, Logged


@dataclass
class Failover:
    failed: str | None
    new: str
    term: int
    killed_at: float | None
    lease_expired_at: float | None
    elected_at: float
    resumed_at: float | None

    @property
    def recovery_s(self) -> float | None:
        if self.killed_at is None or self.resumed_at is None:
            return None
        return round(self.resumed_at - self.killed_at, 3)

    def to_dict(self) -> dict[str, object]:
        return {"failed": self.failed, "new": self.new, "term": self.term,
                "killed_at": self.killed_at, "lease_expired_at": self.lease_expired_at,
                "elected_at": self.elected_at, "resumed_at": self.resumed_at,
                "recovery_s": self.recovery_s}


@dataclass
class Verdict:
    violations: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations


def check(state: FLState, rounds: int, final_models: dict[str, str]) -> Verdict:
    v = Verdict()
    expected = [(1, rounds)] if rounds else []
    own_loop = state.completed is not None and not state.completed.model_sha256
    if own_loop:  # a ServerApp with its own loop: its recorded grid calls, no rounds
        calls = sorted(state.exchanges)
        if calls != list(range(1, len(calls) + 1)):
            v.violations.append(f"recorded grid calls {calls} are not 1..{len(calls)}")
    elif state.committed_rounds.spans != expected:
        v.violations.append(f"committed rounds {_spans(state.committed_rounds.spans)} != "
                            f"{_spans(expected)}")
    allowed_repeats = len(state.rolled_back)
    if len(state.commit_order) - len(set(state.commit_order)) > allowed_repeats:
        v.violations.append(f"rounds committed more than once: {state.commit_order}")
    if state.duplicate_commits:
        v.violations.append(f"duplicate commits at seqs {state.duplicate_commits}")
    if state.stale_commits:
        v.violations.append(f"commits from an older term at seqs {state.stale_commits}")
    if state.chain_breaks:
        v.violations.append(f"hash chain broken at rounds {state.chain_breaks}")
    if state.rejected:
        v.violations.append("events rejected by replay: "
                            + "; ".join(f"seq {seq}: {why}" for seq, why in state.rejected))
    terms = [state.committed[r].term for r in sorted(state.committed)]
    if terms != sorted(terms):
        v.violations.append(f"commit terms go backwards: {terms}")
    if not state.done:
        v.violations.append("run not completed")
    hashes = set(final_models.values())
    if own_loop and hashes <= {""}:
        return v  # no model to agree on
    if len(hashes) != 1:
        v.violations.append(f"final models differ: {final_models}")
    elif state.completed and hashes != {state.completed.model_sha256}:
        v.violations.append("final model differs from the committed one")
    return v


def _spans(spans: list[tuple[int, int]]) -> str:
    """[(1, 3), (5, 5)] -> "[1..3, 5]": a long run's rounds in a line."""
    return "[" + ", ".join(f"{lo}..{hi}" if hi > lo else str(lo) for lo, hi in spans) + "]"


def failovers(log: list[Logged], kills: dict[str, float] | None = None,
              vacancies: list[float] | None = None) -> list[Failover]:
    """The failover timeline: each election after the first, with when work resumed."""
    kills = kills or {}
    out: list[Failover] = []
    elections = [item.event for item in log if item.event.type == "aggregator_elected"]
    for i, el in enumerate(elections[1:]):
        resumed = next((item.event.ts for item in log  # a round, or an own loop's grid call
                        if isinstance(item.event, RoundStarted | GridExchange)
                        and item.event.term == el.term), None)
        failed = getattr(el, "previous", None) or elections[i].node
        expired = vacancies[i] if vacancies and i < len(vacancies) else getattr(el, "vacant_since", None)
        out.append(Failover(failed, el.node, el.term, kills.get(failed), expired, el.ts, resumed))
    return out
