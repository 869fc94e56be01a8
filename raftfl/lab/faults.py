"""The fault matrix: inject real faults into real node processes, then check the invariants.

Each scenario starts a local cluster, waits for a phase of a round (test holds from
`testhooks` pin the phase where timing alone would be a race), injects its fault, lets the
run finish, and checks the invariants of `invariants.check` on the replayed log and on every
live node, plus what the scenario itself promises (a step-down, a fallback, no failover...).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from raftfl.core.errors import RaftflError
from raftfl.core.events import (
    AggregatorElected,
    CheckpointFallback,
    FitResults,
    RoundCommitted,
    RoundStarted,
    StepDown,
)
from raftfl.core.invariants import check, failovers
from raftfl.core.replay import replay
from raftfl.lab.localcluster import LocalCluster
from raftfl.lab.testhooks import EXTRA_RTT_ENV, HOLD_ENV

WAIT_S = 120.0
INTERRUPT_HOLD_S = 15.0  # the interrupted aggregator's own fit: the election must not wait for it


class Skip(Exception):
    """The scenario cannot run here (for example: no network namespaces)."""


@dataclass
class Scenario:
    name: str
    fault: str
    inject: Callable[[LocalCluster, dict[str, Any]], None]
    nodes: int = 3
    rounds: int = 4
    quick: bool = False
    agg_hold: str = ""  # RAFTFL_TEST_HOLD for node 0 (the first aggregator)
    worker_hold: str = ""  # RAFTFL_TEST_HOLD for the other nodes
    failovers: int | None = 1  # expected number of failovers (None: any)
    extra_rtt: dict[int, float] = field(default_factory=dict)  # TEST ONLY latency per node
    setup: Callable[[], dict[str, Any]] | None = None  # e.g. network namespaces
    teardown: Callable[[dict[str, Any]], None] | None = None


@dataclass
class Outcome:
    name: str
    fault: str
    ok: bool
    outcome: str
    recovery_s: list[float] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    seconds: float = 0.0
    skipped: bool = False


# -- helpers used by the injections ----------------------------------------------------------
def first_term(c: LocalCluster) -> AggregatorElected:
    """The election of the term that starts training (round 1): on a loaded machine a node
    can lose its lease while the federation starts, and a second bootstrap election is not
    the failover a test injects."""
    started = c.wait_event(lambda e: isinstance(e, RoundStarted) and e.round == 1, WAIT_S,
                           "round 1")
    return c.wait_event(lambda e: isinstance(e, AggregatorElected) and e.term == started.term,
                        WAIT_S, f"the election of term {started.term}")


def at(c: LocalCluster, kind: type, rnd: int, term: int | None = None) -> Any:
    return c.wait_event(lambda e: isinstance(e, kind) and e.round == rnd
                        and (term is None or e.term == term), WAIT_S,
                        f"{kind.__name__} of round {rnd}")


def new_term_commit(c: LocalCluster, old_term: int) -> Any:
    return c.wait_event(lambda e: isinstance(e, RoundCommitted) and e.term > old_term, WAIT_S,
                        "a commit by the new aggregator")


# -- injections ------------------------------------------------------------------------------
def kill_agg_at(kind: type, rnd: int, delay: float = 0.0) -> Callable[..., None]:
    def inject(c: LocalCluster, ctx: dict[str, Any]) -> None:
        el = first_term(c)
        at(c, kind, rnd, el.term)
        time.sleep(delay)
        c.kill(el.node)
    return inject


def interrupt_agg(c: LocalCluster, ctx: dict[str, Any]) -> None:
    """Ctrl-C of the aggregator while its own worker is deep in a fit (held): it gives the
    role up at once, not after its local training ends."""
    el = first_term(c)
    at(c, RoundStarted, 2, el.term)
    time.sleep(0.5)
    ctx["interrupted_at"] = c.interrupt(el.node)


def freeze_agg(c: LocalCluster, ctx: dict[str, Any]) -> None:
    el = first_term(c)
    at(c, RoundStarted, 2, el.term)
    c.freeze(el.node)
    new_term_commit(c, el.term)
    ctx["frozen"], ctx["old_term"] = el.node, el.term
    c.thaw(el.node)


def kill_etcd_leader(c: LocalCluster, ctx: dict[str, Any]) -> None:
    el = first_term(c)
    at(c, RoundStarted, 2, el.term)
    leader = c.etcd_leader()
    if leader is None or leader == el.node:
        raise RaftflError(f"etcd leader is {leader}, expected a worker (MoveLeader)")
    c.kill(leader)
    ctx["killed_worker"] = leader


def kill_worker(c: LocalCluster, ctx: dict[str, Any]) -> None:
    el = first_term(c)
    at(c, RoundStarted, 2, el.term)
    victim = next(n.name for n in c.nodes if n.name != el.node)
    time.sleep(0.5)
    c.kill(victim)
    ctx["killed_worker"] = victim


def restart_worker(c: LocalCluster, ctx: dict[str, Any]) -> None:
    """A worker dies and comes back with the same command: its etcd data dir is reused."""
    el = first_term(c)
    at(c, RoundStarted, 2, el.term)
    node = next(n for n in c.nodes if n.name != el.node)
    c.kill(node.name)
    at(c, RoundCommitted, 2)
    c.start_node(node)  # same args, same data dir
    del c.kills[node.name]  # it is live again: it must end with the final model too
    ctx["restarted"] = node


def kill_agg_and_favourite(c: LocalCluster, ctx: dict[str, Any]) -> None:
    """The aggregator and the best-ranked survivor die together: the next rank takes over
    after one rank step, with no second election round."""
    el = first_term(c)
    at(c, RoundStarted, 2, el.term)
    c.kill(el.node)
    time.sleep(0.5)  # its lease expires first: the favourite is still ranked, but dead
    c.kill(c.nodes[1].name)  # the nearest node (see extra_rtt)
    ctx["expect_winner"] = c.nodes[2].name


def two_failures(c: LocalCluster, ctx: dict[str, Any]) -> None:
    el = first_term(c)
    at(c, RoundStarted, 2, el.term)
    c.kill(el.node)
    el2 = c.wait_event(lambda e: isinstance(e, AggregatorElected) and e.term > el.term, WAIT_S,
                       "the second aggregator")
    at(c, RoundStarted, 4, el2.term)
    c.kill(el2.node)


def quorum_loss(c: LocalCluster, ctx: dict[str, Any]) -> None:
    el = first_term(c)
    at(c, RoundStarted, 2, el.term)
    voters = [n for n in c.nodes if n.name != el.node][:2]
    pids = [n.etcd_pid() for n in voters]
    if None in pids:
        raise RaftflError("could not find the workers' etcd members")
    before = _commits(c)
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)  # 2 of 3 voters gone: no quorum
    try:
        time.sleep(8)
        ctx["paused_commits"] = _commits(c) - before
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)


def corrupt_checkpoint(c: LocalCluster, ctx: dict[str, Any]) -> None:
    el = first_term(c)
    committed = at(c, RoundCommitted, 2, el.term)
    for node in c.nodes:  # every holder's file (models live on the nodes: node/models.py)
        path = node.data_dir / "models" / committed.model_sha256
        if path.exists():
            path.write_bytes(b"\x00garbage")
    at(c, RoundStarted, 3, el.term)
    c.kill(el.node)
    ctx["corrupted"] = committed.model_sha256


def partition_agg(c: LocalCluster, ctx: dict[str, Any]) -> None:
    el = first_term(c)
    at(c, RoundStarted, 2, el.term)
    link = ctx["links"][c.nodes.index(c.by_name(el.node))]
    _ip("link", "set", link, "down")
    c.kills[el.node] = time.time()  # the recovery clock starts at the cut
    ctx["cut"], ctx["old_term"] = el.node, el.term
    new_term_commit(c, el.term)
    _ip("link", "set", link, "up")


def partition_agg_at_the_end(c: LocalCluster, ctx: dict[str, Any]) -> None:
    """Cut the aggregator while it checkpoints the last round; heal the link as the new term
    completes the run. The survivors must stay until the healed node has the final model."""
    el = first_term(c)
    at(c, FitResults, c.rounds, el.term)
    link = ctx["links"][c.nodes.index(c.by_name(el.node))]
    _ip("link", "set", link, "down")
    c.kills[el.node] = time.time()
    ctx["cut"], ctx["old_term"] = el.node, el.term
    new_term_commit(c, el.term)
    _ip("link", "set", link, "up")


def _commits(c: LocalCluster) -> int:
    return sum(1 for i in list(c.log) if isinstance(i.event, RoundCommitted))


# -- network namespaces ----------------------------------------------------------------------
NETNS_PREFIX = "rfl"
NET = "10.213.7"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


def netns_setup(n: int = 3, net: str = NET) -> dict[str, Any]:
    """A bridge in the root namespace and one namespace per node, linked by veth pairs.

    `net` is the /24 prefix (the WAN lab uses its own, so both can run side by side)."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        raise Skip("network namespaces need root and iproute2")
    tag = f"{os.getpid() % 10000}"
    ctx: dict[str, Any] = {"ns": [], "links": [], "bridge": f"{NETNS_PREFIX}br{tag}"}
    try:
        _ip("link", "add", ctx["bridge"], "type", "bridge")
        _ip("addr", "add", f"{net}.254/24", "dev", ctx["bridge"])
        _ip("link", "set", ctx["bridge"], "up")
        for i in range(n):
            ns, host, peer = (f"{NETNS_PREFIX}{tag}{kind}{i}" for kind in "nhp")
            _ip("netns", "add", ns)
            ctx["ns"].append(ns)
            _ip("link", "add", host, "type", "veth", "peer", "name", peer)
            ctx["links"].append(host)
            _ip("link", "set", peer, "netns", ns)
            _ip("link", "set", host, "master", ctx["bridge"])
            _ip("link", "set", host, "up")
            _ip("-n", ns, "addr", "add", f"{net}.{i + 1}/24", "dev", peer)
            _ip("-n", ns, "link", "set", peer, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
    except (subprocess.CalledProcessError, OSError) as exc:
        netns_teardown(ctx)
        raise Skip(f"cannot create network namespaces here: {exc}") from exc
    ctx["ips"] = [f"{net}.{i + 1}" for i in range(n)]
    ctx["wrappers"] = [["ip", "netns", "exec", ns] for ns in ctx["ns"]]
    return ctx


def netns_teardown(ctx: dict[str, Any]) -> None:
    for link in ctx.get("links", []):
        subprocess.run(["ip", "link", "del", link], capture_output=True, timeout=10)
    for ns in ctx.get("ns", []):
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)
    if ctx.get("bridge"):
        subprocess.run(["ip", "link", "del", ctx["bridge"]], capture_output=True, timeout=10)


