"""`raftfl soak`: training runs back to back on real node processes, with random faults.

The fault matrix (`faults.py`) proves each fault at the one phase its scenario pins. A soak
draws the target (the aggregator, a worker, the etcd Raft leader's node), the signal
(SIGKILL, or SIGSTOP then SIGCONT after more than the lease TTL; the etcd leader's node is
stopped with its etcd member, like a hung host) and the phase (before fit, during fit,
during the checkpoint, between rounds, or a random delay after a round started) at random,
run after run, to meet the timings no scenario has seen; some runs take two failures in a
row, some cut the aggregator's link (where network namespaces can be made).
A killed node is restarted on its data dir once the cluster has moved on, so a run stays at
N nodes. After every run the invariants of `invariants.check` are checked, and every node
that was *not* faulted must have exited 0 without an `internal error` or a traceback in its
log: a survivor that dies takes its etcd member with it, which is how a quorum is lost for
good.

The whole schedule is drawn from `random.Random(seed)` before anything runs, so a seed
replays the same faults whatever the timing; what a fault names ("a worker", "the etcd
leader's node") is resolved against the live cluster when it fires.
"""

from __future__ import annotations

import csv
import json
import math
import random
import re
import shutil
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from itertools import count, islice
from pathlib import Path
from typing import Any

from raftfl.core.errors import RaftflError
from raftfl.core.events import (
    AggregatorElected,
    FitResults,
    NodeJoined,
    RoundCommitted,
    RoundStarted,
    RunCompleted,
)
from raftfl.core.invariants import check, failovers
from raftfl.core.replay import replay
from raftfl.lab.faults import Skip, _ip, netns_setup, netns_teardown
from raftfl.lab.localcluster import LocalCluster, NodeProc
from raftfl.lab.testhooks import HOLD_ENV

TARGETS = ("aggregator", "worker", "etcd_leader")
SIGNALS = ("kill", "stop")
PHASES = ("before_fit", "during_fit", "during_checkpoint", "between_rounds", "random")
# Where each phase is, as (the event that marks it, test hold that keeps the node there).
PHASE_AT: dict[str, tuple[type, str]] = {
    "before_fit": (RoundStarted, "fit_start:{r}"),
    "during_fit": (RoundStarted, "fit:{r}"),
    "during_checkpoint": (FitResults, "checkpoint:{r}"),
    "between_rounds": (RoundCommitted, "round_start:{next}"),
    "random": (RoundStarted, ""),
}
HOLD_S = 4.0  # a pinned phase lasts this long: the collector sees its event well within it
# Before the last round of a run with a SIGKILL: time for the killed node, restarted on its
# data dir, to rejoin before the others finish and leave.
REJOIN_HOLD_S = 6.0
ROUNDS = {"single": 4, "double": 5, "partition": 4}
TRAIN_SIZE, TEST_SIZE = 1500, 300  # explicit, small: a run lasts ~15-30 s
# Explicit node settings, so a soak does not change when node-start defaults do.
NODE_ARGS = ["--epochs", "1", "--round-timeout", "30", "--rank-step", "1",
             "--probe-interval", "1"]
# A run is stuck when no event at all arrives for STALL_S (a round under heavy load on a
# shared 2-core machine has taken 55 s); the absolute caps only bound a run that crawls.
STALL_S = 90.0
RUN_TIMEOUT_S = 900.0  # from a run's start to run_completed
STEP_TIMEOUT_S = 300.0  # for each awaited event within a run
EXIT_TIMEOUT_S = 60.0
CRASH_MARKERS = ("internal error", "Traceback (most recent call last)")


