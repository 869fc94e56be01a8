"""`raftfl bench bigmodel`: a big model for many rounds, and what it leaves in etcd.

Why: with checkpoints in etcd, a 100 MB model at 20 rounds an hour filled etcd's 2 GiB quota,
and etcd's 1.5 MiB request limit forced chunking. Models now live on the nodes
(node/models.py), so etcd's database should stay small whatever the model's size. This runs
the `examples/bigmodel` Flower app (a linear model of `--model-mb` megabytes) on real nodes,
reads every voter's database size after each commit, and checks the largest against
`--db-limit-mb` (64 by default). It also reports the model files each node keeps.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from raftfl.core.errors import RaftflError
from raftfl.core.events import RoundCommitted
from raftfl.core.invariants import check
from raftfl.etcd.store import Store
from raftfl.lab.bench_report import Echo, machine, write_csv
from raftfl.lab.localcluster import LocalCluster
from raftfl.node.runapp import bundled_app


def _db_size(c: LocalCluster) -> int:
    sizes = []
    for node in c.voters:
        try:
            sizes.append(Store.member_status(node.client_endpoint, 5.0).db_size)
        except Exception:  # noqa: BLE001 - a member that does not answer now is skipped
            continue
    return max(sizes, default=0)


def bench_bigmodel(nodes: int, rounds: int, model_mb: float, db_limit_mb: float, out: Path,
                   echo: Echo = print, progress: Echo | None = None) -> tuple[int, dict[str, Any]]:
    progress = progress or echo
    app = bundled_app().parent / "bigmodel"
    if not (app / "pyproject.toml").is_file():
        raise RaftflError(f"the bigmodel example app is missing ({app})")
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    started = time.monotonic()
    with LocalCluster(n=nodes, rounds=rounds, cluster="bigmodel",
                      extra_args=["--app", str(app), "--run-config", f"model-mb={model_mb}",
                                  "--round-timeout", "600"]) as c:
        for rnd in range(1, rounds + 1):
            ev = c.wait_event(lambda e, r=rnd: isinstance(e, RoundCommitted) and e.round == r,
                              900, f"round {rnd}'s commit")
            size = _db_size(c)
            rows.append({"round": rnd, "db_size_max": size, "loss": ev.loss,
                         "seconds": round(time.monotonic() - started, 1)})
            progress(f"round {rnd}/{rounds} committed by {ev.node}: largest etcd db "
                     f"{size / 2**20:.1f} MiB")
        c.wait_event(lambda e: e.type == "run_completed", 300, "the run to complete")
        c.wait_exit(300)  # every node fetched the final model (from a holder) and left
        verdict = check(c.state(), rounds, c.final_models())
        model_files = {n.name: sum(p.stat().st_size for p in (n.data_dir / "models").glob("*"))
                       for n in c.nodes}  # glob: a node that never held a model has no dir
    largest = max(r["db_size_max"] for r in rows)
    ok = verdict.ok and largest < db_limit_mb * 2**20
    write_csv(out / "bigmodel.csv", rows)
    _plot(out / "bigmodel.png", rows, model_mb, db_limit_mb)
    echo(f"{nodes} nodes, {rounds} rounds of a {model_mb:g} MB model: largest etcd db "
         f"{largest / 2**20:.1f} MiB (limit {db_limit_mb:g} MiB) -> "
         f"{'met' if largest < db_limit_mb * 2**20 else 'MISSED'}; every round committed once: "
         f"{verdict.ok}; {rows[-1]['seconds'] / rounds:.1f} s per round")
    echo("model files kept per node: " + ", ".join(
        f"{name} {size / 2**20:.0f} MiB" for name, size in sorted(model_files.items())))
    echo(f"wrote {out / 'bigmodel.csv'} and {out / 'bigmodel.png'}")
    summary = {"bench": "bigmodel", "nodes": nodes, "rounds": rounds, "model_mb": model_mb,
               "largest_db_bytes": largest, "machine": machine(), "ok": ok,
               "violations": verdict.violations, "model_file_bytes": model_files, "rows": rows}
    return (0 if ok else 1), summary


def _plot(path: Path, rows: list[dict[str, Any]], model_mb: float, limit_mb: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([r["round"] for r in rows], [r["db_size_max"] / 2**20 for r in rows], label="etcd db")
    ax.axhline(limit_mb, color="red", linestyle="--", label=f"{limit_mb:g} MiB limit")
    ax.set_xlabel("round")
    ax.set_ylabel("largest member db file (MiB)")
    ax.set_title(f"etcd db size with a {model_mb:g} MB model")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