# -- the matrix ------------------------------------------------------------------------------
SCENARIOS = [
    Scenario("kill-before-fit", "SIGKILL aggregator before fit", kill_agg_at(RoundStarted, 2),
             agg_hold="fit_start:2:30"),
    Scenario("kill-during-fit", "SIGKILL aggregator during fit", kill_agg_at(RoundStarted, 2, 0.5),
             worker_hold="fit:2:3"),  # CI: tests/e2e/test_failover.py does the same
    Scenario("kill-during-checkpoint", "SIGKILL aggregator during aggregation/checkpoint",
             kill_agg_at(FitResults, 2), agg_hold="checkpoint:2:30", quick=True),
    Scenario("kill-between-rounds", "SIGKILL aggregator between rounds",
             kill_agg_at(RoundCommitted, 2, 0.3), agg_hold="round_start:3:30"),
    Scenario("ctrl-c-aggregator", "Ctrl-C (SIGINT) of the aggregator while it trains",
             interrupt_agg, agg_hold=f"fit:2:{INTERRUPT_HOLD_S:.0f}", quick=True),
    Scenario("freeze-aggregator", "SIGSTOP aggregator past its lease, then SIGCONT", freeze_agg,
             worker_hold="fit:2:2"),  # CI: tests/e2e/test_failover.py does the same
    Scenario("kill-etcd-leader", "SIGKILL the etcd leader's node (a worker)", kill_etcd_leader,
             worker_hold="fit:2:3", failovers=0),
    Scenario("kill-worker", "SIGKILL a worker during fit", kill_worker, worker_hold="fit:2:3",
             failovers=0, quick=True),
    Scenario("restart-worker", "SIGKILL a worker, restart it on its data dir", restart_worker,
             worker_hold="fit:2:2,fit:3:3", failovers=0),
    Scenario("kill-favourite-too", "SIGKILL aggregator, then the top-ranked worker 0.5 s later",
             kill_agg_and_favourite, nodes=5, worker_hold="fit:2:2",
             extra_rtt={2: 20.0, 3: 40.0, 4: 60.0}),
    Scenario("two-failures", "two successive aggregator SIGKILLs, 5 nodes", two_failures,
             nodes=5, rounds=5, worker_hold="fit:2:2,fit:4:2", failovers=2),
    Scenario("quorum-loss", "SIGSTOP 2 of 3 etcd voters for 8 s, then SIGCONT", quorum_loss,
             worker_hold="fit:2:2", failovers=None),
    Scenario("corrupt-checkpoint", "corrupt the newest checkpoint, then SIGKILL aggregator",
             corrupt_checkpoint, agg_hold="fit_start:3:30"),
    Scenario("partition-aggregator", "cut the aggregator's link (network namespaces)",
             partition_agg, worker_hold="fit:2:3", setup=netns_setup, teardown=netns_teardown),
    Scenario("partition-at-the-end", "cut the aggregator in the last round's checkpoint, heal "
             "as the run completes", partition_agg_at_the_end, rounds=2,
             agg_hold="checkpoint:2:4", setup=netns_setup, teardown=netns_teardown),
]


