"""`raftfl bench traffic`: bytes per training round on each channel, in model copies.

Why: the proof of concept replicated 10-45 copies of the model per round through Raft. raftfl
keeps models out of Raft (node/models.py): Raft carries the events, leases and samples
(target: at most 0.1 model copies plus 16 KiB per round), the model services carry the
replicas (target: at most `--model-replicas` - 1 copies beyond Flower's own), and Flower
carries the training traffic itself.

Two independent sources:
* etcd's own `/metrics` on every member: `etcd_network_peer_sent_bytes_total` (Raft) and
  the client gRPC bytes sent and received (every etcd client: nodes, probes, watches), and
  `etcd_server_proposals_committed_total` (entries in the log: each costs its bytes to every
  follower plus the appends and acknowledgements around it, so the entries per round say
  whether a figure moved with the writes or with the background);
* the kernel (root only): every node runs in its own network namespace (`netns_setup`,
  veth links to a bridge), where nftables counters split the bytes each node sends by port
  (peer ports: Raft; client ports: etcd clients; Flower ports: Flower; model-service ports:
  checkpoint replicas and fetches), and the veth
  counters give what crossed each node's link. Kernel bytes include TCP/IP headers and
  ACKs, so they run a few percent above etcd's payload counters; Flower's bytes come from
  here only (Flower has no counters of its own).

The window is round 1's start to round R's commit, so start-up is excluded; etcd's
metrics are scraped outside the kernel window so the scrapes are not counted.

`--idle S` measures the background instead: the same cluster after its one-round run has
completed (the nodes stay up, waiting for `raftfl run submit`), over S seconds, in bytes per
second. It is what a federation costs between runs, and the floor under every round's figure.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from raftfl.core.address import CLIENT_PORT_OFFSET, FLOWER_PORT_OFFSET, MODELS_PORT_OFFSET
from raftfl.core.events import RoundCommitted, RoundStarted, RunCompleted
from raftfl.core.keys import Keys
from raftfl.etcd.store import Resync
from raftfl.lab.bench import MODEL_BYTES, plot_bars
from raftfl.lab.bench_report import Column, Echo, machine, table, write_csv
from raftfl.lab.bench_scale import Counts, read_counts
from raftfl.lab.faults import Skip, at, first_term, netns_setup, netns_teardown
from raftfl.lab.localcluster import LocalCluster
from raftfl.node.models import DEFAULT_REPLICAS  # the nodes' default --model-replicas

CHANNELS = ("raft", "client", "flower", "models")
RAFT_TARGET_COPIES, RAFT_TARGET_EXTRA = 0.1, 16 * 1024  # per round
IDLE_SETTLE_S = 3.0  # after the run completes: the last chores and records land
NFT_TABLE = "rflbench"

_METRIC = re.compile(r'^(etcd_network_peer_sent_bytes_total|etcd_network_client_grpc_sent_bytes_total'
                     r'|etcd_network_client_grpc_received_bytes_total'
                     r'|etcd_server_proposals_committed_total'
                     r'|grpc_server_msg_received_total)(\{[^}]*\})? ([0-9.e+]+)$')
_GRPC_METHOD = re.compile(r'grpc_method="([A-Za-z]+)"')


def etcd_bytes(endpoint: str) -> dict[str, float]:
    """One member's counters (`parse_metrics`), from its /metrics."""
    with urllib.request.urlopen(f"http://{endpoint}/metrics", timeout=5) as resp:
        return parse_metrics(resp.read().decode())


def parse_metrics(text: str) -> dict[str, float]:
    """Peer (Raft) and client gRPC byte counters of one member, the entries it has seen
    committed, and the gRPC messages it received by method (`rpc.Range`, `rpc.Txn`, ...:
    a stream's messages, keepalives among them, count one by one)."""
    out = {"raft": 0.0, "client": 0.0, "entries": 0.0}
    for line in text.splitlines():
        m = _METRIC.match(line)
        if not m:
            continue
        if m.group(1).startswith("grpc"):
            method = _GRPC_METHOD.search(m.group(2) or "")
            if method:
                key = f"rpc.{method.group(1)}"
                out[key] = out.get(key, 0.0) + float(m.group(3))
            continue
        kind = ("entries" if "proposals" in m.group(1) else "raft" if "peer" in m.group(1)
                else "client")
        out[kind] += float(m.group(3))
    return out


def _ports(base: int, n: int, offset: int) -> str:
    return f"{base + offset}-{base + offset + n - 1}"


