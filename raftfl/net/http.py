"""A node's small HTTP services (the model service, the API): threaded, TLS with the
process's identity when it has one, no reverse lookups, a thread of their own."""

from __future__ import annotations

import logging
import ssl
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from socketserver import TCPServer
from typing import Any

from raftfl import tls
from raftfl.core.errors import RaftflError

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 1024


class NodeHttpServer(ThreadingHTTPServer):
    """`what` names the service in its errors, `flag` the option that moves its port;
    `client_cert` is asked of TLS clients (CERT_OPTIONAL: the handler answers 401 itself)."""

    daemon_threads = True
    request_queue_size = 64

    def __init__(self, host: str, port: int, handler: type[BaseHTTPRequestHandler], what: str,
                 flag: str, client_cert: bool = False):
        self.what = what
        self.identity = tls.current()
        self._open = 0
        self._open_lock = threading.Lock()
        self._client_cert = client_cert
        try:
            super().__init__((host, port), handler)
        except OSError as exc:
            raise RaftflError(f"{what} port {host}:{port} is not usable "
                              f"({exc.strerror or exc}); set {flag}") from exc
        self.address = f"{host}:{port}"
        self._thread = threading.Thread(target=self.serve_forever, name=what, daemon=True)

    def server_bind(self) -> None:
        TCPServer.server_bind(self)  # no reverse lookup of our own name (it stalls offline)
        self.server_name, self.server_port = self.server_address[:2]
        if self.identity is not None:  # only holders of a cluster certificate get an exchange
            context = self.identity.server_context()
            if self._client_cert:
                context.verify_mode = ssl.CERT_OPTIONAL  # checked per request: 401, not a reset
            self.socket = context.wrap_socket(self.socket, server_side=True,
                                              do_handshake_on_connect=False)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.warning("%s: request from %s failed: %s", self.what, client_address[0],
                    sys.exc_info()[1])

    def process_request(self, request: Any, client_address: Any) -> None:
        """At most MAX_CONNECTIONS at once (each holds a thread): more are closed at accept."""
        with self._open_lock:
            full = self._open >= MAX_CONNECTIONS
            self._open += 0 if full else 1
        if full:
            log.warning("%s: connection from %s refused: %d connections open", self.what,
                        client_address[0], MAX_CONNECTIONS)
            TCPServer.shutdown_request(self, request)
            return
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open -= 1
        super().shutdown_request(request)

    def start(self) -> NodeHttpServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
