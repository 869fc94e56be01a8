"""The fleet transport: opaque instruction and reply bytes between one server and its workers.

Why our own small HTTP transport rather than Flower's SuperLink: a node that loses the
aggregator role must stop serving at once, and a worker must notice a vanished server within
about a second; both are one call here. It is stdlib only (`http.server` on the server,
`http.client` on the workers) and knows nothing of Flower or etcd: payloads are bytes.

Protocol (HTTP/1.1 with keep-alive; `token` names a worker's session):

    POST /register?node=ID&name=N[&liveness=S]
                                   -> 200 {"token": T}   (a re-registering node replaces its
                                                          old session; that session's pending
                                                          messages are reported lost; 429
                                                          past `max_sessions`)
    GET  /poll?token=T&hold=S      -> 200 payload (header X-Raftfl-Message: id), or 204 after
                                      holding the request up to S seconds with nothing to send
    POST /reply?token=T&msg=ID     -> 200; 409 when the message is not pending for this session;
                                      the token and Content-Length (at most `max_body`: 413)
                                      are checked before the body is read
    ...&hold=S on /register or /reply: then a poll on the same request (200 with a message, or
                                      204), its token in header X-Raftfl-Token (register), the
                                      server's clock when it took the reply in X-Raftfl-Taken
                                      (also on a 410/503 that ends the poll part)
    POST /heartbeat?token=T        -> 200
    410 = the session is gone (timed out or replaced); 503 = the server is stopping.

Why register and reply carry the next poll (`FleetClient` always asks so): each request costs
the server a parse and a thread's turn at the GIL, and a thousand workers made two per round
(the reply, then the next poll) and two per failover (register, then poll); now one. A
worker learns that its reply was taken when that poll is answered (the next instruction, or
the end of the hold).

Connections persist: a new TCP (and TLS) connection and a new server thread per request cost
more than the request itself once a thousand workers poll and reply. A worker keeps one
connection for its poll loop and its replies (they take turns in one thread) and one for its
heartbeats. The server closes a connection after an error response (its body may be unread),
and one idle for `IDLE_S` between requests, so that an idle connection holds no slot for
long. The client checks a kept connection before reusing it and, should the server have
closed it meanwhile, retries once on a fresh one: every request may be sent twice (a poll
whose response was lost is requeued, a second copy of a reply is refused with 409, a
heartbeat or register is idempotent for the session it names).

Liveness: a worker heartbeats every `HEARTBEAT_S` from its own thread, also while its ClientApp
runs; the server drops a worker silent for `node_timeout` and reports its pending messages lost.
A poll the server holds counts as liveness too (the session is seen when the hold ends), so an
edge worker (`FleetClient(idle_heartbeat=False)`) heartbeats only while its ClientApp runs:
a thousand idle workers then cost the server one held poll each, not two heartbeat
connections a second each. Such a worker notices a killed server at once (its held poll is
reset); a frozen one within its poll's hold plus `silence_limit`. A worker may ask for a longer
silence than `node_timeout` before it is dropped (`liveness`, at most `MAX_LIVENESS_S`): an
edge device (or a thousand virtual workers sharing one CPU) may be slow to send its first
heartbeat after an instruction; a dead one then costs its round up to that long.
`FleetServer.stop()` wakes every held poll and shuts down every open connection.
`FleetClient.abort()` cuts the session from any thread; a worker whose server refuses or resets
connections fails at its next heartbeat (within `HEARTBEAT_S`), a silent one after
`silence_limit`.

With a certificate bundle (`raftfl.tls`) the same protocol runs over TLS, and the server
requires a client certificate signed by the cluster CA: a host without one never gets an
HTTP exchange, so it can neither receive the model nor submit an update. Who a holder is
comes from its certificate, not from what it claims: `identify(CN)` (the node's policy) says
which node id a certificate may register as, or None for none (operators and the admin get
no fleet session); a session's requests must come over a connection of that same CN.

Limits, so that a peer cannot starve the heartbeats: at most `MAX_CONNECTIONS` open
connections (more are closed at accept), `MAX_PER_PEER` per certificate, `HANDSHAKE_S` for a
TLS handshake, `REQUEST_S` for a request's first line and `IDLE_S` for each next one; at most
`MAX_OUTBOX` messages queued per session; at most `max_sessions` sessions (a peer that
registers under ever new node ids is refused with 429 once they are taken, never grows the
server). Refused connections
and registrations are counted and said at most every `SAY_EVERY_S`.
"""