def scenario_checks(s: Scenario, c: LocalCluster, ctx: dict[str, Any], log: list[Any],
                    fos: list[Any]) -> list[str]:
    """What each scenario promises beyond the common invariants."""
    problems = []
    events = [i.event for i in log]
    if s.failovers is not None and len(fos) != s.failovers:
        problems.append(f"expected {s.failovers} failover(s), saw {len(fos)}")
    if "old_term" in ctx:  # frozen or partitioned aggregator
        late = [e for e in events if isinstance(e, RoundCommitted) and e.term == ctx["old_term"]
                and any(isinstance(x, AggregatorElected) and x.term > ctx["old_term"]
                        and x.ts < e.ts for x in events)]
        if late:
            problems.append(f"deposed aggregator committed rounds {[e.round for e in late]}")
    if "frozen" in ctx and not any(isinstance(e, StepDown) and e.node == ctx["frozen"]
                                   for e in events):
        problems.append("the thawed aggregator did not record a step-down")
    if "corrupted" in ctx and not any(isinstance(e, CheckpointFallback)
                                      and e.bad_sha256 == ctx["corrupted"] for e in events):
        problems.append("no checkpoint_fallback recorded for the corrupted checkpoint")
    if "killed_worker" in ctx:
        r2 = [e for e in events if isinstance(e, RoundCommitted) and e.round == 2]
        if r2 and r2[0].results < 1:
            problems.append("round 2 committed without results")
    if "expect_winner" in ctx:
        elected = [e for e in events if isinstance(e, AggregatorElected)][1:]
        if [e.node for e in elected[:1]] != [ctx["expect_winner"]] or elected[0].rank != 1:
            problems.append(f"expected {ctx['expect_winner']} to take over at rank 1, got "
                            f"{[(e.node, e.rank) for e in elected]}")
    if "restarted" in ctx and "reusing data dir" not in ctx["restarted"].log_path.read_text():
        problems.append("the restarted node did not reuse its data dir")
    if "interrupted_at" in ctx:
        took = [e.ts - ctx["interrupted_at"] for e in events
                if isinstance(e, AggregatorElected) and e.ts > ctx["interrupted_at"]][:1]
        if not took or took[0] > INTERRUPT_HOLD_S / 3:
            problems.append(f"the successor was elected {took} s after the Ctrl-C: the "
                            f"interrupted aggregator held the role while it trained")
    if ctx.get("paused_commits"):
        problems.append(f"{ctx['paused_commits']} commits while the quorum was lost")
    return problems