def nft_rules(base: int, n: int) -> str:
    """Counters of the bytes sent from one namespace, by the port range they touch."""
    ranges = {"raft": _ports(base, n, 0), "client": _ports(base, n, CLIENT_PORT_OFFSET),
              "flower": _ports(base, n, FLOWER_PORT_OFFSET),
              "models": _ports(base, n, MODELS_PORT_OFFSET)}
    rules = "\n".join(f'    tcp {d} {{ {r} }} counter name "{ch}"'
                      for ch, r in ranges.items() for d in ("sport", "dport"))
    counters = "\n".join(f"  counter {ch} {{ }}" for ch in CHANNELS)
    return (f"table inet {NFT_TABLE} {{\n{counters}\n  chain out {{\n"
            f"    type filter hook output priority 0; policy accept;\n{rules}\n  }}\n}}\n")


class Kernel:
    """The kernel's view of a namespaced cluster: nft counters per namespace, veth counters."""

    def __init__(self, ctx: dict[str, Any]):
        self.ctx = ctx

    def install(self, base: int, n: int) -> None:
        for ns in self.ctx["ns"]:
            subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=nft_rules(base, n),
                           text=True, check=True, capture_output=True, timeout=10)

    def read(self) -> dict[str, float]:
        out = dict.fromkeys([*CHANNELS, "veth"], 0.0)
        for ns in self.ctx["ns"]:
            text = subprocess.run(["ip", "netns", "exec", ns, "nft", "-j", "list", "counters",
                                   "table", "inet", NFT_TABLE], check=True, capture_output=True,
                                  text=True, timeout=10).stdout
            for item in json.loads(text)["nftables"]:
                if "counter" in item:
                    out[item["counter"]["name"]] += item["counter"]["bytes"]
        for link in self.ctx["links"]:  # the host end: rx = what the node sent onto its link
            out["veth"] += int(Path(f"/sys/class/net/{link}/statistics/rx_bytes").read_text())
        return out


def _namespaces(n: int) -> tuple[dict[str, Any] | None, str | None]:
    """Namespaces for the cross-check, or why there are none."""
    if os.geteuid() != 0:
        return None, "not root: the kernel cross-check (network namespaces, nftables) is skipped"
    if subprocess.run(["sh", "-c", "command -v nft"], capture_output=True).returncode != 0:
        return None, "nft not installed: the kernel cross-check is skipped"
    try:
        return netns_setup(n, f"10.214.{os.getpid() % 250}"), None
    except Skip as exc:
        return None, f"{exc}: the kernel cross-check is skipped"


def _cluster(n: int, rounds: int, ctx: dict[str, Any] | None) -> LocalCluster:
    # The nodes stay up after the run (no --exit-on-complete): the members are scraped
    # after the last commit.
    return LocalCluster(n=n, rounds=rounds, cluster=f"traffic{n}", train_size=2000,
                        test_size=500, exit_on_complete=False,
                        ips=ctx["ips"] if ctx else None,
                        wrappers=ctx["wrappers"] if ctx else None)


def _etcd(c: LocalCluster) -> dict[str, dict[str, float]]:
    return {x.name: etcd_bytes(x.client_endpoint) for x in c.voters}


def _delta(before: dict[str, dict[str, float]], after: dict[str, dict[str, float]],
           per: float) -> dict[str, float]:
    """Raft and client bytes summed over the members, and the entries committed (one log: the
    member that saw the most), divided by `per`."""
    out = {ch: sum(after[k][ch] - before[k][ch] for k in after) / per for ch in ("raft", "client")}
    out["entries"] = max((after[k]["entries"] - before[k]["entries"] for k in after), default=0) / per
    return out


def kind_of(keys: Keys, key: str) -> str:
    """What a key is, for the split: its first segment under the cluster's root; a run's or
    a submission's, the segment under its id (`runs/events`, `runs/checkpoints`)."""
    first, _, tail = key.removeprefix(keys.root).partition("/")
    if first in ("runs", "submissions"):
        return f"{first}/{tail.partition('/')[2].partition('/')[0]}"
    return first


def writes_by_kind(c: LocalCluster, first: int, last: int, timeout: float = 30.0
                   ) -> dict[str, dict[str, int]]:
    """The puts and deletes of revisions `first`..`last` by kind of key, with their key and
    value bytes: read back from etcd's history after the window, so reading costs the window
    nothing. Empty if that history was compacted meanwhile."""
    stop = threading.Event()
    out: dict[str, dict[str, int]] = {}
    timer = threading.Timer(timeout, stop.set)
    timer.start()
    changes = c.store().watch(c.keys.root, first, stop)
    try:
        for change in changes:
            if isinstance(change, Resync):
                return {}
            if change.revision > last:
                break
            kind = kind_of(c.keys, change.key) + (" (delete)" if change.value is None else "")
            tally = out.setdefault(kind, {"count": 0, "bytes": 0})
            tally["count"] += 1
            tally["bytes"] += len(change.key) + len(change.value or b"")
    finally:
        stop.set()
        timer.cancel()
        changes.close()
    return out


