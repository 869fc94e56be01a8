"""Ports this process is about to listen on."""

from __future__ import annotations

import socket

from raftfl.core.errors import RaftflError


def check_port_free(ip: str, port: int, what: str) -> None:
    """Fail early and clearly instead of letting etcd or Flower die with a bind error."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((ip, port))
        except OSError as exc:
            raise RaftflError(f"{what} port {ip}:{port} is already in use ({exc.strerror})") from exc
