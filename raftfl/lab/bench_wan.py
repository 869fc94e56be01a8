"""WAN benchmarks in the lab of `wan.py`: no false takeovers, and the ranking on real latency.

`raftfl bench wan` keeps a healthy aggregator busy for M minutes under emulated WAN links
and counts takeovers (elections after the first; the target is 0), then SIGSTOPs the
aggregator and measures how long the others take to replace it (about one lease TTL: a
frozen host still accepts connections, so only its lease can depose it).

`raftfl bench ranking` gives the nodes unequal delays on their real connections, lets
every node measure them, SIGKILLs the aggregator, and checks that the election follows the
ranking every node computed and that the ranking saw the emulated latencies: the nearest
survivor wins.

Nodes are real `raftfl node start` processes (through `LocalCluster`) in the lab's
namespaces; the observer reads the log over the lab's undelayed control LAN. Figures are
printed and written as CSV, PNG and JSON under `--out`.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from raftfl.core.errors import RaftflError
from raftfl.core.events import AggregatorElected, RoundCommitted, RoundStarted, StepDown
from raftfl.core.invariants import check
from raftfl.lab.faults import Skip, first_term
from raftfl.lab.localcluster import LocalCluster
from raftfl.lab.testhooks import HOLD_ENV
from raftfl.lab.wan import WanLab, WanSpec

Echo = Callable[[str], None]
TRAIN_SIZE = 600  # small: rounds are WAN-bound, not compute-bound
TEST_SIZE = 200
ENDLESS_ROUNDS = 100_000  # the healthy run is stopped at its deadline, not by its config
START_WAIT_S = 180.0
# Per-node RTT to a common core (ms). The nearest node is never the first by name, and it
# leads the runner-up by >= 40 ms, well beyond the noise of the nodes' own probes.
RANKING_DELAYS = {
    3: [110.0, 150.0, 10.0],  # mean RTT to both peers: node 2 140 ms, node 0 190, node 1 210
    5: [60.0, 130.0, 0.0, 125.0, 130.0],  # node 2 111 ms, then node 0 156; without node 2,
}                                          # node 0 leads node 3 by 43 ms or more
SAMPLE_WINDOW_S = 12.0  # the HA loop ranks by the last 10 samples (1 s apart)


# -- observing ----------------------------------------------------------------------------------
@dataclass
class RttLog:
    """Every latency sample the nodes published, as (ts, node, peer, rtt_ms or None)."""

    seen: set[str] = field(default_factory=set)  # keys already read
    rows: list[tuple[float, str, str, float | None]] = field(default_factory=list)

    def poll(self, c: LocalCluster) -> None:
        try:
            kvs, _ = c.store().range(c.keys.latency)
        except RaftflError:
            return  # the observer retries next poll; a gap is not a finding
        for kv in kvs:
            if kv.key in self.seen:
                continue
            self.seen.add(kv.key)
            node = kv.key[len(c.keys.latency):].rpartition("/")[0]
            try:
                obj = json.loads(kv.value)
                rtts = obj["rtt_ms"]
                ts = float(obj["ts"])
            except (ValueError, KeyError, TypeError):
                continue
            for peer, rtt in sorted(rtts.items()):
                self.rows.append((ts, node, peer, None if rtt is None else float(rtt)))

    def mean_since(self, since: float) -> tuple[float | None, int, int]:
        """Mean RTT over samples newer than `since`, their count, and unanswered probes."""
        recent = [r for r in self.rows if r[0] >= since]
        values = [r[3] for r in recent if r[3] is not None]
        mean = sum(values) / len(values) if values else None
        return mean, len(values), len(recent) - len(values)


_LEADER_CHANGES = re.compile(r"^etcd_server_leader_changes_seen_total ([0-9.e+]+)$", re.M)


def etcd_leader_changes(c: LocalCluster) -> dict[str, int]:
    """Leader changes each live member has seen (its first leader counts as one)."""
    out = {}
    for node in c.voters:
        try:
            with urllib.request.urlopen(f"http://{node.client_endpoint}/metrics", timeout=3) as r:
                m = _LEADER_CHANGES.search(r.read().decode())
        except OSError:
            continue
        if m:
            out[node.name] = int(float(m.group(1)))
    return out


def _events(c: LocalCluster, kind: type) -> list[Any]:
    return [i.event for i in list(c.log) if isinstance(i.event, kind)]


# -- the healthy run, then a freeze -------------------------------------------------------------
@dataclass
class WanResult:
    nodes: int
    seconds: float
    lease_ttl: int
    etcd_heartbeat_ms: int
    etcd_election_ms: int
    rounds_committed: int = 0
    completed: bool = False
    invariants_ok: bool | None = None  # checked when the run completed
    violations: list[str] = field(default_factory=list)
    takeovers: int = 0
    step_downs: list[str] = field(default_factory=list)
    etcd_leader_changes: dict[str, int] = field(default_factory=dict)
    rtt_mean_ms: float | None = None
    rtt_samples: int = 0
    probes_unanswered: int = 0
    nft_drops: dict[str, int] = field(default_factory=dict)
    relay_packets: int = 0
    relay_late_mean_ms: float | None = None  # the relay's own error (late releases, busy CPU)
    relay_late_max_ms: float | None = None
    frozen: str | None = None
    frozen_at: float | None = None
    stop_to_vacant_s: float | None = None
    stop_to_elected_s: float | None = None
    stop_to_resumed_s: float | None = None
    elections: list[dict[str, Any]] = field(default_factory=list)


def wan_run(spec: WanSpec, seconds: float, rounds: int = ENDLESS_ROUNDS, lease_ttl: int = 3,
            freeze: bool = True, echo: Echo = print, progress_s: float = 30.0,
            cluster: str = "wan", etcd_timeouts: tuple[int, int] | None = None,
            logs_to: Path | None = None) -> tuple[WanResult, RttLog]:
    """Run `rounds` rounds under `spec` until they complete or `seconds` have passed since the
    first election; count takeovers; then (with `freeze`) SIGSTOP the aggregator and time its
    replacement. `logs_to` receives a copy of every node's log."""
    rtts = RttLog()
    with WanLab(spec, etcd_timeouts=etcd_timeouts) as lab:
        result = WanResult(spec.n, seconds, lease_ttl, *lab.etcd_timing)
        with LocalCluster(n=spec.n, rounds=rounds, cluster=cluster, lease_ttl=lease_ttl,
                          train_size=TRAIN_SIZE, test_size=TEST_SIZE, ips=lab.ips,
                          wrappers=lab.wrappers, node_env=lab.node_env()) as c:
            try:
                _healthy(c, result, rtts, seconds, rounds, echo, progress_s)
                if freeze:
                    _freeze(c, result, lease_ttl, echo)
            except RaftflError:
                echo(c.tail_logs(25))
                raise
            finally:
                if logs_to is not None:
                    logs_to.mkdir(parents=True, exist_ok=True)
                    for node in c.nodes:
                        shutil.copy(node.log_path, logs_to / node.log_path.name)
                result.elections = [{"ts": e.ts, "node": e.node, "term": e.term, "rank": e.rank}
                                    for e in _events(c, AggregatorElected)]
        result.nft_drops = lab.drops()
    stats = lab.relay_stats or {}
    result.relay_packets = sum(x["packets"] for x in stats.get("links", []))
    result.relay_late_mean_ms, result.relay_late_max_ms = (stats.get("late_mean_ms"),
                                                           stats.get("late_max_ms"))
    return result, rtts