# -- the schedule (pure) -----------------------------------------------------------------------
@dataclass(frozen=True)
class Fault:
    target: str  # aggregator | worker | etcd_leader
    signal: str  # kill | stop | cut
    phase: str  # one of PHASES; "next" for the second of two failures in a row
    round: int  # the round whose phase is hit (0 for "next": the new term's next round)
    delay_s: float  # after the phase's event
    pick: float  # which worker, among the live ones sorted by name
    stop_extra_s: float  # a SIGSTOP lasts the lease TTL plus this

    @property
    def kind(self) -> str:
        return f"{self.signal} {self.target}"

    def describe(self) -> str:
        where = {"next": "in the new term's next round",
                 "random": f"{self.delay_s:.1f} s into r{self.round}"}.get(
            self.phase, f"{self.phase.replace('_', ' ')} r{self.round}")
        return f"{self.kind} {where}"


@dataclass(frozen=True)
class Plan:
    index: int
    kind: str  # single | double | partition
    rounds: int
    faults: tuple[Fault, ...]

    def holds(self, first_aggregator: bool) -> str:
        """RAFTFL_TEST_HOLD for the first aggregator (node 0, bootstrapped with -a self) or
        for the other nodes. The aggregator's phases hold only on node 0, where the first
        fault strikes: a successor re-running that round must not hold again, or the hold
        would be counted as recovery time."""
        specs = []
        for f in self.faults:
            template = PHASE_AT.get(f.phase, (None, ""))[1]
            if template and template.startswith("fit:") != first_aggregator:
                specs.append(template.format(r=f.round, next=f.round + 1) + f":{HOLD_S:g}")
        if any(f.signal == "kill" for f in self.faults):  # on whoever serves the last round
            specs.append(f"round_start:{self.rounds}:{REJOIN_HOLD_S:g}")
        return ",".join(specs)

    def describe(self) -> str:
        return " + ".join(f.describe() for f in self.faults)


def _fault(rng: random.Random, rounds: int, target: str | None = None,
           signal: str | None = None, phase: str | None = None) -> Fault:
    target = target or rng.choice(TARGETS)
    signal = signal or rng.choice(SIGNALS)
    phase = phase or rng.choice(PHASES)
    rnd = 0 if phase == "next" else rng.randint(1, rounds - 1)
    delay = rng.uniform(0.0, 2.0) if phase in ("random", "next") else rng.uniform(0.0, 0.6)
    return Fault(target, signal, phase, rnd, round(delay, 2), round(rng.random(), 4),
                 round(rng.uniform(0.5, 2.5), 2))


def plans(seed: int) -> Iterator[Plan]:
    """The endless fault schedule of a seed: 50% single faults (half of them on the
    aggregator, the rest on a worker or the etcd leader's node), 40% two failures in a row (the
    aggregator, then its successor), 10% a cut of the aggregator's link. Failovers are what a
    soak is for: about 1.15 per run."""
    rng = random.Random(seed)
    for i in count(1):
        draw = rng.random()
        if draw < 0.5:
            target = "aggregator" if rng.random() < 0.5 else rng.choice(TARGETS[1:])
            yield Plan(i, "single", ROUNDS["single"],
                       (_fault(rng, ROUNDS["single"], target=target),))
        elif draw < 0.9:
            n = ROUNDS["double"]
            first = _fault(rng, n, target="aggregator")
            first = replace(first, round=min(first.round, 2))  # leave rounds for the second
            yield Plan(i, "double", n, (first, _fault(rng, n, target="aggregator", phase="next")))
        else:
            n = ROUNDS["partition"]
            yield Plan(i, "partition", n, (_fault(rng, n, target="aggregator", signal="cut"),))


def schedule(seed: int, n: int) -> list[Plan]:
    """The first `n` plans of a seed's schedule."""
    return list(islice(plans(seed), n))