from __future__ import annotations

import http.client
import json
import logging
import secrets
import select
import socket
import ssl
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

from raftfl import tls
from raftfl.net.http import CappedHTTPServer

log = logging.getLogger(__name__)

NODE_TIMEOUT_S = 3.0
HEARTBEAT_S = 0.5
HEARTBEAT_TIMEOUT_S = 1.0
SILENCE_LIMIT_S = 3.0
POLL_HOLD_S = 1.0
MAX_POLL_HOLD_S = 5.0
REAP_EVERY_S = 0.2
MAX_BODY = 256 << 20
MAX_NODE_ID = (1 << 63) - 1  # node ids are positive int64; 1 is the server's own id
MESSAGE_HEADER = "X-Raftfl-Message"
TOKEN_HEADER = "X-Raftfl-Token"
TAKEN_HEADER = "X-Raftfl-Taken"  # the server's wall clock when it took a reply (lab figures)
MAX_CONNECTIONS = 4096
MAX_PER_PEER = 16  # a worker needs three at once: its poll, a heartbeat and a reply
HANDSHAKE_S = 5.0
REQUEST_S = 5.0
IDLE_S = 10.0  # a kept-alive connection idle this long between requests is closed
MAX_OUTBOX = 256
MAX_SESSIONS = 4096  # one per worker: a thousand edge workers and room to spare
MAX_LIVENESS_S = 30.0  # the longest silence a worker may ask to be allowed
SAY_EVERY_S = 10.0

# A certificate's CN -> the node id it may register as (None: no fleet session at all).
Identify = Callable[[str], int | None]


class FleetError(ConnectionError):
    """The fleet session or server is gone (stopped, unreachable, timed out or replaced)."""


class FleetAborted(FleetError):
    """`FleetClient.abort()` ended the session."""


class FleetStopped(FleetError):
    """The server was stopped."""


@dataclass(frozen=True)
class Lost:
    """A pending message whose reply can no longer come, and why."""

    reason: str


@dataclass
class _Session:
    node_id: int
    name: str
    token: str
    last_seen: float
    peer: str  # the certificate CN it registered with ("" without TLS)
    wake: threading.Condition  # on the server's lock: wakes only this session's held poll
    timeout: float  # dropped after this long silent (not polling)
    polls: int = 0  # polls held right now: each counts as liveness
    outbox: deque[tuple[str, bytes]] = field(default_factory=deque)
    pending: set[str] = field(default_factory=set)  # queued or delivered, not yet replied


class _Closed(OSError):
    """The peer closed the connection before its TLS handshake: nothing to say."""


class _HttpError(Exception):
    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status


