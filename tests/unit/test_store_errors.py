"""`Store`'s one-line EtcdUnavailable names what the last attempt met: gRPC's status and
details under python-etcd3's exception, which alone ("ConnectionFailedError") does not say
whether no address answered, TLS failed or the member had no leader."""

from __future__ import annotations

import etcd3
import grpc
import pytest

from raftfl.etcd.store import EtcdUnavailable, Store, _why


class _Rpc(grpc.RpcError):
    def __init__(self, details: str) -> None:
        self._details = details

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return self._details


def _wrapped(cause: BaseException) -> BaseException:
    try:
        try:
            raise cause
        except BaseException as exc:
            raise etcd3.exceptions.ConnectionFailedError from exc
    except BaseException as exc:  # noqa: BLE001 - the chained exception itself is the value
        return exc


WHY = [
    ("python-etcd3 over gRPC", _wrapped(_Rpc("failed to connect to all addresses\nmore")),
     "ConnectionFailedError (UNAVAILABLE: failed to connect to all addresses)"),
    ("a raw gRPC error", _Rpc("etcdserver: leader changed"),
     "_Rpc (UNAVAILABLE: etcdserver: leader changed)"),
    ("a message of its own", ValueError("bad\nsecond line"), "ValueError: bad"),
    ("no message", TimeoutError(), "TimeoutError"),
    ("no attempt at all", None, "no attempt"),
]


@pytest.mark.parametrize(("exc", "said"), [(e, s) for _, e, s in WHY], ids=[w[0] for w in WHY])
def test_why_names_the_last_attempts_error(exc: BaseException | None, said: str) -> None:
    assert _why(exc) == said


def test_an_unreachable_endpoint_is_one_line_naming_the_endpoint() -> None:
    store = Store(["127.0.0.1:2"], timeout=0.5, retry_for=1.0)  # nothing listens on port 2
    with pytest.raises(EtcdUnavailable) as err:
        store.get("k")
    store.close()
    prefix, _, why = str(err.value).partition("for 1s: ")
    assert prefix == "etcd unreachable at 127.0.0.1:2 " and why and "\n" not in why