def parse_duration(text: str) -> float:
    """'90s', '30m', '1.5h' or plain seconds -> seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", text)
    if not m or float(m.group(1)) <= 0:
        raise ValueError(f"invalid duration {text!r}: expected e.g. 90s, 30m or 1h")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100): a value that was measured; None for none."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


# -- records ----------------------------------------------------------------------------------
@dataclass
class FaultRecord:
    run: int
    fault: str  # its description
    kind: str
    phase: str
    victim: str | None = None
    victim_role: str | None = None  # aggregator | worker, when it fired
    at: float | None = None  # wall time it fired
    term_before: int | None = None
    restarted: bool = False
    late_restart: bool = False  # restarted, but the run completed before it rejoined
    failover: bool = False
    recovery_s: float | None = None  # fault -> first round_started of the new term
    resume_s: float | None = None  # fault -> the next commit
    missed: str | None = None  # why it did not fire


@dataclass
class SurvivorCrash:
    run: int
    node: str
    reason: str
    log: str
    excerpt: str


@dataclass
class RunRecord:
    run: int
    plan: str
    kind: str
    nodes: int
    rounds: int
    commits: int = 0
    failovers: int = 0
    unexpected_failovers: int = 0
    violations: list[str] = field(default_factory=list)
    crashes: list[SurvivorCrash] = field(default_factory=list)
    faulted_node_errors: list[SurvivorCrash] = field(default_factory=list)
    faults: list[FaultRecord] = field(default_factory=list)
    seconds: float = 0.0
    logs: str | None = None  # where this run's node logs were kept (failed runs only)
    harness_error: str | None = None  # the soak itself failed in this run (not the nodes)

    @property
    def ok(self) -> bool:
        return not self.violations and not self.crashes and not self.harness_error


# -- one run ----------------------------------------------------------------------------------
class Run:
    """One training run on a fresh local cluster, carrying out one plan."""

    def __init__(self, plan: Plan, nodes: int, lease_ttl: int, seed: int,
                 netns: dict[str, Any] | None) -> None:
        self.plan = plan
        self.lease_ttl = lease_ttl
        env = {i: {HOLD_ENV: plan.holds(first_aggregator=i == 0)} for i in range(nodes)}
        netns = netns or {}
        self.c = LocalCluster(n=nodes, rounds=plan.rounds, cluster=f"soak{plan.index}",
                              lease_ttl=lease_ttl, train_size=TRAIN_SIZE, test_size=TEST_SIZE,
                              node_env=env,
                              extra_args=[*NODE_ARGS, "--seed", str(seed)],
                              ips=netns.get("ips"), wrappers=netns.get("wrappers"))
        self.links: list[str] = netns.get("links", [])
        self.faulted: set[str] = set()
        self.down: set[str] = set()  # killed and not (yet) restarted
        self.restarted: dict[str, float] = {}  # node -> when it was restarted
        self.late: set[str] = set()  # restarted, but the run completed before they rejoined
        self.rec = RunRecord(plan.index, plan.describe(), plan.kind, nodes, plan.rounds,
                             faults=[FaultRecord(plan.index, f.describe(), f.kind, f.phase)
                                     for f in plan.faults])

    def execute(self, keep_logs_in: Path, keep_all: bool = False) -> RunRecord:
        """Carry the plan out and check the run; a failed run's node logs (every run's with
        `keep_all`) are copied into `keep_logs_in`/run-NNN before the cluster (and its data)
        is removed."""
        started = time.monotonic()
        try:
            self.c.start()
            self._inject_all()
            self._wait(lambda e: isinstance(e, RunCompleted), "the run to complete",
                       max(10.0, RUN_TIMEOUT_S - (time.monotonic() - started)))
            self.late = self._late_restarts()
            self.c.wait_for(lambda: not any(n.alive and not n.stopped and n.name not in self.late
                                            for n in self.c.nodes),
                            EXIT_TIMEOUT_S, "the nodes to finish")
        except RaftflError as exc:  # the run stalled or its nodes died: checked below
            self.rec.violations.append(str(exc))
        except Exception as exc:  # noqa: BLE001 - the harness failed: this run proves nothing
            self.rec.harness_error = f"{type(exc).__name__}: {exc}"
        finally:
            try:
                self._thaw_all()
                self._evaluate()
                self._keep_logs(keep_logs_in, keep_all)
            finally:
                self.c.close()
        self.rec.seconds = round(time.monotonic() - started, 1)
        return self.rec

    # -- faults -------------------------------------------------------------------------------
    def _inject_all(self) -> None:
        term = self._wait(lambda e: isinstance(e, AggregatorElected), "an election").term
        for i, (fault, rec) in enumerate(zip(self.plan.faults, self.rec.faults, strict=True)):
            if self._completed():
                rec.missed = "the run completed first"
                continue
            if i > 0:  # the second failure in a row: wait for the new term and a full cluster
                term = self._await_back(term)
            event = self._await_phase(fault, term)
            # It finished while we waited for the phase, or during the delay into it (a round
            # can be shorter than the delay: then no commit can follow the fault).
            if isinstance(event, RunCompleted) or self._completed():
                rec.missed = "the run completed first"
                continue
            self._fire(fault, rec, event)
            term = self._after(fault, rec)

    def _await_phase(self, f: Fault, term: int) -> Any:
        """The event that opens the fault's phase, or RunCompleted if the run ends first."""
        if f.phase == "next":
            now = time.time()
            event = self._wait(lambda e: (isinstance(e, RoundStarted) and e.term >= term
                                          and e.ts >= now) or isinstance(e, RunCompleted),
                               f"a round started by term {term}")
        else:
            kind = PHASE_AT[f.phase][0]
            event = self._wait(lambda e: (isinstance(e, kind) and e.round == f.round
                                          and e.term == term) or isinstance(e, RunCompleted),
                               f"{kind.__name__} of round {f.round}")
        if not isinstance(event, RunCompleted):
            time.sleep(f.delay_s)
        return event

    def _victim(self, f: Fault, aggregator: str) -> NodeProc | None:
        if f.target == "aggregator":
            return self.c.by_name(aggregator)
        if f.target == "etcd_leader":
            name = self.c.etcd_leader()
            return self.c.by_name(name) if name else None
        workers = sorted(n.name for n in self.c.nodes
                         if n.name != aggregator and n.alive and not n.stopped)
        return self.c.by_name(workers[int(f.pick * len(workers))]) if workers else None

    def _fire(self, f: Fault, rec: FaultRecord, event: Any) -> None:
        victim = self._victim(f, event.node)
        if victim is None or not victim.alive:
            rec.missed = f"no live {f.target.replace('_', ' ')} to fault"
            return
        rec.victim, rec.term_before = victim.name, event.term
        rec.victim_role = "aggregator" if victim.name == event.node else "worker"
        self.faulted.add(victim.name)
        if f.signal == "kill":
            rec.at = self.c.kill(victim.name)
            self.down.add(victim.name)
        elif f.signal == "stop":
            rec.at = self.c.freeze(victim.name, member=f.target == "etcd_leader")
            time.sleep(self.lease_ttl + f.stop_extra_s)
            self.c.thaw(victim.name)
        else:
            self._cut(victim, rec)

    def _cut(self, victim: NodeProc, rec: FaultRecord) -> None:
        """Cut the victim's veth link until a new term commits, then heal it."""
        link = self.links[self.c.nodes.index(victim)]
        _ip("link", "set", link, "down")
        rec.at = time.time()
        assert rec.term_before is not None
        old = rec.term_before
        try:
            self._wait(lambda e: (isinstance(e, RoundCommitted) and e.term > old)
                       or isinstance(e, RunCompleted), "a commit by the new aggregator")
        finally:
            _ip("link", "set", link, "up")

    def _after(self, f: Fault, rec: FaultRecord) -> int:
        """Wait until the cluster has moved on from the fault; restart a killed node on its
        data dir. Returns the term now serving."""
        if rec.at is None:
            return rec.term_before or 0
        fired = rec.at
        if rec.victim_role == "aggregator":
            old = rec.term_before or 0
            moved = self._wait(lambda e: (isinstance(e, RoundStarted) and e.term > old)
                               or isinstance(e, RunCompleted), "the new term's first round")
        else:
            moved = self._wait(lambda e: isinstance(e, RoundCommitted | RunCompleted)
                               and e.ts > fired, "a commit after the fault")
        if rec.victim in self.down and not self._completed():
            node = self.c.by_name(rec.victim)
            self.c.start_node(node)  # same args, same data dir
            self.down.discard(node.name)
            self.restarted[node.name] = time.time()
            rec.restarted = True
        return moved.term

    def _await_back(self, term: int) -> int:
        """The term serving once every restarted node has rejoined (so a second kill leaves
        a quorum), and the serving term has started a round."""
        for rec in self.rec.faults:
            if rec.restarted and rec.at is not None:
                self._wait(lambda e, name=rec.victim, fired=rec.at: (
                    isinstance(e, NodeJoined) and e.node == name and e.ts > fired)
                    or isinstance(e, RunCompleted), f"{rec.victim} to rejoin")
        elected = [i.event for i in list(self.c.log) if isinstance(i.event, AggregatorElected)]
        return max([term, *(e.term for e in elected)])

    def _wait(self, predicate: Callable[[Any], bool], what: str,
              timeout: float = STEP_TIMEOUT_S) -> Any:
        """The first collected event matching `predicate`. Gives up when no node process is
        left to write it, when no event at all arrived for STALL_S, or after `timeout`."""
        now = time.monotonic()
        deadline, seen, progressed = now + timeout, len(self.c.log), now
        while True:
            try:
                return self.c.wait_event(predicate, 1.0, what)
            except RaftflError:
                now = time.monotonic()
                if len(self.c.log) != seen:
                    seen, progressed = len(self.c.log), now
                if not any(n.alive for n in self.c.nodes):
                    raise RaftflError(f"every node exited before {what}") from None
                if now - progressed >= STALL_S:
                    raise RaftflError(f"no event for {STALL_S:.0f}s while waiting for {what}") \
                        from None
                if now >= deadline:
                    raise RaftflError(f"timed out after {timeout:.0f}s waiting for {what}") \
                        from None

    def _late_restarts(self) -> set[str]:
        """Restarted nodes with no node_joined of their new life before run_completed (in log
        order): the others may rightly finish and leave without them."""
        joined: set[str] = set()
        for item in list(self.c.log):
            e = item.event
            if isinstance(e, RunCompleted):
                break
            if isinstance(e, NodeJoined) and e.ts >= self.restarted.get(e.node, float("inf")):
                joined.add(e.node)
        late = set(self.restarted) - joined
        for rec in self.rec.faults:
            rec.late_restart = rec.restarted and rec.victim in late
        return late

    def _completed(self) -> bool:
        return any(isinstance(i.event, RunCompleted) for i in list(self.c.log))

    def _thaw_all(self) -> None:
        for node in self.c.nodes:
            if node.stopped and node.alive:
                self.c.thaw(node.name)

    # -- verdict ------------------------------------------------------------------------------
    def _evaluate(self) -> None:
        log = list(self.c.log)
        state = replay(log)
        self.rec.commits = state.commits
        live = {n.name for n in self.c.nodes if n.name not in self.down | self.late}
        finals = {k: v for k, v in self.c.final_models().items() if k in live}
        verdict = check(state, self.plan.rounds, finals)
        self.rec.violations += verdict.violations
        if set(finals) != live and state.done:
            self.rec.violations.append(f"no final model from {sorted(live - set(finals))}")
        self._recoveries(failovers(log), log)
        for node in self.c.nodes:
            if node.name in self.down | self.late:  # SIGKILLed by us, not back in time
                continue
            problem = _crash(self.plan.index, node)
            if problem is not None:
                (self.rec.faulted_node_errors if node.name in self.faulted
                 else self.rec.crashes).append(problem)

    def _keep_logs(self, root: Path, keep_all: bool) -> None:
        rec = self.rec
        if rec.ok and not rec.faulted_node_errors and not keep_all:
            return
        dest = root / f"run-{rec.run:03d}"
        dest.mkdir(parents=True, exist_ok=True)
        for node in self.c.nodes:
            if node.log_path.exists():
                shutil.copy2(node.log_path, dest / node.log_path.name)
        for item in rec.crashes + rec.faulted_node_errors:
            item.log = str(dest / Path(item.log).name)
        rec.logs = str(dest)

    def _recoveries(self, fos: list[Any], log: list[Any]) -> None:
        self.rec.failovers = len(fos)
        matched: set[int] = set()
        for rec in self.rec.faults:
            if rec.at is None:
                continue
            fired = rec.at
            commit = next((i.event.ts for i in log if isinstance(i.event, RoundCommitted)
                           and i.event.ts > fired), None)
            rec.resume_s = round(commit - fired, 3) if commit else None
            if rec.victim_role != "aggregator":
                continue
            fo = next((k for k, fo in enumerate(fos) if k not in matched
                       and fo.term > (rec.term_before or 0)), None)
            if fo is not None:
                matched.add(fo)
                rec.failover = True
                resumed = fos[fo].resumed_at
                rec.recovery_s = round(resumed - fired, 3) if resumed else None
        self.rec.unexpected_failovers = len(fos) - len(matched)