def _healthy(c: LocalCluster, r: WanResult, rtts: RttLog, seconds: float, rounds: int,
             echo: Echo, progress_s: float) -> None:
    first = c.wait_event(lambda e: isinstance(e, AggregatorElected), START_WAIT_S,
                         "the first election")
    t0 = time.time()
    echo(f"[00:00] {first.node} elected (term {first.term}); healthy run for {seconds:.0f} s")
    next_note = t0 + progress_s
    while time.time() < t0 + seconds:
        time.sleep(1.0)
        rtts.poll(c)
        if any(i.event.type == "run_completed" for i in list(c.log)):
            r.completed = True
            break
        if time.time() >= next_note:
            next_note += progress_s
            echo(_progress(c, rtts, t0, time.time() - progress_s))
    r.seconds = round(time.time() - t0, 1)
    elections = _events(c, AggregatorElected)
    r.takeovers = len(elections) - 1
    r.step_downs = [f"{e.node} (term {e.term}): {e.reason}" for e in _events(c, StepDown)]
    r.rounds_committed = len({e.round for e in _events(c, RoundCommitted)})
    r.etcd_leader_changes = etcd_leader_changes(c)
    r.rtt_mean_ms, r.rtt_samples, r.probes_unanswered = rtts.mean_since(t0)
    if r.completed:
        c.wait_exit(60)
        verdict = check(c.state(), rounds, c.final_models())
        r.invariants_ok, r.violations = verdict.ok, verdict.violations
    echo(_progress(c, rtts, t0, t0) + (" - run completed" if r.completed else ""))