class FleetServer:
    """The aggregator's end: workers register, poll for messages and post replies.

    Thread-safe; `push`, `collect` and `node_ids` are called by the ServerApp's thread.
    """

    def __init__(self, host: str, port: int, *, node_timeout: float = NODE_TIMEOUT_S,
                 max_body: int = MAX_BODY, identify: Identify | None = None,
                 max_sessions: int = MAX_SESSIONS):
        self.node_timeout = node_timeout
        self.max_body = max_body
        self.identify = identify
        self.max_sessions = max_sessions
        # One lock; `_cond` wakes the grid's `collect`, each session's `wake` its own held
        # poll: a push to one of a thousand workers must not wake the other 999 polls.
        self._cond = threading.Condition()
        self._sessions: dict[int, _Session] = {}
        self._by_token: dict[str, _Session] = {}
        self._owner: dict[str, _Session] = {}  # pending message id -> session
        self._done: dict[str, bytes | Lost] = {}  # message id -> reply, or why none comes
        self._stopped = threading.Event()  # also wakes the reaper, which never waits on `_cond`
        try:
            self._httpd = _HttpServer((host, port), self)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot serve the Flower fleet on {host}:{port}: "
                                     f"{exc.strerror or exc}") from None
        self.address = f"{host}:{self._httpd.server_address[1]}"
        self._threads = [threading.Thread(target=self._httpd.serve_forever, args=(0.1,),
                                          name=f"fleet-{self.address}", daemon=True),
                         threading.Thread(target=self._reap, name="fleet-reaper", daemon=True)]

    def start(self) -> FleetServer:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        """Stop now, from any thread: wake held polls, cut open connections, close the port."""
        with self._cond:
            if self._stopped.is_set():
                return
            self._stopped.set()
            self._cond.notify_all()
            for session in self._sessions.values():
                session.wake.notify_all()
        if self._threads[0].is_alive():
            self._httpd.shutdown()
        self._httpd.cut_connections()
        self._httpd.server_close()

    @property
    def stopped(self) -> bool:
        return self._stopped.is_set()

    # ---- used by the grid

    def node_ids(self) -> list[int]:
        with self._cond:
            self._check_running()
            return sorted(self._sessions)

    def push(self, node_id: int, msg_id: str, payload: bytes) -> bool:
        """Queue `payload` for `node_id`; False (and the message recorded lost) if the node is
        not connected."""
        with self._cond:
            self._check_running()
            session = self._sessions.get(node_id)
            if session is None:
                self._done[msg_id] = Lost(f"node {node_id} is not connected")
                return False
            if len(session.pending) >= MAX_OUTBOX:
                self._done[msg_id] = Lost(f"node {node_id} has {MAX_OUTBOX} messages pending")
                return False
            session.outbox.append((msg_id, payload))
            session.pending.add(msg_id)
            self._owner[msg_id] = session
            session.wake.notify_all()
            return True

    def collect(self, msg_ids: Iterable[str], timeout: float = 0.0) -> dict[str, bytes | Lost]:
        """Take the replies (or losses) among `msg_ids`, waiting up to `timeout` s (None:
        forever) for at least one. Raises FleetStopped once the server is stopped."""
        wanted = set(msg_ids)
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                self._check_running()
                ready = {m: self._done.pop(m) for m in wanted & self._done.keys()}
                remaining = None if deadline is None else deadline - time.monotonic()
                if ready or not wanted or (remaining is not None and remaining <= 0):
                    return ready
                self._cond.wait(remaining)

    def forget(self, msg_ids: Iterable[str]) -> None:
        """Drop messages nobody waits for any more (their replies are discarded)."""
        with self._cond:
            for msg_id in msg_ids:
                self._done.pop(msg_id, None)
                session = self._owner.pop(msg_id, None)
                if session is not None:
                    session.pending.discard(msg_id)
                    session.outbox = deque(m for m in session.outbox if m[0] != msg_id)

    # ---- used by the HTTP handler

    def _check_running(self) -> None:
        if self._stopped.is_set():
            raise FleetStopped(f"fleet server {self.address} stopped")

    def _session(self, token: str, peer: str) -> _Session:
        if self._stopped.is_set():
            raise _HttpError(503, "stopping")
        session = self._by_token.get(token)
        if session is None:
            raise _HttpError(410, "unknown or expired session")
        if session.peer != peer:
            raise _HttpError(403, f"the session of {session.peer} used by {peer or 'no certificate'}")
        session.last_seen = time.monotonic()
        return session

    def register(self, node_id: int, name: str, peer: str = "",
                 liveness: float | None = None) -> str:
        """A session for `node_id`; `peer` is the CN of the connection's certificate ("" without
        TLS), which must be allowed that id when the server has an `identify` policy.
        `liveness`: the silence after which it is dropped, within [node_timeout,
        MAX_LIVENESS_S] (node_timeout by default)."""
        if self.identify is not None and peer:
            allowed = self.identify(peer)
            if allowed is None:
                raise _HttpError(403, f"certificate {peer!r} gets no fleet session")
            if allowed != node_id:
                raise _HttpError(403, f"certificate {peer!r} may register as node {allowed}, "
                                      f"not {node_id}")
        with self._cond:
            if self._stopped.is_set():
                raise _HttpError(503, "stopping")
            old = self._sessions.get(node_id)
            if old is not None:
                self._drop(old, f"node {node_id} registered again")
            elif len(self._sessions) >= self.max_sessions:
                raise _HttpError(429, f"{self.max_sessions} sessions open")
            timeout = min(max(liveness or 0.0, self.node_timeout), MAX_LIVENESS_S)
            session = _Session(node_id, name, secrets.token_hex(16), time.monotonic(), peer,
                               threading.Condition(self._cond), timeout)
            self._sessions[node_id] = session
            self._by_token[session.token] = session
            self._cond.notify_all()
            log.info("fleet %s: node %s (%d) connected", self.address, name or "?", node_id)
            return session.token

    def next_for(self, token: str, hold: float, peer: str = "") -> tuple[str, bytes] | None:
        deadline = time.monotonic() + min(max(hold, 0.0), MAX_POLL_HOLD_S)
        with self._cond:
            session = self._session(token, peer)
            session.polls += 1
            try:
                while True:
                    if session.outbox:
                        return session.outbox.popleft()
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return None
                    session.wake.wait(remaining)
                    session = self._session(token, peer)  # dropped or replaced meanwhile: 410
            finally:
                session.polls -= 1
                session.last_seen = time.monotonic()

    def requeue(self, token: str, msg_id: str, payload: bytes) -> None:
        """A poll response was not delivered: send the message again on the next poll."""
        with self._cond:
            session = self._by_token.get(token)
            if session is not None and msg_id in session.pending:
                session.outbox.appendleft((msg_id, payload))

    def reply(self, token: str, msg_id: str, payload: bytes, peer: str = "") -> None:
        with self._cond:
            session = self._session(token, peer)
            if msg_id not in session.pending:
                raise _HttpError(409, f"message {msg_id} is not pending for this session")
            session.pending.discard(msg_id)
            if session.outbox:  # requeued (its poll's answer was lost) yet answered
                session.outbox = deque(m for m in session.outbox if m[0] != msg_id)
            self._owner.pop(msg_id, None)
            self._done[msg_id] = payload
            self._cond.notify_all()

    def touch(self, token: str, peer: str = "") -> None:
        with self._cond:
            self._session(token, peer)

    def _drop(self, session: _Session, reason: str) -> None:
        """Forget a session (lock held); its pending messages get `Lost(reason)`."""
        self._sessions.pop(session.node_id, None)
        self._by_token.pop(session.token, None)
        for msg_id in session.pending:
            self._owner.pop(msg_id, None)
            self._done[msg_id] = Lost(reason)
        session.pending.clear()
        session.outbox.clear()
        session.wake.notify_all()
        self._cond.notify_all()

    def _reap(self) -> None:
        """Drop workers silent for `node_timeout`. Time this process itself was starved
        (CPU or GIL: a reaper tick far later than asked for) is nobody's silence, so it is
        credited to every session: an aggregator busy building its data must not drop its
        own, live worker. It sleeps on its own event, not on `_cond`: every reply and
        registration notifies `_cond`, and a thousand of them would each make it walk a
        thousand sessions (0.1 s of CPU a round, holding the lock)."""
        last = time.monotonic()
        while not self._stopped.wait(REAP_EVERY_S):
            with self._cond:
                now = time.monotonic()
                stall = now - last - REAP_EVERY_S
                last = now
                if stall > REAP_EVERY_S:
                    for session in self._sessions.values():
                        session.last_seen = min(now, session.last_seen + stall)
                for session in list(self._sessions.values()):
                    if session.polls:  # a held poll: the worker is there
                        continue
                    if now - session.last_seen > session.timeout:
                        log.info("fleet %s: node %s (%d) silent for %.1f s, dropped",
                                 self.address, session.name or "?", session.node_id,
                                 now - session.last_seen)
                        self._drop(session, f"node {session.node_id} unavailable: no heartbeat "
                                            f"for {session.timeout:g} s")


