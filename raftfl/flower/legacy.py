"""Every Flower call raftfl makes lives here, so another backend (SuperLink/SuperNode) can
replace this one module.

We use Flower's legacy gRPC-bidi transport (the engine behind `start_server` /
`start_client`) but drive its pieces directly:
- `start_server` installs signal handlers (main thread only) and offers no way to stop it;
  a deposed aggregator must stop serving *at once*, so we start the gRPC server ourselves
  and keep its handle.
- `start_client` blocks on a stream that a frozen server never closes; we keep the client's
  channel so the node can cut it the moment the aggregator role moves.
Strategy code is guarded: an exception in a Flower callback would hang Flower's shutdown.
"""

from __future__ import annotations

import errno
import logging
import threading
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

log = logging.getLogger(__name__)
_patched = False
_channels: dict[int, Any] = {}  # thread id -> gRPC channel of that thread's client
_channels_lock = threading.Lock()


class RoundHooks(Protocol):
    """What the aggregator does at each step of a Flower round (implemented with etcd I/O)."""

    def start_round(self, num_available: Callable[[], int]) -> dict[str, Any] | None:
        """Wait for workers; record the round start. None means: run no more rounds."""

    def commit(self, weights: list[np.ndarray] | None, results: int, failures: int,
               num_examples: int) -> list[np.ndarray] | None:
        """Record results and commit the aggregate; returns the committed weights or None."""


def quiet_flower(verbose: bool = False) -> None:
    """Filter Flower's one-per-call deprecation warning once, and its INFO chatter."""
    global _patched
    if _patched:
        return
    _patched = True
    flwr_logger = logging.getLogger("flwr")
    flwr_logger.addFilter(lambda rec: "DEPRECATED" not in rec.getMessage())
    if not verbose:
        flwr_logger.setLevel(logging.WARNING)
        # A stopped server's open streams end in GrpcBridgeClosed tracebacks: expected here.
        logging.getLogger("grpc._server").setLevel(logging.CRITICAL)
    # Record each client thread's channel so `ClientSession.abort` can close it.
    from flwr.compat.client.grpc_client import connection

    original = connection.create_channel

    def tracked(*args: Any, **kwargs: Any) -> Any:
        channel = original(*args, **kwargs)
        with _channels_lock:
            _channels[threading.get_ident()] = channel
        return channel

    connection.create_channel = tracked


class ServerSession:
    """A Flower server for the rounds that remain, stoppable from another thread."""

    def __init__(self, address: str, hooks: RoundHooks, initial: list[np.ndarray],
                 num_rounds: int, round_timeout: float):
        from flwr.server.server import Server
        from flwr.server.superlink.fleet.grpc_bidi.grpc_server import start_grpc_server

        quiet_flower()
        self.strategy = _make_strategy(hooks, initial)
        self.server = Server(client_manager=_client_manager(), strategy=self.strategy)
        # Flower >= 1.11 refuses a bound port with sys.exit(message), which no except catches.
        try:
            self.grpc_server = start_grpc_server(
                client_manager=self.server.client_manager(), server_address=address,
                keepalive_time_ms=2000)
        except SystemExit as exc:  # re-raise as OSError: Node._serve retries, then gives up
            raise OSError(errno.EADDRINUSE, f"Flower server on {address}: {exc.code}") from None
        self.num_rounds = num_rounds
        self.round_timeout = round_timeout
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="flower-server", daemon=True)

    def start(self) -> ServerSession:
        self.thread.start()
        return self

    def _run(self) -> None:
        try:
            self.server.fit(num_rounds=self.num_rounds, timeout=self.round_timeout)
            if not self.strategy.stopped:
                self.server.disconnect_all_clients(timeout=self.round_timeout)
        except BaseException as exc:  # noqa: BLE001 - reported by the node
            self.error = exc
            log.exception("flower server failed")
        finally:
            self.grpc_server.stop(grace=1)

    def stop(self) -> None:
        """Stop serving now: no more instructions go out, connections are cut."""
        self.strategy.stopped = True
        self.grpc_server.stop(grace=0)

    @property
    def running(self) -> bool:
        return self.thread.is_alive()


