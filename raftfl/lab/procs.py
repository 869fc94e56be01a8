"""Ending the processes a bench or test started, by PID (never by name)."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterable


def stop_groups(procs: Iterable[subprocess.Popen[bytes]], grace: float = 15.0) -> None:
    """SIGTERM each process's group (each one ours: started with `start_new_session`), all at
    once, then wait up to `grace` seconds for each before a SIGKILL."""
    procs = list(procs)
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