def _crash(run: int, node: NodeProc) -> SurvivorCrash | None:
    """A node that exited non-zero, or logged an internal error or a traceback."""
    try:
        lines = node.log_path.read_text(errors="replace").splitlines()
    except OSError:
        lines = []
    hit = next((k for k, line in enumerate(lines) if any(m in line for m in CRASH_MARKERS)),
               None)
    code = node.proc.poll() if node.proc is not None else None
    if hit is None and (code is None or code == 0):
        return None
    reason = (f"exited with {code}" if code not in (None, 0) else "") + \
        ("; " if code not in (None, 0) and hit is not None else "") + \
        (f"logged: {lines[hit].strip()[:160]}" if hit is not None else "")
    start = max(0, hit - 2) if hit is not None else max(0, len(lines) - 15)
    return SurvivorCrash(run, node.name, reason, str(node.log_path),
                         "\n".join(lines[start:start + 25]))


# -- the soak ---------------------------------------------------------------------------------
@dataclass
class SoakOptions:
    duration_s: float
    nodes: int = 3
    seed: int = 0
    lease_ttl: int = 3
    max_runs: int | None = None
    out: Path = Path("runs/soak")
    summary_json: Path | None = None
    keep_logs: bool = False  # every run's node logs, not only failed runs'


def soak(opts: SoakOptions, echo: Callable[[str], None] = print) -> int:
    """Run plans until the duration is used up; returns the exit code (0: no survivor crash
    and no invariant violation)."""
    out = opts.summary_json.parent if opts.summary_json else opts.out
    out.mkdir(parents=True, exist_ok=True)
    summary_path = opts.summary_json or out / "summary.json"
    echo(f"soak: {opts.nodes} nodes, seed {opts.seed}, {opts.duration_s:.0f} s, lease TTL "
         f"{opts.lease_ttl} s; output in {out}")
    started = time.monotonic()
    records: list[RunRecord] = []
    skipped: dict[str, dict[str, Any]] = {}
    interrupted = False
    try:
        for plan in plans(opts.seed):
            if records and (time.monotonic() - started >= opts.duration_s
                            or (opts.max_runs and len(records) >= opts.max_runs)):
                break
            netns: dict[str, Any] | None = None
            if plan.kind == "partition":
                try:
                    netns = netns_setup(opts.nodes)
                except Skip as exc:
                    entry = skipped.setdefault("partition", {"count": 0, "reason": str(exc)})
                    entry["count"] += 1
                    echo(f"run -  plan {plan.index}: {plan.describe()}: skipped ({exc})")
                    continue
            try:
                rec = Run(plan, opts.nodes, opts.lease_ttl, opts.seed, netns).execute(
                    out / "logs", opts.keep_logs)
            finally:
                if netns:
                    netns_teardown(netns)
            records.append(rec)
            echo(progress_line(rec, time.monotonic() - started))
    except KeyboardInterrupt:
        interrupted = True
        echo("soak: interrupted; summarising the runs so far")
    summary = summarise(records, opts, time.monotonic() - started, skipped)
    summary["interrupted"] = interrupted
    write_outputs(records, summary, out, summary_path)
    echo("")
    echo(format_summary(records, summary))
    if interrupted:
        return 130
    clean = not (summary["survivor_crashes"] or summary["invariant_violations"]
                 or summary["harness_errors"])
    return 0 if clean else 1