def _progress(c: LocalCluster, rtts: RttLog, t0: float, since: float) -> str:
    elapsed = time.time() - t0
    committed = [e.round for e in _events(c, RoundCommitted)]
    mean, count, lost = rtts.mean_since(since)
    rtt = f"RTT mean {mean:.0f} ms over {count} samples, {lost} unanswered" if mean else "no RTT yet"
    return (f"[{int(elapsed) // 60:02d}:{int(elapsed) % 60:02d}] round {max(committed, default=0)} "
            f"committed, takeovers {len(_events(c, AggregatorElected)) - 1}, step-downs "
            f"{len(_events(c, StepDown))}; {rtt}")


def _freeze(c: LocalCluster, r: WanResult, lease_ttl: int, echo: Echo) -> None:
    holder = c.holder()
    if holder is None:
        raise RaftflError("no aggregator holds the role at the end of the healthy run")
    name, term = holder
    vacancies = len(c.vacancies)
    stopped = c.freeze(name)
    r.frozen, r.frozen_at = name, stopped
    echo(f"SIGSTOP {name} (the aggregator, term {term})")
    try:
        el = c.wait_event(lambda e: isinstance(e, AggregatorElected) and e.term > term,
                          lease_ttl * 5 + 60, "a new aggregator after the SIGSTOP")
        r.stop_to_elected_s = round(el.ts - stopped, 3)
        if len(c.vacancies) > vacancies:
            r.stop_to_vacant_s = round(c.vacancies[vacancies] - stopped, 3)
        started = c.wait_event(lambda e: isinstance(e, RoundStarted) and e.term == el.term,
                               120, "the first round of the new aggregator")
        r.stop_to_resumed_s = round(started.ts - stopped, 3)
        echo(f"replaced by {el.node} (rank {el.rank}): role free +{r.stop_to_vacant_s} s, elected "
             f"+{r.stop_to_elected_s} s, round {started.round} started +{r.stop_to_resumed_s} s "
             f"(lease TTL {lease_ttl} s)")
    finally:
        c.thaw(name)


def bench_wan(spec: WanSpec, minutes: float, lease_ttl: int, out: Path, echo: Echo = print,
              etcd_timeouts: tuple[int, int] | None = None) -> tuple[int, dict[str, Any]]:
    """`raftfl bench wan`: print, write wan.csv / wan_rtt.csv / wan.png / wan.json."""
    out.mkdir(parents=True, exist_ok=True)
    echo(f"bench wan: {spec.n} nodes, {minutes:g} min healthy, then SIGSTOP of the aggregator")
    for line in spec.describe():
        echo(line)
    try:
        result, rtts = wan_run(spec, minutes * 60, lease_ttl=lease_ttl, echo=echo,
                               etcd_timeouts=etcd_timeouts, logs_to=out / "wan_logs")
    except Skip as exc:
        raise RaftflError(f"cannot run the WAN lab here: {exc}") from exc
    summary = {**asdict(result), "links": [{"a": i, "b": j, **asdict(x)}
                                           for (i, j), x in sorted(spec.links.items())]}
    _write_rtt_csv(out / "wan_rtt.csv", rtts)
    (out / "wan.json").write_text(json.dumps(summary, indent=2))
    _plot_wan(out / "wan.png", rtts, result)
    ok = result.takeovers == 0 and result.stop_to_elected_s is not None
    for line in _wan_table(result):
        echo(line)
    echo(f"{'OK' if ok else 'TARGET MISSED'}: {result.takeovers} takeover(s) in "
         f"{result.seconds / 60:.1f} min (target 0); frozen aggregator replaced after "
         f"{result.stop_to_elected_s} s (lease TTL {lease_ttl} s). Files in {out}/wan.*, "
         f"node logs in {out}/wan_logs/")
    return (0 if ok else 1), summary


