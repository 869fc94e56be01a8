"""An edge worker's ClientApp, per run, from the app directory it was given (`raftfl worker`).

Why the app is local: an edge worker keeps nothing in etcd (edge.py), so it cannot read a
run's package there, and a device that runs whatever code a federation sends is what the
trust model forbids. It runs the app its operator installed, and only for a run whose app is
that same package: the run's spec (`GET /run?run=R` on any node's API: its app's sha256 and
its run config) is asked once per run and kept, specs being immutable. An instruction of a
run with another app, or whose spec no node answered for yet, gets an error reply naming
why, as a full node's refusals do (the aggregator counts it as a failure, not a reply).

Each run gets its own `ClientAppHost`, so its `context.state` lives as long as the worker,
across aggregators, as a full node's does.
"""

from __future__ import annotations

import json
import logging
import ssl
import threading
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from raftfl import tls
from raftfl.flower.app import UserConfig
from raftfl.flower.codec import CodecError, decode_message
from raftfl.flower.grid import Stamp
from raftfl.flower.host import ClientAppHost

log = logging.getLogger(__name__)

MAX_SPEC_BODY = 1 << 20
ASK_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class RunInfo:
    run: int
    app: str
    app_sha256: str
    run_config: UserConfig


def run_info(body: Any) -> RunInfo | None:
    """A node API's `GET /run` answer, checked (None: not one)."""
    if not isinstance(body, dict):
        return None
    run, app, sha, config = (body.get(k) for k in ("run", "app", "app_sha256", "run_config"))
    if type(run) is not int or not isinstance(app, str) or not isinstance(sha, str) \
            or not isinstance(config, dict):
        return None
    return RunInfo(run, app, sha, config)


def mismatch(info: RunInfo, local_sha256: str) -> str | None:
    """Pure: why this worker will not serve `info`'s run (None: it will)."""
    if info.app_sha256 != local_sha256:
        return (f"run {info.run}'s app {info.app!r} is {info.app_sha256[:12]}, this worker's "
                f"is {local_sha256[:12]}")
    return None


class RunHosts:
    """The worker's `handle`: each instruction to the ClientAppHost of its run."""

    def __init__(self, client_app: Any, local_sha256: str, apis: Sequence[str],
                 node_id: int, node_config: UserConfig, admit: Any):
        self.client_app, self.local_sha256 = client_app, local_sha256
        self.apis, self.node_id, self.node_config, self.admit = tuple(apis), node_id, node_config, admit
        identity = tls.current()
        self._context: ssl.SSLContext | None = identity.client_context() if identity else None
        self._hosts: dict[int, ClientAppHost] = {}
        self._lock = threading.Lock()

    def handle(self, msg_id: str, payload: bytes) -> bytes:
        """Decoded once, answered by its run's host."""
        try:
            message, extra = decode_message(payload)
            stamp = Stamp.from_json(extra)
        except CodecError:  # any host answers a malformed instruction with an error
            return self.host(0).handle(msg_id, payload)
        return self.host(stamp.run_id).answer(message, stamp)

    def host(self, run: int) -> ClientAppHost:
        """Run `run`'s host: the app's, or one that refuses every instruction and says why
        (kept for a run of another app; asked again for a run no node answered for)."""
        with self._lock:
            host = self._hosts.get(run)
        if host is not None:
            return host
        info = self._ask(run) if run > 0 else None
        refused = "no node API answered for its spec" if info is None else mismatch(
            info, self.local_sha256)
        host = ClientAppHost(
            self.client_app, run_id=run, node_id=self.node_id, node_config=self.node_config,
            run_config=info.run_config if info is not None and refused is None else {},
            admit=self.admit if refused is None else (lambda stamp, message: refused))
        if info is None:
            return host
        log.warning("worker: %s", f"refusing {refused}" if refused else
                    f"serving run {run} (app {info.app})")
        with self._lock:
            return self._hosts.setdefault(run, host)

    def _ask(self, run: int) -> RunInfo | None:
        for api in self.apis:
            url = f"{api.rstrip('/')}/run?{urllib.parse.urlencode({'run': run})}"
            try:
                with urllib.request.urlopen(url, timeout=ASK_TIMEOUT_S,  # noqa: S310 - ours
                                            context=self._context) as resp:
                    info = run_info(json.loads(resp.read(MAX_SPEC_BODY)))
            except (OSError, ValueError) as exc:
                log.info("worker: %s: %s", url, exc)
                continue
            if info is not None and info.run == run:
                return info
        return None