def progress_line(rec: RunRecord, elapsed: float) -> str:
    parts = []
    for f in rec.faults:
        if f.missed:
            parts.append(f"{f.fault}: not fired ({f.missed})")
            continue
        how = f"failover in {f.recovery_s:.2f} s" if f.recovery_s is not None else \
            "failover" if f.failover else \
            f"next commit in {f.resume_s:.2f} s" if f.resume_s is not None else "no commit after"
        parts.append(f"{f.fault} [{f.victim_role} {f.victim}] -> {how}"
                     + (", restarted too late to rejoin" if f.late_restart else
                        ", restarted" if f.restarted else ""))
    verdict = "ok" if rec.ok else (f"FAILED ({len(rec.violations)} invariant violation(s), "
                                   f"{len(rec.crashes)} survivor crash(es)"
                                   + (f", soak error: {rec.harness_error}" if rec.harness_error
                                      else "") + ")")
    return (f"run {rec.run:3d} {int(elapsed) // 60:3d}:{int(elapsed) % 60:02d}  "
            f"{'; '.join(parts)}  {verdict} ({rec.commits} commits, {rec.seconds:.0f} s)")


def summarise(records: list[RunRecord], opts: SoakOptions, elapsed: float,
              skipped: dict[str, dict[str, Any]]) -> dict[str, Any]:
    fired = [f for r in records for f in r.faults if f.at is not None]
    recoveries = [f.recovery_s for f in fired if f.recovery_s is not None]
    per_kind: dict[str, dict[str, Any]] = {}
    for kind in sorted({f.kind for f in fired}):
        mine = [f for f in fired if f.kind == kind]
        rec = [f.recovery_s for f in mine if f.recovery_s is not None]
        resume = [f.resume_s for f in mine if f.resume_s is not None]
        per_kind[kind] = {"faults": len(mine), "failovers": sum(f.failover for f in mine),
                          "recovery_p50_s": percentile(rec, 50),
                          "recovery_max_s": max(rec, default=None),
                          "next_commit_p50_s": percentile(resume, 50)}
    crashes = [asdict(c) for r in records for c in r.crashes]
    return {
        "runs": len(records),
        "faults": len(fired),
        "faults_missed": sum(1 for r in records for f in r.faults if f.missed),
        "failovers": sum(r.failovers for r in records),
        "unexpected_failovers": sum(r.unexpected_failovers for r in records),
        "restarts": sum(f.restarted for f in fired),
        "late_restarts": sum(f.late_restart for f in fired),
        "survivor_crashes": len(crashes),
        "invariant_violations": sum(len(r.violations) for r in records),
        "runs_with_violations": sum(1 for r in records if r.violations),
        "harness_errors": [{"run": r.run, "error": r.harness_error} for r in records
                           if r.harness_error],
        "recovery_p50_s": percentile(recoveries, 50),
        "recovery_p95_s": percentile(recoveries, 95),
        "recovery_max_s": max(recoveries, default=None),
        "recovery_mean_s": round(statistics.fmean(recoveries), 3) if recoveries else None,
        "per_fault": per_kind,
        "per_phase": {p: sum(1 for f in fired if f.phase == p) for p in (*PHASES, "next")},
        "skipped": skipped,
        "survivor_crash_logs": crashes,
        "faulted_node_errors": [asdict(c) for r in records for c in r.faulted_node_errors],
        "schedule": [r.plan for r in records],
        "violations": [{"run": r.run, "plan": r.plan, "violations": r.violations,
                        "logs": r.logs} for r in records if r.violations],
        "seed": opts.seed, "nodes": opts.nodes, "lease_ttl_s": opts.lease_ttl,
        "duration_s": round(elapsed, 1), "requested_duration_s": opts.duration_s,
        "rounds_per_run": ROUNDS, "train_size": TRAIN_SIZE, "test_size": TEST_SIZE,
    }


