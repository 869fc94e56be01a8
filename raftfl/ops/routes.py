"""The API's endpoints: a table from (method, path) to a handler, and the handlers.

Reads answer from the node's snapshot or through the CLI's own functions (`raftfl status
--json` is `/cluster`, `raftfl history` is `/history`); writes are the CLI's operator requests
(`raftfl aggregator handover`, `pause`, `resume`), recorded as made by the caller's
certificate name at its address. Errors are one line of JSON (`{"error": ...}`): 400 for a
bad parameter or body, 404 for an unknown path or run, 405 for a known path with another
method, 409 for a refused request, 503 while the node or etcd cannot answer.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from raftfl import control
from raftfl.core.errors import RaftflError
from raftfl.core.maintenance import MAX_NAME
from raftfl.etcd import handover, run_store
from raftfl.etcd.run_store import NoSuchRun
from raftfl.etcd.store import EtcdUnavailable
from raftfl.inspection import cluster_status, history_lines
from raftfl.ops import dashboard, metrics, probes
from raftfl.ops.auth import WRITE_METHODS, Caller
from raftfl.ops.context import Busy, NotReady, OpsContext
from raftfl.ops.stream import EventStream

JSON = "application/json"
MAX_REASON = 500  # characters of a pause's reason (raftfl pause --reason)
MAX_WAIT_S = 10.0  # the longest a `GET /node?after_term=` is held


class BadRequest(RaftflError):
    """A parameter or body the endpoint cannot take (400)."""


@dataclass(frozen=True)
class Request:
    method: str  # HEAD is answered as GET, without the body
    path: str
    query: Mapping[str, str]
    body: bytes
    caller: Caller
    last_event_id: str | None = None  # a reconnecting EventSource's


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str = JSON
    headers: tuple[tuple[str, str], ...] = ()
    stream: EventStream | None = None  # sent chunk by chunk after the headers


def json_response(status: int, obj: Any) -> Response:
    return Response(status, json.dumps(obj, indent=1).encode() + b"\n")


def error(status: int, line: str, headers: tuple[tuple[str, str], ...] = ()) -> Response:
    return Response(status, json.dumps({"error": line}).encode() + b"\n", headers=headers)


# -- parameters -------------------------------------------------------------------------------
def int_param(req: Request, name: str, raw: str | None = None) -> int | None:
    """A non-negative integer parameter (None when absent)."""
    raw = req.query.get(name) if raw is None else raw
    if raw is None:
        return None
    if not raw.isdigit() or len(raw) > 12:
        raise BadRequest(f"{name} must be a non-negative integer, not {raw[:40]!r}")
    return int(raw)


def wait_param(req: Request) -> float:
    """`wait`: seconds, 0 to `MAX_WAIT_S` (0 when absent)."""
    raw = req.query.get("wait", "0")
    try:
        wait = float(raw)
    except ValueError:
        wait = -1.0
    if not 0 <= wait <= MAX_WAIT_S:  # NaN fails too
        raise BadRequest(f"wait must be seconds from 0 to {MAX_WAIT_S:g}, not {raw[:40]!r}")
    return wait


def run_param(req: Request) -> int | None:
    run = int_param(req, "run")
    if run == 0:
        raise BadRequest("run must be 1 or more")
    return run


def json_body(req: Request) -> dict[str, Any]:
    """The request's JSON object ({} for an empty body)."""
    if not req.body.strip():
        return {}
    try:
        obj = json.loads(req.body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"malformed JSON body: {str(exc).splitlines()[0][:120]}") from None
    if not isinstance(obj, dict):
        raise BadRequest("the body must be a JSON object")
    return obj


def str_field(body: Mapping[str, Any], name: str, max_len: int) -> str | None:
    value = body.get(name)
    if value is not None and (not isinstance(value, str) or len(value) > max_len):
        raise BadRequest(f"{name} must be a string of at most {max_len} characters")
    return value


# -- handlers ---------------------------------------------------------------------------------
def _probe(ctx: OpsContext, req: Request) -> Response:
    status, body = probes.probe(req.path, ctx.status(), ctx.name, ctx.clock())
    return json_response(status, body)


def _node(ctx: OpsContext, req: Request) -> Response:
    """This node's state; with `after_term=T&wait=S`, once it names a holder of a term
    after T, or after S seconds (at most `MAX_WAIT_S`): an edge worker that lost the
    aggregator of term T asks once and learns of the successor as soon as this node does."""
    after = int_param(req, "after_term")
    st = ctx.status() if after is None else ctx.successor_of(after, wait_param(req))
    return json_response(200, probes.node_json(st, ctx.name, ctx.clock()))