class _HttpServer(CappedHTTPServer):
    """The fleet's HTTP server: a node's capped server (net/http.py) whose refusals are
    counted and said at most every SAY_EVERY_S, and which holds each certificate to
    MAX_PER_PEER connections."""

    max_connections = MAX_CONNECTIONS
    # socketserver's default backlog of 5 is small for a server that 15 workers poll and
    # heartbeat while as many followers probe it every 50 ms: a connection dropped on a full
    # backlog waits for TCP's 1 s SYN retry. A thousand workers reconnect at once after a
    # failover (the kernel caps this at net.core.somaxconn).
    request_queue_size = 1024

    def __init__(self, address: tuple[str, int], fleet: FleetServer):
        self.fleet = fleet
        self._peers: dict[str, int] = {}  # certificate CN -> its open connections
        self._refused = 0  # connections refused since the last line that said so
        self._said = 0.0
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, _Closed):
            return
        if isinstance(exc, OSError):  # a refused or stalled TLS handshake, a peer over its cap
            self.refused(f"connection from {client_address[0]} refused: {exc}")
            return
        super().handle_error(request, client_address)

    def refused(self, why: str) -> None:
        """Count a refused connection; say the first, then at most one line per SAY_EVERY_S."""
        with self._conns_lock:
            self._refused += 1
            now = time.monotonic()
            if now - self._said < SAY_EVERY_S:
                return
            count, self._refused, self._said = self._refused, 0, now
        log.warning("fleet %s: %s%s", self.fleet.address, why,
                    f" (and {count - 1} more refused)" if count > 1 else "")

    def admit_peer(self, peer: str) -> bool:
        with self._conns_lock:
            if self._peers.get(peer, 0) >= MAX_PER_PEER:
                return False
            self._peers[peer] = self._peers.get(peer, 0) + 1
            return True

    def release_peer(self, peer: str) -> None:
        with self._conns_lock:
            left = self._peers.get(peer, 0) - 1
            if left > 0:
                self._peers[peer] = left
            else:
                self._peers.pop(peer, None)


