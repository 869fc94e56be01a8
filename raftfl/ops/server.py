"""The node's HTTP API server (raft port + 400; `--api-port`, 0: none).

With `--certs` it serves TLS with the node's certificate and asks every client for a
certificate of the cluster's CA (optional in the handshake, so that a client without one gets
an HTTP 401 and a log line rather than a reset connection; a certificate of another CA fails
the handshake). Without `--certs` it serves plain HTTP on the node's IP, which the node only
binds without TLS on loopback or with `--insecure`.

Each request gets a thread and a socket timeout; bodies are bounded (`MAX_BODY`, 413 beyond)
and must say their length (411 otherwise); a browser's cross-origin write is refused, so a
web page cannot make an operator's browser pause the cluster.
"""

from __future__ import annotations

import logging
import ssl
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from raftfl.core.status import Published
from raftfl.net.http import NodeHttpServer
from raftfl.net.origin import origin
from raftfl.ops import auth, routes
from raftfl.ops.context import OpsContext

log = logging.getLogger(__name__)

MAX_BODY = 64 * 1024
DRAIN_BYTES = 1 << 20  # a refused body up to this size is read and dropped
REQUEST_TIMEOUT_S = 10.0  # per socket operation: a client that stalls is dropped


class ApiServer(NodeHttpServer):
    def __init__(self, status: Published, address: str, name: str,
                 cluster: str):
        host, _, port = address.rpartition(":")
        super().__init__(host, int(port), _Handler, "API", "--api-port (0: no API)",
                         client_cert=True)
        self.ctx = OpsContext(status, name, cluster, secured=self.identity is not None)
        self.url = f"{'https' if self.identity else 'http'}://{address}"

    def stop(self) -> None:
        super().stop()
        self.ctx.close()


class _Handler(BaseHTTPRequestHandler):
    server: ApiServer
    protocol_version = "HTTP/1.0"
    server_version = "raftfl"
    sys_version = ""
    timeout = REQUEST_TIMEOUT_S

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        log.debug("api: " + format, *args)

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        self._handle("GET")

    def do_HEAD(self) -> None:  # noqa: N802
        self._handle("GET", head=True)

    def do_POST(self) -> None:  # noqa: N802
        self._handle("POST")

    def do_PUT(self) -> None:  # noqa: N802
        self._handle("PUT")

    def do_DELETE(self) -> None:  # noqa: N802
        self._handle("DELETE")

    def do_OPTIONS(self) -> None:  # noqa: N802 - a CORS preflight: refused (405)
        self._handle("OPTIONS")

    def _handle(self, method: str, head: bool = False) -> None:
        origin("api")
        url = urlsplit(self.path)
        peer = self.connection.getpeercert() if isinstance(self.connection, ssl.SSLSocket) else None
        who = auth.caller(self.server.ctx.secured, peer, self.client_address[0])
        refused = auth.refusal(who, method, url.path) or auth.cross_origin(
            method, self.headers.get("Origin"), self.headers.get("Host"))
        if refused is not None:
            log.warning("api: %s %s from %s refused (%d): %s", method, url.path[:100],
                        who.name or who.ip, *refused)
            self._send(routes.error(*refused), head)
            return
        body = self._body()
        if isinstance(body, routes.Response):
            self._send(body, head)
            return
        req = routes.Request(method, url.path, dict(parse_qsl(url.query)), body, who,
                             self.headers.get("Last-Event-ID"))
        try:
            resp = routes.dispatch(self.server.ctx, req)
        except Exception:  # noqa: BLE001 - a bug: logged with its traceback, answered 500
            log.exception("api: %s %s failed", method, url.path[:100])
            resp = routes.error(500, "internal error (see the node's log)")
        self._send(resp, head)

    def _body(self) -> bytes | routes.Response:
        if self.headers.get("Transfer-Encoding"):
            return routes.error(411, "send the body with a Content-Length")
        try:
            size = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            return routes.error(400, "malformed Content-Length")
        if not 0 <= size <= MAX_BODY:
            if size <= DRAIN_BYTES:  # read, so that the client, still sending, gets the 413
                self.rfile.read(size)  # instead of a reset connection
            return routes.error(413, f"request body of {size} bytes: at most {MAX_BODY}")
        return self.rfile.read(size) if size else b""

    def _send(self, resp: routes.Response, head: bool) -> None:
        self.send_response(resp.status)
        self.send_header("Content-Type", resp.content_type)
        self.send_header("X-Content-Type-Options", "nosniff")
        for name, value in resp.headers:
            self.send_header(name, value)
        if resp.stream is None:
            self.send_header("Content-Length", str(len(resp.body)))
        self.end_headers()
        if resp.stream is None:
            if not head:
                self.wfile.write(resp.body)
            return
        try:
            for chunk in () if head else resp.stream:
                self.wfile.write(chunk)
                self.wfile.flush()
        except OSError:  # the client went away, or stopped reading
            pass
        finally:
            resp.stream.close()
