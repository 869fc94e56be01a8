"""What an attacker does from the outside of a federation, for the attack suite
(tests/e2e/test_attacks.py): HTTPS requests and `raftfl` commands under a bundle of its
choosing, idle connections, an etcd write under another node's certificate, a command as
another local Unix user. Each returns what came back; the tests judge it.
"""

from __future__ import annotations

import http.client
import os
import shutil
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from raftfl import tls

TIMEOUT_S = 20.0
SECOND_USER = 65534  # nobody: a local user who is not the federation's


def context(bundle: Path) -> ssl.SSLContext:
    """A client TLS context presenting `bundle`'s certificate (any name: the attacker picks
    the address)."""
    ctx = tls.load(bundle).client_context()
    ctx.check_hostname = False
    return ctx


def https(bundle: Path, address: str, method: str, path: str,
          body: bytes = b"") -> tuple[int, bytes]:
    """One request to `address` (host:port) over mutual TLS as `bundle`: (status, body)."""
    host, _, port = address.rpartition(":")
    conn = http.client.HTTPSConnection(host, int(port), context=context(bundle),
                                       timeout=TIMEOUT_S)
    try:
        conn.request(method, path, body=body)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def raftfl_as(bundle: Path, cluster: str, nodes: list[str], *args: str,
           ) -> subprocess.CompletedProcess[str]:
    """`raftfl ARGS --cluster C --certs BUNDLE -n NODES...`, as an operator would type it."""
    return subprocess.run([sys.executable, "-m", "raftfl", *args, "--cluster", cluster,
                           "--certs", str(bundle), "-n", *nodes],
                          capture_output=True, text=True, timeout=60)


def etcd_put(bundle: Path, endpoints: list[str], key: str, value: str,
             ) -> subprocess.CompletedProcess[str]:
    """Write `key` under `bundle`'s certificate in a process of its own (the TLS identity is
    per process). Exit 0: written; else stderr holds etcd's answer."""
    code = ("import sys\nfrom raftfl import tls\nfrom raftfl.etcd.store import Store\n"
            "tls.configure(tls.load(__import__('pathlib').Path(sys.argv[1])))\n"
            "Store(sys.argv[2].split(','), retry_for=5).put(sys.argv[3], sys.argv[4])\n")
    return subprocess.run([sys.executable, "-c", code, str(bundle), ",".join(endpoints), key,
                           value], capture_output=True, text=True, timeout=60)


@contextmanager
def idle_connections(address: str, count: int, bundle: Path) -> Iterator[int]:
    """`count` connections to `address` left idle, every second one after a TLS handshake
    with `bundle`'s certificate; yields how many were opened, closes them all after."""
    host, _, port = address.rpartition(":")
    ctx = context(bundle)
    socks: list[socket.socket] = []
    try:
        for i in range(count):
            try:
                raw = socket.create_connection((host, int(port)), timeout=TIMEOUT_S)
            except OSError:
                continue  # refused at accept: counted by the server, not by us
            socks.append(raw)
            if i % 2:
                try:
                    socks[-1] = ctx.wrap_socket(raw, server_hostname=host)
                except OSError:
                    pass  # the server refused the handshake: the raw socket stays open
        yield len(socks)
    finally:
        for sock in socks:
            sock.close()


def can_switch_user() -> str | None:
    """None if this process can run a command as another local user, else why not."""
    if os.geteuid() != 0:
        return "acting as a second local Unix user needs root (setpriv --reuid)"
    if shutil.which("setpriv") is None or shutil.which("curl") is None:
        return "setpriv and curl are needed to act as a second local Unix user"
    return None


def as_second_user(*command: str) -> subprocess.CompletedProcess[str]:
    """`command` as another local user (uid/gid 65534, no groups), as on a shared host."""
    return subprocess.run(["setpriv", f"--reuid={SECOND_USER}", f"--regid={SECOND_USER}",
                           "--clear-groups", *command], capture_output=True, text=True,
                          timeout=60, env={"PATH": "/usr/bin:/bin", "HOME": "/"})