def _run(ctx: OpsContext, req: Request) -> Response:
    """A run's app and run config (the active run's by default): what an edge worker checks
    its own app against before it serves the run."""
    run = run_param(req) or ctx.snapshot().run
    if run is None:
        raise NoSuchRun("no active run")
    spec = ctx.run_spec(run)
    return json_response(200, {"run": run, "app": spec.app, "app_sha256": spec.app_sha256,
                               "run_config": spec.run_config})


def _cluster(ctx: OpsContext, req: Request) -> Response:
    return json_response(200, cluster_status(ctx.endpoints(), ctx.cluster, run_param(req)))


def _history(ctx: OpsContext, req: Request) -> Response:
    summary = req.query.get("summary", "") not in ("", "0", "false")
    lines = list(history_lines(ctx.endpoints(), ctx.cluster, summary, run_param(req)))
    body = lines[0] if summary else "[" + ",\n".join(lines) + "]"  # the lines are JSON already
    return Response(200, body.encode() + b"\n")


def _failovers(ctx: OpsContext, req: Request) -> Response:
    run, failovers = ctx.ledger().failovers(run_param(req))
    return json_response(200, {"run": run, "failovers": failovers})


def _events(ctx: OpsContext, req: Request) -> Response:
    run, store = run_param(req), ctx.store()
    after = (int_param(req, "Last-Event-ID", req.last_event_id) if req.last_event_id
             else int_param(req, "after"))  # a reconnecting browser's last seq wins
    if run is None:  # the newest run, as /cluster and /history default to
        run = len(run_store.ids(store, ctx.keys)) or None
        if run is None:
            raise NoSuchRun("no run yet: nothing to stream")
    else:
        run_store.spec(store, ctx.keys, run)  # NoSuchRun: a 404 before any stream starts
    stream = ctx.stream(run, after or 0)
    return Response(200, content_type="text/event-stream", stream=stream,
                    headers=(("Cache-Control", "no-store"), ("X-Accel-Buffering", "no")))


def _metrics(ctx: OpsContext, req: Request) -> Response:
    body, content_type = metrics.render(ctx)
    return Response(200, body, content_type)


def _handover(ctx: OpsContext, req: Request) -> Response:
    to = str_field(json_body(req), "to", MAX_NAME)
    made = handover.request_handover(ctx.store(), ctx.keys, to.strip() if to else None,
                                     req.caller.who)
    r = made.request
    return json_response(202, {
        "holder": r.holder, "term": r.term, "to": r.to, "ranked": r.ranked,
        "revision": made.revision, "message": f"handover of term {r.term} from {r.holder} to "
        f"{r.to} requested: {r.holder} resigns after its current round"})


def _pause(ctx: OpsContext, req: Request) -> Response:
    reason = str_field(json_body(req), "reason", MAX_REASON) or ""
    return json_response(200, {"message": control.pause(ctx.store(), ctx.keys, req.caller.who,
                                                        reason)})


def _resume(ctx: OpsContext, req: Request) -> Response:
    json_body(req)  # no fields, but a malformed body is still refused
    return json_response(200, {"message": control.resume(ctx.store(), ctx.keys, req.caller.who)})


Handler = Callable[[OpsContext, Request], Response]
ROUTES: dict[tuple[str, str], Handler] = {
    **{("GET", path): _probe for path in probes.PROBES},
    ("GET", "/node"): _node,
    ("GET", "/run"): _run,
    ("GET", "/cluster"): _cluster,
    ("GET", "/history"): _history,
    ("GET", "/failovers"): _failovers,
    ("GET", "/events"): _events,
    ("GET", "/metrics"): _metrics,
    ("POST", "/handover"): _handover,
    ("POST", "/pause"): _pause,
    ("POST", "/resume"): _resume,
}


def allowed_methods(path: str) -> list[str]:
    """The methods `path` answers to ([]: no such endpoint)."""
    methods = {m for m, p in ROUTES if p == path}
    if dashboard.lookup(path) is not None:
        methods.add("GET")
    return sorted(methods)


def dispatch(ctx: OpsContext, req: Request) -> Response:
    static = dashboard.lookup(req.path) if req.method == "GET" else None
    if static is not None:
        return Response(200, static[0], static[1], headers=dashboard.HEADERS)
    handler = ROUTES.get((req.method, req.path))
    if handler is None:
        allowed = allowed_methods(req.path)
        if allowed:
            return error(405, f"{req.path} answers {', '.join(allowed)}, not {req.method}",
                         (("Allow", ", ".join(allowed)),))
        return error(404, f"no such endpoint: {req.path[:100]}")
    try:
        return handler(ctx, req)
    except BadRequest as exc:
        return error(400, str(exc))
    except NoSuchRun as exc:
        return error(404, str(exc))
    except (NotReady, EtcdUnavailable, Busy) as exc:
        return error(503, str(exc))
    except RaftflError as exc:  # a refused request (writes), or etcd said no (reads)
        return error(409 if req.method in WRITE_METHODS else 503, str(exc))
