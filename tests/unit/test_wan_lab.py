"""The WAN lab's pure parts (link layouts, ranges) and its relay's holding rule, on pipes."""

from __future__ import annotations

import asyncio
import os
import random
import socket
import struct

import pytest

from raftfl.lab.wan import WanSpec, parse_range
from raftfl.lab.wan_relay import LinkState, Relay


@pytest.mark.parametrize(("text", "expected"), [
    ("50..200", (50.0, 200.0)), ("100", (100.0, 100.0)), ("0..0", (0.0, 0.0)),
    ("1.5..3", (1.5, 3.0)),
])
def test_parse_range(text: str, expected: tuple[float, float]) -> None:
    assert parse_range(text) == expected


@pytest.mark.parametrize("text", ["200..50", "-1..5", "x", "", "1..", "nan", "5..nan"])
def test_parse_range_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_range(text)


@pytest.mark.parametrize("n", [2, 3, 5, 9])
def test_from_ranges_spans_both_ends_and_grows_with_distance(n: int) -> None:
    spec = WanSpec.from_ranges(n, (50.0, 200.0), 50.0, (1.0, 3.0))
    links = spec.links
    assert len(links) == n * (n - 1) // 2
    rtts = sorted(x.rtt_ms for x in links.values())
    assert rtts[0] == 50.0 and rtts[-1] == (200.0 if n > 2 else 50.0)
    assert all(1.0 <= x.loss_pct <= 3.0 and x.jitter_ms == 50.0 for x in links.values())
    ordered = sorted(links, key=lambda p: (p[0] + p[1], p))
    assert [links[p].rtt_ms for p in ordered] == sorted(links[p].rtt_ms for p in ordered)
    assert spec.link(1, 0) == spec.link(0, 1)


def test_node_delays_make_the_nearest_node_lowest_on_average() -> None:
    spec = WanSpec.from_node_delays([40.0, 120.0, 10.0], jitter_ms=10.0)
    assert spec.link(0, 2).rtt_ms == 50.0 and spec.link(1, 2).rtt_ms == 130.0
    assert spec.mean_rtt(2, [0, 1, 2]) == 90.0
    assert spec.mean_rtt(1, [0, 1, 2]) == 145.0
    assert min(range(3), key=lambda i: spec.mean_rtt(i, [0, 1, 2])) == 2


def _packet(src: str, dst: str, sport: int, seq: int) -> bytes:
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, 0, 0, 64, socket.IPPROTO_TCP, 0,
                         socket.inet_aton(src), socket.inet_aton(dst))
    return header + struct.pack("!HHI", sport, 80, seq) + bytes(12)


def test_relay_holds_each_packet_and_keeps_every_connection_in_order() -> None:
    a, b = "10.0.0.1", "10.0.0.2"
    rtt_s, jitter_s = 0.04, 0.03

    async def scenario() -> list[bytes]:
        loop = asyncio.get_running_loop()
        a_in, a_feed = os.pipe()  # what node a "sends" into its TUN
        b_out, b_write = os.pipe()  # what the relay writes into node b's TUN
        os.set_blocking(a_in, False)
        link = LinkState(rtt_s / 2, jitter_s)
        relay = Relay({(a, b): link, (b, a): link}, {a: a_feed, b: b_write},
                      random.Random(1), loop)
        sent = []
        for seq in range(40):
            for sport in (1000, 2000):  # two connections
                os.write(a_feed, _packet(a, b, sport, seq))
                relay.receive(a_in)
                sent.append(loop.time())
        relay.receive(a_in)  # nothing left: a no-op
        releases = [q[0][0] - t for q, t in zip(relay.queues.values(), sent[:2], strict=True)]
        assert all(r >= rtt_s / 2 - jitter_s / 2 - 0.001 for r in releases), releases
        assert all(r <= rtt_s / 2 + jitter_s / 2 + 0.001 for r in releases), releases
        os.write(a_feed, _packet(a, "10.0.0.9", 1, 0))
        relay.receive(a_in)
        await asyncio.sleep(rtt_s / 2 + jitter_s + 0.2)
        assert relay.unroutable == 1 and link.packets == 80 and not relay.queues
        data = os.read(b_out, 1 << 16)
        for fd in (a_in, a_feed, b_out, b_write):
            os.close(fd)
        return [data[i:i + 40] for i in range(0, len(data), 40)]

    received = asyncio.run(scenario())
    assert len(received) == 80
    for sport in (1000, 2000):
        seqs = [struct.unpack("!HHI", p[20:28])[2] for p in received
                if struct.unpack("!H", p[20:22])[0] == sport]
        assert seqs == list(range(40)), f"connection {sport} reordered: {seqs}"
