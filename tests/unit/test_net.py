"""The network edge (raftfl/net/): resolution into etcd URLs, port checks, RTT probes on loopback."""

from __future__ import annotations

import socket

import pytest

from raftfl.core.address import NodeAddress
from raftfl.core.errors import RaftflError
from raftfl.net.address import client_endpoints, peer_url, resolve
from raftfl.net.ports import check_port_free
from raftfl.net.probe import Prober


def test_urls_are_built_from_the_resolved_ip() -> None:
    local = NodeAddress("localhost", 5000)
    assert resolve("localhost") == resolve("127.0.0.1") == "127.0.0.1"
    assert peer_url(local) == "http://127.0.0.1:5000"
    assert client_endpoints([local, NodeAddress("127.0.0.1", 6000)]) == \
        ["127.0.0.1:5100", "127.0.0.1:6100"]
    with pytest.raises(RaftflError, match="does not resolve"):
        peer_url(NodeAddress("no-such-host.invalid", 5000))


def test_a_taken_port_is_one_line_and_a_tcp_probe_adds_the_extra_delay() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        with pytest.raises(RaftflError, match=f"etcd port 127.0.0.1:{port} is already in use"):
            check_port_free("127.0.0.1", port, "etcd")
        prober = Prober(timeout=1.0, extra_ms=50.0)
        prober.method = "tcp"  # measured by connect, whatever ICMP permits here
        rtt = prober.probe("127.0.0.1", port)
        assert rtt is not None and rtt >= 50.0
    assert Prober(timeout=0.2).extra_ms == 0.0
