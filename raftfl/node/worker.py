"""The worker role: run this node's ClientApp for whichever node holds the aggregator role.

A worker follows the role key, not a fixed address: when the role moves, the node calls
`follow` and the runner cuts its current connection and connects to the new holder (the
aggregator's own node included: it trains too). Before the user's ClientApp sees an
instruction, `admit` refuses one whose term is not the current one, or whose arrays are not
the base model the instruction names.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from raftfl.core.errors import RaftflError
from raftfl.core.specs import ClusterConfig
from raftfl.net.origin import origin
from raftfl.node import runapp
from raftfl.node.runs import Runs
from raftfl.node.shell import Shell, Voice

if TYPE_CHECKING:  # Flower is imported when the worker first trains, not at start-up
    from raftfl.flower.host import ClientAppHost

log = logging.getLogger(__name__)

RECONNECT_WAIT_S = 0.2


class WorkerRunner:
    """Keeps one fleet connection to the current aggregator, in a thread of its own."""

    def __init__(self, node_id: int, name: str, handle: Callable[[str, bytes], bytes]):
        self.node_id = node_id
        self.name = name
        self.handle = handle
        self._target: tuple[str, int] | None = None
        self._client: Any = None
        self._changed = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="worker", daemon=True)
        self._thread.start()

    def follow(self, address: str | None, term: int | None) -> None:
        target = (address, term) if address and term else None
        if target == self._target:
            return
        self._target = target
        self._changed.set()
        client = self._client
        if client is not None:
            client.abort()

    def stop(self) -> None:
        self._stop.set()
        self.follow(None, None)

    def join(self, timeout: float) -> bool:
        """Wait for the thread to end (a fit in flight finishes: torch aborts a process that
        exits while one of its ops runs); True if it has."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        from raftfl.flower.fleet import FleetClient, FleetError

        origin("run")
        while not self._stop.is_set():
            self._changed.clear()  # before reading the target: a later follow() sets it again
            target = self._target
            if target is None:
                self._changed.wait(1.0)
                continue
            client = self._client = FleetClient(target[0], self.node_id, self.name)
            if self._target != target:  # moved while we connected: start over
                continue
            try:
                client.run(self.handle)
            except FleetError as exc:
                log.info("worker: %s", str(exc).splitlines()[0][:160])
            except Exception:  # noqa: BLE001 - a bug here must not kill the worker thread
                log.exception("worker connection failed")
            finally:
                self._client = None
            self._changed.wait(RECONNECT_WAIT_S)


