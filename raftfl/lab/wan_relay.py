"""The WAN lab's delay stage: a user-space packet relay between the nodes' TUN devices.

This kernel has no netem, so delay lives in user space. A TCP relay (accept, then forward
chunks late) was the first idea, but it answers every connection attempt itself: a connect to
a dead host would succeed, and a connect-timed probe (the latency prober's TCP fallback, the
followers' holder probes for early takeover) would see no latency at all. Relaying *packets*
instead keeps TCP end to end: handshakes, retransmissions, refusals and ICMP echo all cross
the emulated link and take its delay.

Each node namespace routes its peers' addresses through a TUN device whose other end is a
file descriptor held here. Every IPv4 packet read from node i's TUN for node j is held for
one way of the link, `rtt/2 + U(-jitter/2, +jitter/2)` ms (so a round trip lies within
rtt ± jitter), then written into node j's TUN. Order is preserved per connection (5-tuple):
a packet never overtakes an earlier one of its flow, as on a real path. Loss is not done here
but by nftables in each namespace (see `wan.py`), so the kernel counts what it drops.

Run by `WanLab` as `python -m raftfl.lab.wan_relay CONFIG_JSON`: it creates the TUN devices
(they vanish when it exits), prints `ready`, and relays until its stdin closes or it gets
SIGTERM; then it prints one JSON line of per-link packet and byte counts.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import random
import signal
import socket
import struct
import sys
from collections import deque
from dataclasses import dataclass, field

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
MAX_PACKET = 65535


@dataclass
class LinkState:
    one_way_s: float
    jitter_s: float
    packets: int = 0
    bytes: int = 0


@dataclass
class Relay:
    """Holds packets per flow and releases them in order after the link's delay."""

    links: dict[tuple[str, str], LinkState]  # (src ip, dst ip) -> delay; both directions
    fds: dict[str, int]  # node ip -> its TUN fd
    rng: random.Random
    loop: asyncio.AbstractEventLoop
    queues: dict[tuple[object, ...], deque[tuple[float, bytes, int]]] = field(default_factory=dict)
    unroutable: int = 0
    late_sum_s: float = 0.0  # how much later than planned packets left, in all
    late_max_s: float = 0.0
    late_over_5ms: int = 0

    def receive(self, fd: int) -> None:
        try:
            packet = os.read(fd, MAX_PACKET)
        except BlockingIOError:
            return
        if len(packet) < 20 or packet[0] >> 4 != 4:
            return  # not IPv4 (router solicitations and the like): nothing to emulate
        src, dst = socket.inet_ntoa(packet[12:16]), socket.inet_ntoa(packet[16:20])
        link, out = self.links.get((src, dst)), self.fds.get(dst)
        if link is None or out is None:
            self.unroutable += 1
            return
        link.packets += 1
        link.bytes += len(packet)
        hold = max(0.0, link.one_way_s + self.rng.uniform(-link.jitter_s, link.jitter_s) / 2)
        flow = _flow(packet, src, dst)
        queue = self.queues.get(flow)
        release = self.loop.time() + hold
        if queue:
            release = max(release, queue[-1][0])  # never overtake the flow's previous packet
            queue.append((release, packet, out))
            return
        self.queues[flow] = deque([(release, packet, out)])
        self.loop.call_at(release, self.flush, flow)

    def flush(self, flow: tuple[object, ...]) -> None:
        queue = self.queues[flow]
        now = self.loop.time()
        while queue and queue[0][0] <= now + 0.0005:
            release, packet, out = queue.popleft()
            self._late(now - release)
            try:
                os.write(out, packet)
            except OSError:
                pass  # the destination's device is going away (teardown): a lost packet
        if queue:
            self.loop.call_at(queue[0][0], self.flush, flow)
        else:
            del self.queues[flow]

    def _late(self, seconds: float) -> None:
        """How much later than planned a packet left: the relay's own error (a busy CPU)."""
        self.late_sum_s += max(seconds, 0.0)
        self.late_max_s = max(self.late_max_s, seconds)
        self.late_over_5ms += seconds > 0.005

    def stats(self) -> dict[str, object]:
        sent = sum(st.packets for st in self.links.values())
        return {"links": [{"src": s, "dst": d, "packets": st.packets, "bytes": st.bytes}
                          for (s, d), st in sorted(self.links.items())],
                "unroutable": self.unroutable,
                "late_mean_ms": round(1000 * self.late_sum_s / max(sent, 1), 3),
                "late_max_ms": round(1000 * self.late_max_s, 1),
                "late_over_5ms": self.late_over_5ms}


def _flow(packet: bytes, src: str, dst: str) -> tuple[object, ...]:
    proto = packet[9]
    ihl = (packet[0] & 0x0F) * 4
    if proto in (socket.IPPROTO_TCP, socket.IPPROTO_UDP) and len(packet) >= ihl + 4:
        return (src, dst, proto, *struct.unpack("!HH", packet[ihl:ihl + 4]))
    return (src, dst, proto)


def open_tun(name: str) -> int:
    """Create TUN device `name` (no packet-info header) and return its fd."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    except OSError:
        os.close(fd)
        raise
    return fd


async def serve(config: dict[str, object]) -> Relay:
    loop = asyncio.get_running_loop()
    links: dict[tuple[str, str], LinkState] = {}
    for item in config["links"]:  # type: ignore[attr-defined]
        for a, b in ((item["a"], item["b"]), (item["b"], item["a"])):
            links[(a, b)] = LinkState(item["rtt_ms"] / 2000.0, item["jitter_ms"] / 1000.0)
    fds = {t["ip"]: open_tun(t["name"]) for t in config["tuns"]}  # type: ignore[attr-defined]
    relay = Relay(links, fds, random.Random(int(config.get("seed", 0))), loop)  # type: ignore[call-overload]
    for fd in fds.values():
        loop.add_reader(fd, relay.receive, fd)
    done = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, done.set)
    loop.add_reader(sys.stdin.fileno(), lambda: done.set() if not os.read(0, 4096) else None)
    print("ready", flush=True)
    await done.wait()
    for fd in fds.values():
        loop.remove_reader(fd)
        os.close(fd)
    return relay


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m raftfl.lab.wan_relay CONFIG_JSON", file=sys.stderr)
        return 2
    try:
        relay = asyncio.run(serve(json.loads(argv[0])))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"wan relay: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(relay.stats()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