def write_outputs(records: list[RunRecord], summary: dict[str, Any], out: Path,
                  summary_path: Path) -> None:
    summary_path.write_text(json.dumps(summary, indent=2))
    with open(out / "soak.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["run", "kind", "plan", "victims", "nodes", "rounds", "commits",
                    "failovers", "recovery_s", "next_commit_s", "ok", "survivor_crashes",
                    "violations", "seconds"])
        for r in records:
            w.writerow([r.run, r.kind, r.plan,
                        ";".join(f"{f.victim}({f.victim_role})" for f in r.faults if f.victim),
                        r.nodes, r.rounds, r.commits, r.failovers,
                        ";".join(str(f.recovery_s) for f in r.faults if f.recovery_s is not None),
                        ";".join(str(f.resume_s) for f in r.faults if f.resume_s is not None),
                        r.ok, len(r.crashes), " | ".join(r.violations), r.seconds])
    plot_recovery(records, out / "soak.png")


def plot_recovery(records: list[RunRecord], path: Path) -> None:
    """Recovery per fault kind (failovers) beside the time to the next commit (every fault)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fired = [f for r in records for f in r.faults if f.at is not None]
    kinds = sorted({f.kind for f in fired})
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    panels = [("failover: fault -> new term's first round", lambda f: f.recovery_s),
              ("fault -> next commit", lambda f: f.resume_s)]
    for ax, (title, value) in zip(axes, panels, strict=True):
        data = [[v for f in fired if f.kind == k and (v := value(f)) is not None] for k in kinds]
        shown = [(k, d) for k, d in zip(kinds, data, strict=True) if d]
        if shown:
            ax.boxplot([d for _, d in shown], showfliers=False)
            for x, (_, d) in enumerate(shown, 1):
                ax.scatter([x] * len(d), d, s=12, alpha=0.6)
            ax.set_xticks(range(1, len(shown) + 1),
                          [f"{k}\n(n={len(d)})" for k, d in shown], fontsize=7)
        ax.set_ylim(bottom=0)
        ax.set_title(title, fontsize=9)
        ax.set_ylabel("seconds")
    fig.suptitle(f"soak: {len(records)} runs, {len(fired)} faults")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def format_summary(records: list[RunRecord], s: dict[str, Any]) -> str:
    def sec(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}"

    rows = [("fault", "injected", "failovers", "recovery p50 s", "recovery max s",
             "next commit p50 s")]
    for kind, k in s["per_fault"].items():
        rows.append((kind, str(k["faults"]), str(k["failovers"]), sec(k["recovery_p50_s"]),
                     sec(k["recovery_max_s"]), sec(k["next_commit_p50_s"])))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines += ["",
              f"runs {s['runs']}, faults {s['faults']} ({s['faults_missed']} not fired), "
              f"failovers {s['failovers']} ({s['unexpected_failovers']} unexpected), "
              f"recovery p50 {sec(s['recovery_p50_s'])} s, p95 {sec(s['recovery_p95_s'])} s, "
              f"{s['duration_s']:.0f} s",
              f"survivor crashes {s['survivor_crashes']}, invariant violations "
              f"{s['invariant_violations']} (in {s['runs_with_violations']} runs)"]
    for name, sk in s["skipped"].items():
        lines.append(f"skipped {sk['count']} {name} run(s): {sk['reason']}")
    for r in records:
        for v in r.violations:
            lines.append(f"  run {r.run} ({r.plan}): {v}")
        for c in r.crashes:
            lines.append(f"  run {r.run}: survivor {c.node} {c.reason} (log {c.log})")
        if r.harness_error:
            lines.append(f"  run {r.run}: the soak itself failed: {r.harness_error}")
    return "\n".join(lines)
