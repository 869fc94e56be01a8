"""Every etcd request this process sends, counted by origin and kind (raftfl/net/origin.py).

Why at the gRPC channel: one `Store` call can be several requests (python-etcd3's `status()`
is a Status and a MemberList; a retry is another request), and some calls bypass `Store.call`
(a member of its own, a raw Cluster stub). An interceptor on each channel sees each request
exactly once, in the thread that makes it. Watch streams are opened by python-etcd3's own
thread, so the channel leaves them out and `Store.watch` counts each watch it creates.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

from raftfl.net.origin import count

_WRITES = {"Put", "DeleteRange", "Txn", "Compact"}
WATCH_METHOD = "/etcdserverpb.Watch/Watch"


def kind_of(method: str, request: Any = None) -> str | None:
    """The kind of request a gRPC method path is (None: not counted here, a watch stream);
    a Range is a `local_read` when its `request` asks for a serializable read."""
    service, _, name = method.rpartition("/")
    if method == WATCH_METHOD:
        return None
    if service.endswith(".KV"):
        if name in _WRITES:
            return "write"
        return "local_read" if getattr(request, "serializable", False) else "read"
    if service.endswith(".Lease"):
        return "lease"
    return "cluster"  # Cluster, Maintenance, Auth


class CountingInterceptor(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                          grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Counts a request, then makes it unchanged."""

    @staticmethod
    def _count(details: grpc.ClientCallDetails, request: Any = None) -> None:
        method = details.method
        kind = kind_of(method.decode() if isinstance(method, bytes) else method, request)
        if kind is not None:
            count(kind)

    def intercept_unary_unary(self, continuation: Callable[..., Any],
                              client_call_details: grpc.ClientCallDetails, request: Any) -> Any:
        self._count(client_call_details, request)
        return continuation(client_call_details, request)

    def intercept_unary_stream(self, continuation: Callable[..., Any],
                               client_call_details: grpc.ClientCallDetails, request: Any) -> Any:
        self._count(client_call_details)
        return continuation(client_call_details, request)

    def intercept_stream_unary(self, continuation: Callable[..., Any],
                               client_call_details: grpc.ClientCallDetails,
                               request_iterator: Any) -> Any:
        self._count(client_call_details)
        return continuation(client_call_details, request_iterator)

    def intercept_stream_stream(self, continuation: Callable[..., Any],
                                client_call_details: grpc.ClientCallDetails,
                                request_iterator: Any) -> Any:
        self._count(client_call_details)
        return continuation(client_call_details, request_iterator)


INTERCEPTOR = CountingInterceptor()


def counted(channel: grpc.Channel) -> grpc.Channel:
    """`channel`, with every request made on it counted."""
    return grpc.intercept_channel(channel, INTERCEPTOR)