class WorkerRole:
    """This node's ClientApps, one run at a time, answering instructions in the worker thread.

    It owns what that thread changes (the ClientApp host, its own voice); it reads the
    node's active run but never writes the node's state.
    """

    def __init__(self, shell: Shell, runs: Runs, config: ClusterConfig,
                 active_run: Callable[[], int | None]):
        self.shell, self.runs, self.config, self.active_run = shell, runs, config, active_run
        self.say = Voice(shell.name, shell.say.out)  # this thread's own once-lines
        self._hosts: dict[int, ClientAppHost] = {}  # run -> its ClientApp host

    def handle(self, msg_id: str, payload: bytes) -> bytes:
        """One instruction for this node's ClientApp of the run it names. The run may be one
        this node's loop has not seen become active yet; an instruction for an earlier run,
        or one that cannot be read, goes to the current host, which refuses it."""
        from raftfl.flower.codec import CodecError, decode_message
        from raftfl.flower.grid import Stamp

        try:
            stamp = Stamp.from_json(decode_message(payload)[1])
        except CodecError:
            stamp = Stamp(0, 0)
        run_id = stamp.run_id
        current = next(iter(self._hosts), None)
        if run_id < max(current or 1, self.active_run() or 1):
            run_id = current or self.active_run() or 1
        if run_id not in self._hosts:
            self.close()  # one run at a time: the previous run's ClientApp process ends
            self._hosts = {run_id: self._client_host(run_id)}
        reply = self._hosts[run_id].handle(msg_id, payload)
        return self.shell.hooks.tamper(reply, stamp.round)

    def close(self) -> None:
        """End this node's ClientApp process, if it runs one (--isolation process): the run
        changed, or the node stops. In-thread ClientApps have nothing to end."""
        from raftfl.flower.isolation import ProcessClientApp

        for host in self._hosts.values():
            if isinstance(host.client_app, ProcessClientApp):
                host.client_app.close()

    def _client_host(self, run_id: int) -> ClientAppHost:
        """This node's ClientApp for run `run_id`; one that cannot be loaded answers every
        instruction with the reason, as a ClientApp that raised. With --isolation process
        the app loaded here only proves it loads: a child process of its own runs it."""
        from raftfl.flower.app import node_config
        from raftfl.flower.host import ClientAppHost
        from raftfl.flower.isolation import ProcessClientApp

        opts = self.shell.opts
        run_app = self.runs.app(run_id)
        try:
            _, client_app = run_app.apps.result()
        except Exception as exc:  # noqa: BLE001 - reported in each reply
            client_app = _Unusable(exc)
        else:
            if opts.isolation == "process":
                client_app = ProcessClientApp(run_app.flower_app.root,
                                              memory_mb=opts.isolation_memory_mb,
                                              stop=self.shell.stop, say=self.say)
        return ClientAppHost(
            client_app, run_id=run_id, node_id=runapp.node_id(opts.name),
            node_config=node_config(opts.node_config, self.config.shard_index(opts.name),
                                    len(self.config.nodes)),
            run_config=run_app.spec.run_config if run_app.spec else {}, admit=self._admit)

    def _admit(self, stamp: Any, message: Any) -> str | None:
        """Refuse an instruction from a term that is not the current one, or whose arrays
        are not the model it says the round starts from."""
        if (current := self._term(stamp.term)) != stamp.term:
            return f"term {stamp.term} is not the current term ({current})"
        if (refused := base_refusal(stamp, message)) is not None:
            return refused
        if stamp.round and message.metadata.message_type == "train":
            self.say(f"training round {stamp.round} for term {stamp.term}",
                     once=f"fit{stamp.term}:{stamp.round}")
            self.shell.hooks.hold("fit", stamp.round)
        if stamp.call:  # an own-loop ServerApp's grid call (flower/journal.py)
            self.shell.hooks.hold("call", stamp.call)
        return None

    def _term(self, expected: int) -> int | None:
        store, key = self.shell.store, self.shell.keys.aggregator

        def read(serializable: bool) -> int | None:
            kv = store.get(key, serializable=serializable)
            return kv.create_revision if kv else None

        return current_term(read, expected)


def current_term(read: Callable[[bool], int | None], expected: int) -> int | None:
    """The current term as `read(serializable)` gives it: from this node's member
    (serializable), and linearizably only when that answer would refuse `expected`. A member
    behind must not refuse a new term's first instruction (it has not applied the role key
    naming it yet); admitting on a stale answer costs at most a fit for a term that has
    ended, whose commit its fence refuses (a linearizable answer can be as stale a moment
    later). Each instruction used to cost a ReadIndex: a heartbeat round to every member."""
    current = read(True)
    return current if current == expected else read(False)


def base_refusal(stamp: Any, message: Any) -> str | None:
    """Why an instruction is refused when its arrays are not the base model its stamp names
    (None: they are, or it names none). Full nodes and edge workers (edge.py) both check."""
    from raftfl.flower.codec import arrays_sha256

    if stamp.base:
        arrays = message.content.array_records
        if len(arrays) == 1 and arrays_sha256(next(iter(arrays.values()))) != stamp.base:
            return f"the arrays are not base model {stamp.base[:12]}"
    return None


class _Unusable:
    """Stands in for a ClientApp whose run's app cannot be loaded: raises why, each time."""

    def __init__(self, error: BaseException):
        self.error = error

    def __call__(self, message: Any, context: Any) -> Any:
        raise RaftflError(f"this node cannot load the run's app: {self.error}")
