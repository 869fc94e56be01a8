"""What every `raftfl bench` command hands back: percentiles, one fixed-width table, a CSV,
and a JSON summary; and `LogTail`, which stamps processes' log lines as they appear.

Why one module: the recovery, traffic, overhead and replay benchmarks report the same way
(a table on stdout, or JSON on stdout with the table and progress on stderr), so a reader
and a script compare them without learning four formats. Nothing here asserts a speed.
"""

from __future__ import annotations

import csv
import math
import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
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


@dataclass
class LogTail:
    """Stamps, on arrival, the lines matching `pattern` that processes write to their log
    files (polled every 10 ms), and calls `sample()` on each poll (e.g. to read a counter)."""

    logs: dict[str, Path]  # name -> log file
    pattern: re.Pattern[str]
    sample: Callable[[], Any] | None = None
    lines: list[tuple[float, str, str]] = field(default_factory=list)  # (time, name, line)
    samples: list[tuple[float, Any]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> LogTail:
        threading.Thread(target=self._run, name="logtail", daemon=True).start()
        return self

    def close(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        offsets = dict.fromkeys(self.logs, 0)
        partial = dict.fromkeys(self.logs, "")
        while not self._stop.wait(0.01):
            for name, path in self.logs.items():
                try:
                    with open(path, "rb") as fh:
                        fh.seek(offsets[name])
                        data = fh.read()
                except OSError:
                    continue
                if not data:
                    continue
                now = time.time()
                offsets[name] += len(data)
                *complete, partial[name] = (partial[name] + data.decode(errors="replace")).split("\n")
                self.lines += [(now, name, line) for line in complete if self.pattern.search(line)]
            if self.sample is not None:
                self.samples.append((time.time(), self.sample()))
