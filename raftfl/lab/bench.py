"""Benchmarks: recovery time over repeated kills, and replication traffic against model traffic.

Figures are printed and written as CSV and PNG; nothing here asserts a speed.
"""

from __future__ import annotations

import csv
import re
import statistics
import time
import urllib.request
from pathlib import Path
from typing import Any

from raftfl.core.events import RoundCommitted, RoundStarted, RunCompleted
from raftfl.core.invariants import check, failovers
from raftfl.lab.faults import at, first_term
from raftfl.lab.localcluster import LocalCluster
from raftfl.lab.testhooks import HOLD_ENV

MODEL_BYTES = 248_024  # 62,006 float32 parameters


def plot_bars(path: Path, title: str, xs: list[Any], ys: list[float], xlabel: str, ylabel: str,
          hline: float | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar([str(x) for x in xs], ys)
    ax.tick_params(axis="x", labelrotation=30 if len(xs) > 6 else 0, labelsize=7)
    if hline is not None:
        ax.axhline(hline, color="red", linestyle="--", label=f"target {hline:.1f}")
        ax.legend()
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def recovery(runs: int, nodes: int, lease_ttl: int, out: Path, echo: Any = print) -> int:
    """Kill the aggregator mid-fit `runs` times; recovery = kill -> first fit of the resumed round."""
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(runs):
        env = {n: {HOLD_ENV: "fit:2:2"} for n in range(1, nodes)}
        with LocalCluster(n=nodes, rounds=3, cluster=f"bench{i}", lease_ttl=lease_ttl,
                          node_env=env, train_size=2000, test_size=500) as c:
            el = first_term(c)
            at(c, RoundStarted, 2, el.term)
            time.sleep(0.3)
            c.kill(el.node)
            c.wait_event(lambda e: isinstance(e, RunCompleted), 180, "completion")
            fo = failovers(list(c.log), c.kills, c.vacancies)
            rec = fo[0].recovery_s if fo else None
            expiry = (fo[0].lease_expired_at - fo[0].killed_at) if fo and fo[0].lease_expired_at \
                and fo[0].killed_at else None
            rows.append({"run": i + 1, "recovery_s": rec,
                         "lease_expiry_s": round(expiry, 3) if expiry else None,
                         "new": fo[0].new if fo else None})
            echo(f"run {i + 1}/{runs}: recovery {rec} s (lease expiry seen after "
                 f"{rows[-1]['lease_expiry_s']} s)")
    values = [r["recovery_s"] for r in rows if r["recovery_s"] is not None]
    with open(out / "recovery.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    if values:
        p50 = statistics.median(values)
        echo(f"recovery over {len(values)} kills: p50 {p50:.2f} s, min {min(values):.2f} s, "
             f"max {max(values):.2f} s (target p50 <= TTL + 1 = {lease_ttl + 1} s)")
        plot_bars(out / "recovery.png", f"recovery after SIGKILL ({nodes} nodes, TTL {lease_ttl} s)",
              [r["run"] for r in rows], [r["recovery_s"] or 0 for r in rows], "run", "seconds",
              hline=lease_ttl + 1)
    return 0 if len(values) == runs else 1


_METRIC = re.compile(r'^(etcd_network_peer_sent_bytes_total|etcd_network_client_grpc_sent_bytes_total'
                     r'|etcd_network_client_grpc_received_bytes_total)(\{[^}]*\})? ([0-9.e+]+)$')


def _etcd_bytes(endpoint: str) -> dict[str, float]:
    """Peer (Raft) and client gRPC byte counters of one member, from its /metrics."""
    out = {"peer": 0.0, "client": 0.0}
    with urllib.request.urlopen(f"http://{endpoint}/metrics", timeout=5) as resp:
        for line in resp.read().decode().splitlines():
            m = _METRIC.match(line)
            if m:
                out["peer" if "peer" in m.group(1) else "client"] += float(m.group(3))
    return out


def traffic(nodes_list: list[int], rounds: int, out: Path, echo: Any = print) -> int:
    """Bytes etcd moves per round (Raft peers, and clients) against Flower's model bytes."""
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for n in nodes_list:
        with LocalCluster(n=n, rounds=rounds, cluster=f"traffic{n}", train_size=2000,
                          test_size=500) as c:
            el = first_term(c)
            at(c, RoundStarted, 1, el.term)
            before = {x.name: _etcd_bytes(x.client_endpoint) for x in c.nodes}
            t0 = time.time()
            # The last commit, not run_completed: after that the nodes leave with their members.
            c.wait_event(lambda e: isinstance(e, RoundCommitted) and e.round == rounds, 300,
                         "the last commit")
            after = {x.name: _etcd_bytes(x.client_endpoint) for x in c.nodes}
            elapsed = time.time() - t0
            from raftfl.core.replay import replay

            state = replay(list(c.log))
            ok = check(state, rounds, {"x": state.last_model or ""}).ok
            done_rounds = rounds  # measured from round 1's start to completion
            peer = sum(after[k]["peer"] - before[k]["peer"] for k in after) / done_rounds
            client = sum(after[k]["client"] - before[k]["client"] for k in after) / done_rounds
            flower = MODEL_BYTES * 2 * (n - 1)  # parameters down and up, per worker
            # The checkpoint goes aggregator -> leader -> every other member: ~n copies a
            # round. The rest (heartbeats, probes, events) accrues per second, not per round.
            background = max(0.0, (peer - n * MODEL_BYTES) * done_rounds / elapsed)
            rows.append({"nodes": n, "raft_bytes_per_round": int(peer),
                         "etcd_client_bytes_per_round": int(client),
                         "flower_model_bytes_per_round": flower,
                         "raft_to_model_ratio": round(peer / flower, 2),
                         "raft_background_bytes_per_s": int(background),
                         "seconds_per_round": round(elapsed / done_rounds, 2), "ok": ok})
            echo(f"{n} nodes: Raft {peer / 1e6:.2f} MB/round, etcd clients {client / 1e6:.2f} "
                 f"MB/round, Flower model traffic {flower / 1e6:.2f} MB/round "
                 f"(Raft = {peer / flower:.2f}x model traffic; {elapsed / done_rounds:.1f} s/round,"
                 f" of which ~{background / 1e3:.0f} kB/s is per-second background)")
    with open(out / "traffic.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    plot_bars(out / "traffic.png", "Raft replication bytes per round", [r["nodes"] for r in rows],
          [r["raft_bytes_per_round"] / 1e6 for r in rows], "nodes", "MB per round")
    return 0 if all(r["ok"] for r in rows) else 1