def _client_manager() -> Any:
    from flwr.server.client_manager import SimpleClientManager

    return SimpleClientManager()


def _make_strategy(hooks: RoundHooks, initial: list[np.ndarray]) -> Any:
    from flwr.common import FitIns, ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.server.strategy import FedAvg

    class FencedFedAvg(FedAvg):
        """FedAvg whose every step is recorded, fenced, in etcd through `hooks`.

        Global round numbers come from the replayed log, not from Flower's counter: a new
        aggregator's Flower starts again at 1.
        """

        stopped = False

        def configure_fit(self, server_round: int, parameters: Any, client_manager: Any) -> Any:
            if self.stopped:
                return []
            try:
                config = hooks.start_round(client_manager.num_available)
            except Exception:  # noqa: BLE001 - must not escape into Flower
                log.exception("round start failed")
                config = None
            if config is None:
                self.stopped = True
                return []
            ins = FitIns(parameters, config)
            return [(client, ins) for client in client_manager.all().values()]

        def aggregate_fit(self, server_round: int, results: Any, failures: Any) -> Any:
            if self.stopped:
                return None, {}
            try:
                params, _ = super().aggregate_fit(server_round, results, failures) if results \
                    else (None, {})
                weights = parameters_to_ndarrays(params) if params is not None else None
                examples = sum(res.num_examples for _, res in results)
                kept = hooks.commit(weights, len(results), len(failures), examples)
            except Exception:  # noqa: BLE001
                log.exception("aggregation failed")
                kept = None
            return (ndarrays_to_parameters(kept) if kept is not None else None), {}

        def configure_evaluate(self, *args: Any, **kwargs: Any) -> Any:
            return []  # evaluation is centralised, inside commit

        def evaluate(self, *args: Any, **kwargs: Any) -> Any:
            return None

    return FencedFedAvg(
        fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=1, min_evaluate_clients=0,
        min_available_clients=1, accept_failures=True,
        fit_metrics_aggregation_fn=lambda metrics: {},
        initial_parameters=ndarrays_to_parameters(initial))


class ClientSession:
    """One connection of a worker to one aggregator; `abort()` cuts it from any thread."""

    def __init__(self, address: str, fit: Callable[[list[np.ndarray], dict[str, Any]],
                                                    tuple[list[np.ndarray], int, dict[str, Any]]]):
        self.address = address
        self.fit = fit
        self._thread_id: int | None = None

    def run(self) -> None:
        """Serve fit instructions until the server disconnects; raises on connection loss."""
        from flwr.client import NumPyClient, start_client

        quiet_flower()
        session = self

        class Worker(NumPyClient):  # type: ignore[misc]
            def get_parameters(self, config: dict[str, Any]) -> list[np.ndarray]:
                return []

            def fit(self, parameters: list[np.ndarray], config: dict[str, Any]) -> Any:
                return session.fit(parameters, dict(config))

            def evaluate(self, parameters: list[np.ndarray], config: dict[str, Any]) -> Any:
                return 0.0, 0, {}

        self._thread_id = threading.get_ident()
        try:
            start_client(server_address=self.address, client=Worker().to_client(),
                         insecure=True)
        finally:
            with _channels_lock:
                _channels.pop(self._thread_id, None)

    def abort(self) -> None:
        with _channels_lock:
            channel = _channels.get(self._thread_id) if self._thread_id else None
        if channel is not None:
            channel.close()


def is_connection_error(exc: BaseException) -> bool:
    """True for the errors that mean 'the server went away' rather than a bug."""
    import grpc

    return isinstance(exc, grpc.RpcError | ConnectionError)
