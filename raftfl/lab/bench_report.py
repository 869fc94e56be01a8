"""What every `raftfl bench` command hands back: percentiles, one fixed-width table, a CSV,
and a JSON summary.

Why one module: the recovery, traffic, overhead and replay benchmarks report the same way
(a table on stdout, or JSON on stdout with the table and progress on stderr), so a reader
and a script compare them without learning four formats. Nothing here asserts a speed.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Column:
    key: str
    header: str
    fmt: str = "{}"  # applied to present values; None prints "-"


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100), interpolated between closest ranks; None if empty."""
    xs = sorted(values)
    if not xs:
        return None
    pos = (len(xs) - 1) * q / 100
    low, high = math.floor(pos), math.ceil(pos)
    return xs[low] + (xs[high] - xs[low]) * (pos - low)


def spread(values: Sequence[float]) -> dict[str, float | int | None]:
    """n, p50, p95 and max of `values`, rounded to the millisecond."""
    def r(x: float | None) -> float | None:
        return None if x is None else round(x, 3)

    return {"n": len(values), "p50": r(percentile(values, 50)), "p95": r(percentile(values, 95)),
            "max": r(max(values, default=None))}


def table(rows: Sequence[dict[str, Any]], columns: Sequence[Column]) -> str:
    """Rows as aligned text columns, with a header line."""
    cells = [[c.header for c in columns]]
    for row in rows:
        cells.append(["-" if row.get(c.key) is None else c.fmt.format(row[c.key])
                      for c in columns])
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    return "\n".join("  ".join(text.rjust(w) if i else text.ljust(w)
                               for i, (text, w) in enumerate(zip(line, widths, strict=True)))
                     for line in cells)


def write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """Rows as CSV, the union of their keys as the header (first-seen order)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header: list[str] = []
    for row in rows:
        header += [k for k in row if k not in header]
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=header)
        w.writeheader()
        w.writerows(rows)


def machine() -> dict[str, Any]:
    """The conditions a figure was measured under: cores and the load average."""
    return {"cores": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2)}


Echo = Callable[[str], None]