class _Handler(BaseHTTPRequestHandler):
    server: _HttpServer
    protocol_version = "HTTP/1.1"  # keep-alive: every response says its Content-Length
    timeout = 30.0  # per socket operation: a stalled peer cannot pin a handler thread
    disable_nagle_algorithm = True  # a kept connection: headers and body go out at once

    peer = ""  # the CN of the connection's certificate ("" without TLS)

    def setup(self) -> None:
        """Finish the TLS handshake within HANDSHAKE_S, learn the peer's CN, hold it to
        MAX_PER_PEER connections; then give the request line REQUEST_S."""
        conn = self.request
        if isinstance(conn, ssl.SSLSocket):
            conn.settimeout(HANDSHAKE_S)
            try:
                conn.do_handshake()
            except (ssl.SSLEOFError, ConnectionResetError, BrokenPipeError) as exc:
                raise _Closed() from exc  # a probe (followers check the port is served)
            peer = tls.peer_common_name(conn.getpeercert())
            if not self.server.admit_peer(peer):
                raise ConnectionRefusedError(f"certificate {peer!r} has {MAX_PER_PEER} "
                                             "connections open")
            self.peer = peer
        super().setup()
        conn.settimeout(REQUEST_S)

    def handle(self) -> None:
        """Serve requests until the peer closes, an error response, or IDLE_S of silence."""
        self.handle_one_request()
        while not self.close_connection and not self.server.fleet.stopped:
            self.connection.settimeout(IDLE_S)
            try:
                self.handle_one_request()
            except OSError:  # the peer closed or reset its kept connection: routine
                return

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            if self.peer:
                self.server.release_peer(self.peer)

    def parse_request(self) -> bool:
        self.connection.settimeout(self.timeout)  # the request line is in: a body may be big
        return super().parse_request()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        log.debug("fleet %s: " + format, self.server.fleet.address, *args)

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        self._dispatch()

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch()

    def _dispatch(self) -> None:
        try:
            try:
                self._route()
            except _HttpError as exc:
                if exc.status == 429:  # a flood of registrations: counted, said now and then
                    self.server.refused(f"registration from {self.client_address[0]} refused: "
                                        f"{exc}")
                    self._send(exc.status, str(exc).encode())
                    return
                # Said where an operator sees it: a peer refused for who it is (403) or for
                # its size (413); a late worker's expired session (410) is routine.
                (log.warning if exc.status in (403, 413) else log.info)(
                    "fleet %s: %s %s from %s refused: HTTP %d %s", self.server.fleet.address,
                    self.command, urlsplit(self.path).path[:40], self.client_address[0],
                    exc.status, exc)
                self._send(exc.status, str(exc).encode())
        except OSError:
            self.close_connection = True
            pass  # the peer went away, or stop() cut the connection

    def _route(self) -> None:
        fleet = self.server.fleet
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        route = (self.command, url.path)
        if route == ("POST", "/register"):
            hold = _hold(query) if "hold" in query else None
            token = self._register(fleet, query)
            if hold is not None:
                self._poll(fleet, hold, token, {TOKEN_HEADER: token})
            else:
                self._send(200, json.dumps({"token": token}).encode())
        elif route == ("GET", "/poll"):
            self._poll(fleet, _hold(query), query.get("token", ""))
        elif route == ("POST", "/reply"):
            hold = _hold(query) if "hold" in query else None
            token = query.get("token", "")
            fleet.touch(token, self.peer)  # a stranger is refused before its body is read
            fleet.reply(token, query.get("msg", ""), self._body(), self.peer)
            if hold is None:
                self._send(200)
                return
            taken = {TAKEN_HEADER: f"{time.time():.4f}"}
            try:
                self._poll(fleet, hold, token, taken)
            except _HttpError as exc:  # the reply was taken; the poll ended (server stopping)
                self._send(exc.status, str(exc).encode(), taken)
        elif route == ("POST", "/heartbeat"):
            fleet.touch(query.get("token", ""), self.peer)
            self._send(200)
        else:
            raise _HttpError(404, "no such endpoint")

    def _register(self, fleet: FleetServer, query: dict[str, str]) -> str:
        try:
            node_id = int(query.get("node", ""))
        except ValueError:
            raise _HttpError(400, "node must be an integer") from None
        if not 2 <= node_id <= MAX_NODE_ID:
            raise _HttpError(400, f"node id must be in [2, {MAX_NODE_ID}]")
        try:
            liveness = float(query.get("liveness", 0.0))
        except ValueError:
            raise _HttpError(400, "liveness must be a number") from None
        if liveness != liveness:  # NaN
            raise _HttpError(400, "liveness must be a number")
        return fleet.register(node_id, query.get("name", "")[:200], self.peer, liveness)

    def _poll(self, fleet: FleetServer, hold: float, token: str,
              headers: dict[str, str] | None = None) -> None:
        """Hold the request for the session's next message (`headers` go with the answer)."""
        item = fleet.next_for(token, hold, self.peer)
        if item is None:
            self._send(204, headers=headers)
            return
        msg_id, payload = item
        try:
            self._send(200, payload, {**(headers or {}), MESSAGE_HEADER: msg_id})
        except OSError:
            fleet.requeue(token, msg_id, payload)

    def _body(self) -> bytes:
        try:
            size = int(self.headers.get("Content-Length", ""))
        except ValueError:
            raise _HttpError(411, "Content-Length required") from None
        if not 0 <= size <= self.server.fleet.max_body:
            raise _HttpError(413, f"body of {size} bytes exceeds {self.server.fleet.max_body}")
        body = self.rfile.read(size)
        if len(body) != size:
            raise _HttpError(400, "truncated body")
        return body

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        if status >= 400 or self.server.fleet.stopped:  # a refused body may be unread
            self.close_connection = True
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)