def _wan_table(r: WanResult) -> list[str]:
    rows = [("healthy run", f"{r.seconds / 60:.1f} min, {r.rounds_committed} rounds committed"),
            ("takeovers", f"{r.takeovers} (step-downs: {len(r.step_downs)})"),
            ("etcd leader changes seen", ", ".join(f"{v}" for v in r.etcd_leader_changes.values())
             + f" (heartbeat {r.etcd_heartbeat_ms} ms, election {r.etcd_election_ms} ms)"),
            ("RTT measured by the nodes", f"mean {r.rtt_mean_ms or 0:.0f} ms over {r.rtt_samples} "
             f"samples, {r.probes_unanswered} unanswered"),
            ("packets relayed / dropped", f"{r.relay_packets} / {sum(r.nft_drops.values())}"),
            ("relay lateness (its own error)", f"mean {r.relay_late_mean_ms} ms, max "
             f"{r.relay_late_max_ms} ms"),
            ("SIGSTOP -> role free", f"{r.stop_to_vacant_s} s"),
            ("SIGSTOP -> elected", f"{r.stop_to_elected_s} s"),
            ("SIGSTOP -> round resumed", f"{r.stop_to_resumed_s} s")]
    width = max(len(k) for k, _ in rows)
    return [f"  {k.ljust(width)}  {v}" for k, v in rows] + [f"  step-down: {s}" for s in r.step_downs]


def _write_rtt_csv(path: Path, rtts: RttLog) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["ts", "node", "peer", "rtt_ms"])
        w.writerows(rtts.rows)