def _revision(c: LocalCluster) -> int:
    """The cluster's revision as one member has applied it (serializable: no Raft round)."""
    return c.store().revision(serializable=True)


def split(etcd0: dict[str, dict[str, float]], etcd1: dict[str, dict[str, float]],
          writes: dict[str, dict[str, int]], leader: str | None, per: float) -> dict[str, Any]:
    """Where the window's Raft bytes went, per round: the leader's share of the peer bytes,
    the gRPC messages the members received by method, and the writes by kind of key."""
    rpcs = {k.removeprefix("rpc."): round(sum(etcd1[m].get(k, 0.0) - etcd0[m].get(k, 0.0)
                                              for m in etcd1) / per, 1)
            for k in sorted({k for v in etcd1.values() for k in v if k.startswith("rpc.")})}
    return {
        "raft_bytes_leader": int((etcd1[leader]["raft"] - etcd0[leader]["raft"]) / per)
        if leader in etcd1 and leader in etcd0 else None,
        "rpc_per_round": {k: v for k, v in rpcs.items() if v},
        "writes_per_round": {k: {"count": round(v["count"] / per, 1),
                                 "bytes": int(v["bytes"] / per)}
                             for k, v in sorted(writes.items(), key=lambda kv: -kv[1]["bytes"])}}


def linearizable_reads(before: Counts, after: Counts, per: float) -> dict[str, float] | None:
    """The nodes' linearizable reads per round, by origin (each costs a ReadIndex round: a
    heartbeat to and from every voter); None when a node did not count them."""
    if before.nodes is None or after.nodes is None:
        return None
    got = {who: round((v - before.nodes.get((who, kind), 0.0)) / per, 1)
           for (who, kind), v in after.nodes.items() if kind == "read"}
    return {who: v for who, v in sorted(got.items(), key=lambda kv: -kv[1]) if v}


def describe_split(row: dict[str, Any]) -> str:
    """A row's split, in three lines."""
    writes = ", ".join(f"{k} {v['count']:g} ({v['bytes'] / 1000:.1f} kB)"
                       for k, v in row.get("writes_per_round", {}).items())
    rpcs = ", ".join(f"{k} {v:g}" for k, v in row.get("rpc_per_round", {}).items())
    reads = ", ".join(f"{k} {v:g}" for k, v in (row.get("linearizable_reads_per_round")
                                                  or {}).items())
    return (f"{row['nodes']} nodes, per round: writes {writes or '-'}\n"
            f"  gRPC messages received by the members: {rpcs or '-'}; Raft bytes sent by the "
            f"leader {row.get('raft_bytes_leader')}\n"
            f"  the nodes' linearizable reads by origin: {reads or '-'}")