def run_scenario(s: Scenario, echo: Callable[[str], None] = print) -> Outcome:
    started = time.monotonic()
    ctx: dict[str, Any] = {}
    try:
        if s.setup:
            ctx.update(s.setup())
    except Skip as exc:
        return Outcome(s.name, s.fault, True, f"skipped: {exc}", skipped=True)
    env: dict[int, dict[str, str]] = {i: {} for i in range(s.nodes)}
    if s.agg_hold:
        env[0][HOLD_ENV] = s.agg_hold
    for i in range(1, s.nodes):
        if s.worker_hold:
            env[i][HOLD_ENV] = s.worker_hold
        if i in s.extra_rtt:
            env[i][EXTRA_RTT_ENV] = str(s.extra_rtt[i])
    cluster = LocalCluster(n=s.nodes, rounds=s.rounds, cluster=f"faults-{s.name}",
                           node_env=env, train_size=3000, test_size=500,
                           ips=ctx.get("ips"), wrappers=ctx.get("wrappers"))
    try:
        cluster.start()
        s.inject(cluster, ctx)
        cluster.wait_event(lambda e: e.type == "run_completed", WAIT_S * 2, "the run to complete")
        cluster.wait_exit(60)
        log = list(cluster.log)
        state = replay(log)
        live = {n.name for n in cluster.nodes if n.name not in cluster.kills or n.name in
                (ctx.get("frozen"), ctx.get("cut"))}
        finals = {k: v for k, v in cluster.final_models().items() if k in live}
        verdict = check(state, s.rounds, finals)
        if set(finals) != live:
            verdict.violations.append(f"no final model from {sorted(live - set(finals))}")
        fos = failovers(log, cluster.kills)
        verdict.violations += scenario_checks(s, cluster, ctx, log, fos)
        rec = [f.recovery_s for f in fos if f.recovery_s is not None]
        outcome = f"{state.commits} commits, {len(fos)} failover(s)"
        result = Outcome(s.name, s.fault, verdict.ok, outcome, rec, verdict.violations)
    except Exception as exc:  # noqa: BLE001 - a failed scenario is a row in the table
        result = Outcome(s.name, s.fault, False, f"error: {exc}", violations=[str(exc)])
        echo(cluster.tail_logs(20))
    finally:
        cluster.close()
        if s.teardown:
            s.teardown(ctx)
    result.seconds = round(time.monotonic() - started, 1)
    return result


def format_table(outcomes: list[Outcome]) -> str:
    rows = [("scenario", "fault", "outcome", "invariants", "recovery s", "wall s")]
    for o in outcomes:
        inv = "skipped" if o.skipped else ("held" if o.ok else "VIOLATED")
        rec = ", ".join(f"{r:.2f}" for r in o.recovery_s) or "-"
        rows.append((o.name, o.fault, o.outcome, inv, rec, f"{o.seconds:.0f}"))
    widths = [min(max(len(r[i]) for r in rows), 60) for i in range(len(rows[0]))]
    lines = ["  ".join(cell[:60].ljust(w) for cell, w in zip(r, widths, strict=True))
             for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    for o in outcomes:
        for v in o.violations:
            lines.append(f"  {o.name}: {v}")
    return "\n".join(lines)


def select(quick: bool, names: list[str] | None = None) -> list[Scenario]:
    chosen = [s for s in SCENARIOS if (not quick or s.quick)]
    if names:
        unknown = set(names) - {s.name for s in SCENARIOS}
        if unknown:
            raise RaftflError(f"unknown scenario(s): {', '.join(sorted(unknown))}")
        chosen = [s for s in SCENARIOS if s.name in names]
    return chosen