def _plot_wan(path: Path, rtts: RttLog, r: WanResult) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t0 = r.elections[0]["ts"] if r.elections else min((x[0] for x in rtts.rows), default=0.0)
    fig, ax = plt.subplots(figsize=(8, 4))
    for node in sorted({x[1] for x in rtts.rows}):
        pts = [(x[0] - t0, x[3]) for x in rtts.rows if x[1] == node and x[3] is not None]
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=3, label=node)
    for k, el in enumerate(r.elections):
        ax.axvline(el["ts"] - t0, color="red", linewidth=1,
                   label="election" if k == 0 else None)
    if r.frozen_at is not None:
        ax.axvline(r.frozen_at - t0, color="black", linestyle="--", linewidth=1, label="SIGSTOP")
    ax.set_xlabel("seconds since the first election")
    ax.set_ylabel("RTT measured by the node (ms)")
    ax.set_title(f"WAN run, {r.nodes} nodes: {r.takeovers} takeover(s); SIGSTOP replaced "
                 f"after {r.stop_to_elected_s} s", fontsize=9)
    ax.legend(fontsize=7, markerscale=3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# -- the ranking on real latency ----------------------------------------------------------------
@dataclass
class ElectionCheck:
    """One election of a ranking trial, against what the emulated links predict."""

    nodes: int
    stage: str  # "bootstrap" (-a auto: every node ranks all) or "failover" (after a SIGKILL)
    winner: str
    winner_rank: int
    expected: str | None  # nearest candidate by the links; None when latency cannot decide
    ranking: list[dict[str, Any]]  # as recorded in the aggregator_elected event
    predicted_rtt_ms: dict[str, float]  # each candidate's mean emulated RTT to all its peers
    survivors_rtt_ms: dict[str, float] | None  # ... to the survivors only (failover)
    problems: list[str]
    relay_late_mean_ms: float | None = None
    relay_late_max_ms: float | None = None

    @property
    def ok(self) -> bool:
        return not self.problems


def ranking_trial(n: int, echo: Echo = print, jitter_ms: float = 10.0, load: bool = False,
                  workdir: Path | None = None) -> list[ElectionCheck]:
    """Two elections under unequal per-node delays: the bootstrap one (`-a auto`: every node
    has measured every peer), then the one after a SIGKILL of that aggregator, once a full
    window of samples is in. Each must follow the ranking the nodes recorded, its winner
    must be the nearest candidate by the emulated links (unless latency cannot tell them
    apart), and no node may have seen a mean RTT below what its links allow.

    Without `load` the aggregator holds before round 1 (a test hold), so no training runs
    while the nodes measure: here N nodes share 2 cores, and their CPU contention, an
    artifact of the lab, would add to every RTT a node measures in-process and delay every
    node's reaction. `workdir` keeps the nodes' logs and data."""
    spec = WanSpec.from_node_delays(RANKING_DELAYS[n], jitter_ms)
    with WanLab(spec) as lab, LocalCluster(
            n=n, rounds=200, cluster=f"rank{n}", aggregator="auto", train_size=TRAIN_SIZE,
            test_size=TEST_SIZE, ips=lab.ips, wrappers=lab.wrappers, workdir=workdir,
            node_env=lab.node_env() if load else _idle(lab.node_env())) as c:
        names = [x.name for x in c.nodes]
        try:
            first = first_term(c)
            c.wait_for(lambda: _sampled(c), START_WAIT_S, "latency samples from every node")
            time.sleep(SAMPLE_WINDOW_S)  # a full window of samples under the emulated links
            c.kill(first.node)
            echo(f"{n} nodes: {first.node} elected at bootstrap; SIGKILL after "
                 f"{SAMPLE_WINDOW_S:.0f} s of samples")
            second = c.wait_event(lambda e: isinstance(e, AggregatorElected)
                                  and e.term > first.term, 120, "the election after the kill")
        except RaftflError:
            echo(c.tail_logs(25))
            raise
    dead = names.index(first.node)
    everyone = list(range(n))
    survivors = [i for i in everyone if i != dead]
    checks = [_check(first, spec, names, everyone, [everyone], "bootstrap", jitter_ms),
              _check(second, spec, names, survivors, [everyone, survivors], "failover",
                     jitter_ms)]
    stats = lab.relay_stats or {}
    for check_ in checks:
        check_.relay_late_mean_ms = stats.get("late_mean_ms")
        check_.relay_late_max_ms = stats.get("late_max_ms")
    return checks


TIE_MS = 25.0  # candidates closer than this on the links are a tie: latency cannot decide


def _check(el: AggregatorElected, spec: WanSpec, names: list[str], candidates: list[int],
           peer_sets: list[list[int]], stage: str, jitter_ms: float) -> ElectionCheck:
    """`peer_sets`: the peers a candidate's mean RTT may have been taken over (after a kill,
    the dead node counts or not, depending on whether its record outlived the role key)."""
    means = [{names[i]: spec.mean_rtt(i, peers) for i in candidates} for peers in peer_sets]
    favourites = []
    for mean in means:
        order = sorted(mean, key=lambda k: (mean[k], k))
        clear = len(order) == 1 or mean[order[1]] - mean[order[0]] >= TIE_MS
        favourites.append(order[0] if clear else None)
    expected = favourites[0] if len(set(favourites)) == 1 else None
    problems = []
    top = el.ranking[0]["node"] if el.ranking else None
    if el.node != top or el.rank != 0:
        problems.append(f"{stage}: the election did not follow the ranking: {el.node} won at "
                        f"rank {el.rank}, the ranking's first is {top}")
    if expected is not None and el.node != expected:
        problems.append(f"{stage}: {el.node} won; the nearest by the emulated links is {expected}")
    for entry in el.ranking:
        name, seen = entry["node"], entry.get("rtt_ms")
        if name not in means[0]:
            continue
        i = names.index(name)
        floor = min(spec.link(i, j).rtt_ms for j in peer_sets[0] if j != i) - jitter_ms
        if seen is None or seen < floor:
            problems.append(f"{stage}: {name} ranked on a mean RTT of {seen} ms, below what its "
                            f"links allow ({floor:.0f} ms): the delay was not applied")
    return ElectionCheck(spec.n, stage, el.node, el.rank, expected, list(el.ranking), means[0],
                         means[1] if len(means) > 1 else None, problems)


def _idle(env: dict[int, dict[str, str]]) -> dict[int, dict[str, str]]:
    """Whoever aggregates holds before round 1 (round_start is an aggregator-only phase)."""
    return {i: {**e, HOLD_ENV: f"round_start:1:{int(START_WAIT_S * 2)}"} for i, e in env.items()}


def _sampled(c: LocalCluster) -> bool:
    kvs, _ = c.store().range(c.keys.latency, keys_only=True)
    writers = {kv.key[len(c.keys.latency):].rpartition("/")[0] for kv in kvs}
    return writers >= {x.name for x in c.nodes}


def bench_ranking(nodes_list: list[int], out: Path, echo: Echo = print, load: bool = False) -> \
        tuple[int, list[dict[str, Any]]]:
    """`raftfl bench ranking`: print a table per election; write ranking.csv, .png, .json."""
    unknown = [n for n in nodes_list if n not in RANKING_DELAYS]
    if unknown:
        raise RaftflError(f"bench ranking has delay layouts for {sorted(RANKING_DELAYS)} nodes, "
                          f"not {unknown}")
    out.mkdir(parents=True, exist_ok=True)
    checks: list[ElectionCheck] = []
    for n in nodes_list:
        try:
            trial = ranking_trial(n, echo, load=load)
        except Skip as exc:
            raise RaftflError(f"cannot run the WAN lab here: {exc}") from exc
        checks += trial
        for check_ in trial:
            for line in _ranking_table(check_):
                echo(line)
    rows = [{"nodes": r.nodes, "stage": r.stage, "node": e["node"], "score": e["score"],
             "rtt_ms": e.get("rtt_ms"), "links_rtt_ms": r.predicted_rtt_ms.get(e["node"]),
             "winner": e["node"] == r.winner, "expected": e["node"] == r.expected}
            for r in checks for e in r.ranking]
    with open(out / "ranking.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    summary = [{**asdict(r), "ok": r.ok} for r in checks]
    (out / "ranking.json").write_text(json.dumps(summary, indent=2))
    _plot_ranking(out / "ranking.png", checks)
    ok = all(r.ok for r in checks)
    echo(f"{'OK' if ok else 'FAILED'}: " + "; ".join(
        f"{r.nodes} nodes, {r.stage} -> {r.winner} (expected {r.expected or 'a tie on latency'})"
        for r in checks) + f". Files in {out}/ranking.*")
    return (0 if ok else 1), summary


def _ranking_table(r: ElectionCheck) -> list[str]:
    lines = [f"{r.nodes} nodes, {r.stage}: elected {r.winner} at rank {r.winner_rank}; nearest by "
             f"the links: {r.expected or 'a tie on latency'}; relay lateness mean "
             f"{r.relay_late_mean_ms} ms, max {r.relay_late_max_ms} ms",
             f"  {'node':22} {'score':>9} {'RTT seen':>9} {'RTT links':>15}"]
    for e in r.ranking:
        seen = f"{e['rtt_ms']:.1f}" if e.get("rtt_ms") is not None else "-"
        pred = r.predicted_rtt_ms.get(e["node"])
        links = "-" if pred is None else f"{pred:.1f}"
        if pred is not None and r.survivors_rtt_ms:  # all peers / survivors only
            links += f" / {r.survivors_rtt_ms[e['node']]:.1f}"
        lines.append(f"  {e['node']:22} {e['score']:9.2f} {seen:>9} {links:>15}"
                     + ("  <- elected" if e["node"] == r.winner else ""))
    return lines + [f"  problem: {p}" for p in r.problems]


def _plot_ranking(path: Path, checks: list[ElectionCheck]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(checks), figsize=(3.6 * len(checks), 3.5), squeeze=False)
    for ax, r in zip(axes[0], checks, strict=True):
        entries = [e for e in r.ranking if e["node"] in r.predicted_rtt_ms]
        xs = range(len(entries))
        ax.bar([x - 0.2 for x in xs], [e.get("rtt_ms") or 0 for e in entries], 0.4,
               label="RTT the ranking saw")
        links = r.survivors_rtt_ms or r.predicted_rtt_ms  # after a kill: the peers ranked over
        ax.bar([x + 0.2 for x in xs], [links[e["node"]] for e in entries], 0.4,
               label="RTT of the emulated links")
        ax.set_xticks(list(xs), [e["node"].split(":")[0].rsplit(".", 1)[-1]
                                 + (" *" if e["node"] == r.winner else "") for e in entries])
        ax.set_title(f"{r.nodes} nodes, {r.stage} (* elected)", fontsize=9)
        ax.set_xlabel("node (last octet), best ranked first", fontsize=8)
        ax.set_ylabel("mean RTT (ms)")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