def measure(n: int, rounds: int, progress: Echo) -> dict[str, Any]:
    ctx, skipped = _namespaces(n)
    if skipped:
        progress(skipped)
    try:
        # One round more than measured: the run's end (run_completed, its snapshot, the
        # final prune: about 10 kB at 5 nodes) never lands inside the window.
        with _cluster(n, rounds + 1, ctx) as c:
            kernel = Kernel(ctx) if ctx else None
            if kernel:
                kernel.install(c.base, n)
            el = first_term(c)
            at(c, RoundStarted, 1, el.term)
            # The nodes' counters outside the etcd window: a /metrics scrape reads etcd.
            asked0 = read_counts(c)
            etcd0 = _etcd(c)
            k0 = kernel.read() if kernel else None
            t0, rev0 = time.time(), _revision(c)
            progress(f"{n} nodes: round 1 started; measuring {rounds} rounds")
            c.wait_event(lambda e: isinstance(e, RoundCommitted) and e.round == rounds, 300,
                         "the last commit")
            k1 = kernel.read() if kernel else None
            elapsed = time.time() - t0
            etcd1 = _etcd(c)
            asked1 = read_counts(c)
            rev1, leader = _revision(c), c.etcd_leader()
            writes = writes_by_kind(c, rev0 + 1, rev1)
            state = c.state()
            ok = list(state.committed_rounds)[:rounds] == list(range(1, rounds + 1)) and not (
                state.duplicate_commits or state.stale_commits or state.chain_breaks
                or state.rejected)
    finally:
        if ctx:
            netns_teardown(ctx)
    per_round = _delta(etcd0, etcd1, rounds)
    row: dict[str, Any] = {
        "nodes": n, "rounds": rounds, "seconds_per_round": round(elapsed / rounds, 2),
        "raft_bytes": int(per_round["raft"]), "client_bytes": int(per_round["client"]),
        "raft_entries": round(per_round["entries"], 1),
        "raft_copies": round(per_round["raft"] / MODEL_BYTES, 2),
        "client_copies": round(per_round["client"] / MODEL_BYTES, 2),
        "raft_target_met": per_round["raft"] <= RAFT_TARGET_COPIES * MODEL_BYTES
        + RAFT_TARGET_EXTRA, "ok": ok,
        **split(etcd0, etcd1, writes, leader, rounds),
        "linearizable_reads_per_round": linearizable_reads(asked0, asked1, rounds)}
    if k0 is not None and k1 is not None:
        kr = {ch: (k1[ch] - k0[ch]) / rounds for ch in k1}
        row.update({
            "kernel_raft_bytes": int(kr["raft"]), "kernel_client_bytes": int(kr["client"]),
            "kernel_flower_bytes": int(kr["flower"]), "veth_bytes": int(kr["veth"]),
            "flower_copies": round(kr["flower"] / MODEL_BYTES, 2),
            "kernel_models_bytes": int(kr["models"]),
            "model_service_copies": round(kr["models"] / MODEL_BYTES, 2),
            "models_target_met": kr["models"] <= (DEFAULT_REPLICAS - 1) * MODEL_BYTES * 1.1,
            "kernel_raft_vs_etcd": round(kr["raft"] / per_round["raft"], 3)
            if per_round["raft"] else None,
            "kernel_client_vs_etcd": round(kr["client"] / per_round["client"], 3)
            if per_round["client"] else None})
    else:
        row["crosscheck"] = skipped
    progress(f"{n} nodes: Raft {row['raft_copies']} copies/round, etcd clients "
             f"{row['client_copies']}, Flower {row.get('flower_copies', '-')}, model "
             f"services {row.get('model_service_copies', '-')}"
             + (f"; kernel/etcd: Raft {row.get('kernel_raft_vs_etcd')}, clients "
                f"{row.get('kernel_client_vs_etcd')}" if k0 is not None else ""))
    return row


def measure_idle(n: int, seconds: float, progress: Echo) -> dict[str, Any]:
    """The background between runs: bytes per second once the cluster's run completed."""
    ctx, skipped = _namespaces(n)
    if skipped:
        progress(skipped)
    try:
        with _cluster(n, 1, ctx) as c:
            kernel = Kernel(ctx) if ctx else None
            if kernel:
                kernel.install(c.base, n)
            c.wait_event(lambda e: isinstance(e, RunCompleted), 300, "run 1's completion")
            time.sleep(IDLE_SETTLE_S)
            progress(f"{n} nodes: run completed; measuring {seconds:.0f} s idle")
            asked0 = read_counts(c)  # outside the etcd window: a /metrics scrape reads etcd
            etcd0, k0, t0 = _etcd(c), kernel.read() if kernel else None, time.monotonic()
            rev0 = _revision(c)
            time.sleep(seconds)
            k1, elapsed = kernel.read() if kernel else None, time.monotonic() - t0
            etcd1 = _etcd(c)
            asked1 = read_counts(c)
            rev1, leader = _revision(c), c.etcd_leader()
            writes = writes_by_kind(c, rev0 + 1, rev1)
            ok = all(x.alive for x in c.nodes)
    finally:
        if ctx:
            netns_teardown(ctx)
    rate = _delta(etcd0, etcd1, elapsed)
    row: dict[str, Any] = {"nodes": n, "seconds": round(elapsed, 1),
                           "raft_bytes_per_s": int(rate["raft"]),
                           "raft_entries_per_s": round(rate["entries"], 2),
                           "client_bytes_per_s": int(rate["client"]), "ok": ok,
                           **split(etcd0, etcd1, writes, leader, elapsed),
                           "linearizable_reads_per_round": linearizable_reads(asked0, asked1,
                                                                              elapsed)}
    if k0 is not None and k1 is not None:
        row.update({"kernel_raft_bytes_per_s": int((k1["raft"] - k0["raft"]) / elapsed),
                    "kernel_client_bytes_per_s": int((k1["client"] - k0["client"]) / elapsed)})
    else:
        row["crosscheck"] = skipped
    progress(f"{n} nodes idle: Raft {row['raft_bytes_per_s'] / 1000:.1f} kB/s, etcd clients "
             f"{row['client_bytes_per_s'] / 1000:.1f} kB/s")
    return row