def _hold(query: dict[str, str]) -> float:
    try:
        hold = float(query.get("hold", POLL_HOLD_S))
    except ValueError:
        raise _HttpError(400, "hold must be a number") from None
    if hold != hold:  # NaN
        raise _HttpError(400, "hold must be a number")
    return hold


class FleetClient:
    """A worker's session with one fleet server; `abort()` ends it from any thread."""

    def __init__(self, address: str, node_id: int, name: str = "", *,
                 heartbeat_timeout: float = HEARTBEAT_TIMEOUT_S, heartbeat: float = HEARTBEAT_S,
                 silence_limit: float = SILENCE_LIMIT_S, poll_hold: float = POLL_HOLD_S,
                 idle_heartbeat: bool = True, liveness: float | None = None):
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"fleet address must be host:port, got {address!r}")
        self.address = address
        self._host, self._port = host.strip("[]"), int(port)
        self.node_id = node_id
        self.name = name
        self.heartbeat_timeout = heartbeat_timeout
        self.heartbeat = heartbeat
        self.silence_limit = silence_limit
        self.poll_hold = poll_hold
        self.idle_heartbeat = idle_heartbeat  # False: beat only while `handle` runs
        self.liveness = liveness  # the silence the server is asked to allow (None: its own)
        self._busy = threading.Event()  # set while `handle` runs, and once the session ended
        self._token = ""
        self._lock = threading.Lock()
        self._conns: set[http.client.HTTPConnection] = set()
        self._kept: dict[str, http.client.HTTPConnection] = {}  # purpose -> its connection
        self._ended: FleetError | None = None
        self._done = threading.Event()
        self._reached = False

    def run(self, handle: Callable[[str, bytes], bytes],
            replied: Callable[[str, float], None] | None = None) -> None:
        """Register, then answer each instruction with `handle(message_id, payload)`. Returns
        only by raising FleetError (FleetAborted after `abort()`, FleetStopped when the server
        stops). `replied(message_id, taken_at)` is called once the server took a reply;
        `taken_at` is the server's wall clock then (this host's if it did not say).

        `handle` runs in this thread and is never interrupted: an abort during it takes
        effect when it returns, and its reply is then dropped.

        Registering and replying each carry the next poll (`hold`, module docstring): one
        request per instruction and one per registration."""
        hold = f"&hold={self.poll_hold:g}"
        wait = self.poll_hold + self.silence_limit
        status, headers, body = self._request("POST", f"/register?node={self.node_id}"
                                                      f"&name={quote(self.name)}"
                                                      + (f"&liveness={self.liveness:g}"
                                                         if self.liveness else "") + hold,
                                              b"", wait, "run")
        self._expect(status, body, "register")
        self._token = headers.get(TOKEN_HEADER, "")
        if not self._token:  # a server that answers a register with its token alone
            try:
                self._token = str(json.loads(body)["token"])
            except (ValueError, KeyError, TypeError):
                raise FleetError(f"fleet {self.address}: malformed register reply") from None
        beat = threading.Thread(target=self._beat, name=f"fleet-heartbeat-{self.node_id}",
                                daemon=True)
        beat.start()
        try:
            while True:
                if status == 204 or MESSAGE_HEADER not in headers:  # nothing to do yet
                    status, headers, body = self._request(
                        "GET", f"/poll?token={self._token}{hold}", None, wait, "run")
                    self._expect(status, body, "poll")
                    continue
                msg_id = headers.get(MESSAGE_HEADER, "")
                self._busy.set()
                try:
                    reply = handle(msg_id, body)
                finally:
                    self._busy.clear()
                self._raise_if_ended()
                status, headers, body = self._request(
                    "POST", f"/reply?token={self._token}&msg={quote(msg_id)}{hold}", reply,
                    wait, "run")
                if status == 409:
                    log.info("fleet %s: reply to %s not wanted any more", self.address, msg_id)
                    status, headers = 204, {}
                    continue
                if replied is not None and (status in (200, 204) or TAKEN_HEADER in headers):
                    replied(msg_id, _taken_at(headers))
                self._expect(status, body, "reply")
        finally:
            self._done.set()
            self._busy.set()  # wakes an idle heartbeat thread, to end
            self._drop("run")

    @property
    def reached(self) -> bool:
        """Whether the server ever accepted a connection of this client: a port that refused
        it is not up (yet), one that took it is (a register may be held a poll long before
        its answer says so)."""
        return self._reached

    def abort(self) -> None:
        self._end(FleetAborted(f"fleet session with {self.address} aborted"))

    def _end(self, error: FleetError) -> None:
        with self._lock:
            if self._ended is None:
                self._ended = error
            conns = list(self._conns)
        self._done.set()
        self._busy.set()
        for conn in conns:
            if conn.sock is not None:
                try:
                    conn.sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _raise_if_ended(self) -> None:
        if self._ended is not None:
            raise self._ended

    def _expect(self, status: int, body: bytes, what: str) -> None:
        if status in (200, 204):
            return
        detail = body.decode(errors="replace")[:200]
        if status == 503:
            raise FleetStopped(f"fleet {self.address}: server stopping ({what})")
        if status == 410:
            raise FleetError(f"fleet {self.address}: session gone ({what}: {detail})")
        raise FleetError(f"fleet {self.address}: {what} failed with HTTP {status}: {detail}")

    def _request(self, method: str, path: str, body: bytes | None, timeout: float,
                 purpose: str) -> tuple[int, Any, bytes]:
        """One request on the connection kept for `purpose` (one thread's). A refused or reset
        fresh connection fails at once; a kept one the server closed meanwhile is retried
        once on a fresh one (module docstring). `timeout` bounds each socket operation (a
        busy server may be slow, not gone)."""
        self._raise_if_ended()
        conn = self._kept.get(purpose)
        if conn is not None and not _reusable(conn):
            self._drop(purpose)
            conn = None
        try:
            try:
                return self._exchange(conn, method, path, body, timeout, purpose)
            except (ConnectionError, http.client.BadStatusLine):
                if conn is None:  # a fresh connection: the server is not there
                    raise
                self._raise_if_ended()
                return self._exchange(None, method, path, body, timeout, purpose)
        except (OSError, http.client.HTTPException) as exc:
            self._drop(purpose)
            self._raise_if_ended()
            raise FleetError(f"fleet {self.address}: {exc or type(exc).__name__}") from exc

    def _exchange(self, conn: http.client.HTTPConnection | None, method: str, path: str,
                  body: bytes | None, timeout: float, purpose: str) -> tuple[int, Any, bytes]:
        if conn is None:
            self._drop(purpose)
            identity = tls.current()
            conn = (http.client.HTTPSConnection(self._host, self._port, timeout=timeout,
                                                context=identity.client_context())
                    if identity else http.client.HTTPConnection(self._host, self._port,
                                                                timeout=timeout))
            with self._lock:
                self._conns.add(conn)
            self._kept[purpose] = conn
            conn.connect()
            self._reached = True
            self._raise_if_ended()  # abort() may have run before the socket existed
        elif conn.sock is not None:
            conn.sock.settimeout(timeout)
        conn.request(method, path, body=body)
        response = conn.getresponse()
        data = response.read()
        if response.will_close:
            self._drop(purpose)
        return response.status, response.headers, data

    def _drop(self, purpose: str) -> None:
        """Close the connection kept for `purpose` (by the thread that uses it)."""
        conn = self._kept.pop(purpose, None)
        if conn is not None:
            with self._lock:
                self._conns.discard(conn)
            conn.close()

    def _beat(self) -> None:
        """Heartbeat until the session ends; end it when the server is gone."""
        try:
            self._beats()
        finally:
            self._drop("beat")

    def _beats(self) -> None:
        last_ok = time.monotonic()
        while not self._done.wait(self.heartbeat):
            if not (self.idle_heartbeat or self._busy.is_set()):
                self._busy.wait()  # polling: a dead server fails the poll itself
                last_ok = time.monotonic()
                continue
            try:
                status, _, body = self._request("POST", f"/heartbeat?token={self._token}", b"",
                                                self.heartbeat_timeout, "beat")
                self._expect(status, body, "heartbeat")
                last_ok = time.monotonic()
            except FleetAborted:
                return
            except FleetError as exc:
                timed_out = isinstance(exc.__cause__, TimeoutError)
                if not timed_out or time.monotonic() - last_ok > self.silence_limit:
                    self._end(exc)
                    return


def _taken_at(headers: Any) -> float:
    try:
        return float(headers.get(TAKEN_HEADER, ""))
    except ValueError:
        return time.time()


def _reusable(conn: http.client.HTTPConnection) -> bool:
    """Whether a kept, idle connection is still open: readable now means the server closed
    it (or broke the protocol), so it must not carry the next request."""
    sock = conn.sock
    if sock is None:
        return False
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return False
    return not readable
