"""A node's small HTTP services (the model service, the API): threaded, TLS with the
process's identity when it has one, no reverse lookups, a thread of their own."""

from __future__ import annotations

import _thread
import logging
import socket
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


class CappedHTTPServer(ThreadingHTTPServer):
    """What every HTTP server of a node needs (the model service, the API, the fleet): no
    reverse lookup of its own name, TLS with the process's identity when it has one, at most
    `max_connections` open at once (each holds a thread: more are closed at accept, and
    `refused` says so), and `cut_connections` to end every open one at once."""

    daemon_threads = True
    max_connections = MAX_CONNECTIONS
    client_cert = False  # ask TLS clients for a certificate, CERT_OPTIONAL (the handler judges)

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]):
        self.identity = tls.current()
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        super().__init__(address, handler)

    def server_bind(self) -> None:
        TCPServer.server_bind(self)  # no reverse lookup of our own name (it stalls offline)
        self.server_name, self.server_port = self.server_address[:2]
        if self.identity is not None:  # only holders of a cluster certificate get an exchange
            context = self.identity.server_context()
            if self.client_cert:
                context.verify_mode = ssl.CERT_OPTIONAL  # checked per request: 401, not a reset
            self.socket = context.wrap_socket(self.socket, server_side=True,
                                              do_handshake_on_connect=False)

    def refused(self, why: str) -> None:
        log.warning("%s", why)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._conns_lock:
            full = len(self._conns) >= self.max_connections
            if not full:
                self._conns.add(request)
        if full:
            self.refused(f"connection from {client_address[0]} refused: "
                         f"{self.max_connections} connections open")
            TCPServer.shutdown_request(self, request)
            return
        # A thread of its own (daemon, never joined: `daemon_threads`), started without
        # `Thread.start`'s wait until it runs: with hundreds of threads wanting the GIL that
        # wait made the accept loop take turns with them, and a thousand workers registering
        # at once after a failover took seconds to be accepted (0.7 s against 2.8 s).
        _thread.start_new_thread(self.process_request_thread, (request, client_address))

    def shutdown_request(self, request: Any) -> None:
        with self._conns_lock:
            self._conns.discard(request)
        super().shutdown_request(request)

    def cut_connections(self) -> None:
        with self._conns_lock:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed by its handler


class NodeHttpServer(CappedHTTPServer):
    """`what` names the service in its errors, `flag` the option that moves its port;
    `client_cert` is asked of TLS clients (CERT_OPTIONAL: the handler answers 401 itself)."""

    # Edge workers ask a node's API who holds the role (GET /node), a thousand of them at once
    # after a failover: a connection dropped on a full backlog waits for TCP's 1 s SYN retry.
    request_queue_size = 1024

    def __init__(self, host: str, port: int, handler: type[BaseHTTPRequestHandler], what: str,
                 flag: str, client_cert: bool = False):
        self.what = what
        self.client_cert = client_cert
        try:
            super().__init__((host, port), handler)
        except OSError as exc:
            raise RaftflError(f"{what} port {host}:{port} is not usable "
                              f"({exc.strerror or exc}); set {flag}") from exc
        self.address = f"{host}:{port}"
        self._thread = threading.Thread(target=self.serve_forever, name=what, daemon=True)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.warning("%s: request from %s failed: %s", self.what, client_address[0],
                    sys.exc_info()[1])

    def refused(self, why: str) -> None:
        log.warning("%s: %s", self.what, why)

    def start(self) -> NodeHttpServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