COLUMNS = [Column("nodes", "nodes"), Column("seconds_per_round", "s/round", "{:.2f}"),
           Column("raft_copies", "Raft copies", "{:.2f}"),
           Column("client_copies", "etcd-client copies", "{:.2f}"),
           Column("flower_copies", "Flower copies (kernel)", "{:.2f}"),
           Column("model_service_copies", "model-service copies (kernel)", "{:.2f}"),
           Column("raft_bytes", "Raft B/round (etcd)"),
           Column("raft_entries", "Raft entries/round", "{:.1f}"),
           Column("raft_target_met", "Raft <= 0.1 copy + 16 KiB"),
           Column("kernel_raft_vs_etcd", "Raft kernel/etcd", "{:.3f}"),
           Column("kernel_client_vs_etcd", "client kernel/etcd", "{:.3f}"),
           Column("veth_bytes", "veth B/round"), Column("ok", "ok")]


IDLE_COLUMNS = [Column("nodes", "nodes"), Column("seconds", "s", "{:.1f}"),
                Column("raft_bytes_per_s", "Raft B/s (etcd)"),
                Column("raft_entries_per_s", "Raft entries/s", "{:.2f}"),
                Column("client_bytes_per_s", "etcd-client B/s (etcd)"),
                Column("kernel_raft_bytes_per_s", "Raft B/s (kernel)"),
                Column("kernel_client_bytes_per_s", "etcd-client B/s (kernel)"), Column("ok", "ok")]


def bench_idle(nodes_list: list[int], seconds: float, out: Path, echo: Echo = print,
               progress: Echo | None = None) -> tuple[int, dict[str, Any]]:
    """`bench traffic --idle S`: the background per second between runs, at each size."""
    progress = progress or echo
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, n in enumerate(nodes_list, 1):
        progress(f"[{i}/{len(nodes_list)}] {n} nodes, {seconds:.0f} s idle")
        rows.append(measure_idle(n, seconds, progress))
    write_csv(out / "traffic_idle.csv", rows)
    plot_bars(out / "traffic_idle.png", "Raft traffic of an idle cluster",
              [r["nodes"] for r in rows], [r["raft_bytes_per_s"] / 1000 for r in rows], "nodes",
              "kB/s (etcd peer bytes)", hline=3.0)
    files = [str(out / "traffic_idle.csv"), str(out / "traffic_idle.png")]
    summary = {"bench": "traffic", "idle_s": seconds, "machine": machine(), "rows": rows,
               "files": files}
    echo(table(rows, IDLE_COLUMNS))
    for row in rows:
        echo(describe_split(row).replace("per round", "per second"))
    echo(f"bytes per second over {seconds:.0f} s after run 1 completed (nodes up, no run)")
    for reason in {r["crosscheck"] for r in rows if r.get("crosscheck")}:
        echo(reason)
    echo(f"wrote {', '.join(files)}")
    return (0 if all(r["ok"] for r in rows) else 1), summary


def bench_traffic(nodes_list: list[int], rounds: int, out: Path, echo: Echo = print,
                  progress: Echo | None = None, idle_s: float = 0.0) -> tuple[int, dict[str, Any]]:
    """Bytes per round at each cluster size; with `idle_s`, bytes per second between runs."""
    progress = progress or echo
    if idle_s:
        return bench_idle(nodes_list, idle_s, out, echo, progress)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, n in enumerate(nodes_list, 1):
        progress(f"[{i}/{len(nodes_list)}] {n} nodes, {rounds} rounds")
        rows.append(measure(n, rounds, progress))
    write_csv(out / "traffic.csv", rows)
    plot_bars(out / "traffic.png", "Raft replication per round, in model copies",
              [r["nodes"] for r in rows], [r["raft_copies"] for r in rows], "nodes",
              "model copies (248 KB) per round")
    summary = {"bench": "traffic", "rounds": rounds, "model_bytes": MODEL_BYTES,
               "machine": machine(), "rows": rows,
               "files": [str(out / "traffic.csv"), str(out / "traffic.png")]}
    echo(table(rows, COLUMNS))
    for row in rows:
        echo(describe_split(row))
    echo(f"per round, from round 1's start to round {rounds}'s commit; a model copy is "
         f"{MODEL_BYTES} B; kernel bytes include TCP/IP headers and ACKs (10% allowed on the "
         f"model services' {DEFAULT_REPLICAS - 1} copy)")
    skipped = {r["crosscheck"] for r in rows if r.get("crosscheck")}
    for reason in skipped:
        echo(reason)
    echo(f"wrote {out / 'traffic.csv'} and {out / 'traffic.png'}")
    return (0 if all(r["ok"] for r in rows) else 1), summary
