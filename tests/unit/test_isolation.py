"""`--isolation process` on real child processes: a tiny ClientApp written to tmp_path, asked
to answer, raise, sys.exit, os._exit, be SIGKILLed, blow its memory cap or hang. Each failure
is an error reply with Flower's CLIENT_APP_RAISED_EXCEPTION and a one-line reason, this
process (the node) lives on, and the next call is answered (by a fresh child where the last
one is gone); context.state lives in the child across calls."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from click.testing import CliRunner
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict

from raftfl.cli import cli
from raftfl.core.status import Published
from raftfl.flower.codec import decode_message, encode_message
from raftfl.flower.grid import CLIENT_APP_RAISED_EXCEPTION, Stamp
from raftfl.flower.identity import adopt_server_identity
from raftfl.flower.isolation import ProcessClientApp, describe_exit

CLIENT = '''
import os, signal, sys, time
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


@app.query()
def query(msg, context):
    calls = int(context.state["calls"]["n"]) + 1 if "calls" in context.state else 1
    context.state["calls"] = ConfigRecord({"n": calls})
    do = msg.content["config"]["do"]
    if do == "raise":
        raise ValueError("bad input")
    if do == "exit":
        sys.exit(3)
    if do == "osexit":
        os._exit(7)
    if do == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if do == "oom":
        hog = bytearray(1 << 30)  # 1 GiB, above the test's cap
    if do == "hang":
        time.sleep(3600)
    return Message(RecordDict({"metrics": MetricRecord({
        "calls": calls, "pid": os.getpid(),
        "partition": context.node_config["partition-id"],
        "lr": context.run_config.get("lr", -1.0)})}), reply_to=msg)
'''
PYPROJECT = '''
[project]
name = "tinyapp"
[tool.flwr.app.components]
serverapp = "tinyapp.client_app:app"
clientapp = "tinyapp.client_app:app"
[tool.flwr.app.config]
lr = 0.5
'''
CAP_MB = 500  # the child's interpreter, Flower and numpy map about 200 MB


@pytest.fixture()
def app_dir(tmp_path: Path) -> Path:
    (tmp_path / "tinyapp").mkdir()
    (tmp_path / "tinyapp" / "__init__.py").write_text("")
    (tmp_path / "tinyapp" / "client_app.py").write_text(CLIENT)
    (tmp_path / "pyproject.toml").write_text(PYPROJECT)
    return tmp_path


@pytest.fixture()
def context() -> Context:
    return Context(run_id=1, node_id=7, node_config={"partition-id": 2},
                   state=RecordDict(), run_config={"lr": 0.5})


def ask(app: ProcessClientApp, context: Context, do: str, ttl: float = 30.0) -> Message:
    adopt_server_identity(1)  # this test plays the aggregator, as RaftGrid does
    sent = Message(RecordDict({"config": ConfigRecord({"do": do})}), dst_node_id=7,
                   message_type="query", ttl=ttl)
    message = decode_message(encode_message(sent, None, {"message_id": f"m-{do}", "run_id": 1}))[0]
    reply = app(message, context)
    assert reply.metadata.reply_to_message_id == f"m-{do}"
    return reply


def ok(reply: Message) -> dict[str, float]:
    assert not reply.has_error(), reply.error
    return dict(reply.content["metrics"])


def failed(reply: Message) -> str:
    assert reply.has_error()
    assert reply.error.code == CLIENT_APP_RAISED_EXCEPTION
    assert "\n" not in reply.error.reason
    return reply.error.reason


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_replies_come_from_one_child_whose_state_persists(app_dir: Path,
                                                          context: Context) -> None:
    app = ProcessClientApp(app_dir)
    try:
        first, second = ok(ask(app, context, "ok")), ok(ask(app, context, "ok"))
        assert first["pid"] == second["pid"] != os.getpid()
        assert (first["calls"], second["calls"]) == (1, 2)  # context.state in the child
        assert second["partition"] == 2 and second["lr"] == 0.5  # the node's Context
        assert len(context.state) == 0  # the node's copy is untouched
    finally:
        app.close()
    assert gone(int(first["pid"])), "close() must kill the child"


def test_a_raise_is_an_error_reply_and_the_child_lives_on(app_dir: Path,
                                                          context: Context) -> None:
    app = ProcessClientApp(app_dir)
    try:
        before = ok(ask(app, context, "ok"))
        assert failed(ask(app, context, "raise")) == "<class 'ValueError'>:<'bad input'>"
        after = ok(ask(app, context, "ok"))
        assert after["pid"] == before["pid"] and after["calls"] == 3
    finally:
        app.close()


@pytest.mark.parametrize(("do", "reason"), [
    ("exit", "<class 'SystemExit'>:<'3'>"),
    ("osexit", "ClientApp process died: exited with code 7"),
    ("kill", "ClientApp process died: killed by SIGKILL (memory limit?)"),
    ("oom", f"ClientApp process ran out of memory (--isolation-memory-mb {CAP_MB}): "
            "MemoryError"),
])
def test_a_dead_child_is_an_error_reply_and_a_fresh_child_answers_next(
        app_dir: Path, context: Context, do: str, reason: str) -> None:
    app = ProcessClientApp(app_dir, memory_mb=CAP_MB)
    try:
        before = ok(ask(app, context, "ok"))
        assert failed(ask(app, context, do)) == reason
        assert gone(int(before["pid"]))
        after = ok(ask(app, context, "ok"))
        assert after["pid"] != before["pid"]
        assert after["calls"] == 1  # a fresh child starts with a fresh state
    finally:
        app.close()


def test_a_hang_past_the_deadline_is_killed(app_dir: Path, context: Context) -> None:
    app = ProcessClientApp(app_dir)
    try:
        before = ok(ask(app, context, "ok"))
        started = time.monotonic()
        assert failed(ask(app, context, "hang", ttl=1.5)) == \
            "ClientApp process missed its 1.5s deadline: killed"
        assert 1.4 < time.monotonic() - started < 6
        assert gone(int(before["pid"]))
        assert ok(ask(app, context, "ok"))["pid"] != before["pid"]
    finally:
        app.close()


def test_the_nodes_stop_ends_a_call_in_flight(app_dir: Path, context: Context) -> None:
    stop = threading.Event()
    app = ProcessClientApp(app_dir, stop=stop)
    try:
        pid = ok(ask(app, context, "ok"))["pid"]
        threading.Timer(0.5, stop.set).start()
        started = time.monotonic()
        assert failed(ask(app, context, "hang")) == \
            "ClientApp process stopped: the node is stopping"
        assert time.monotonic() - started < 5 and gone(int(pid))
    finally:
        app.close()


def test_close_from_another_thread_ends_a_call_in_flight(app_dir: Path,
                                                         context: Context) -> None:
    app = ProcessClientApp(app_dir)
    pid = ok(ask(app, context, "ok"))["pid"]
    threading.Timer(0.5, app.close).start()
    assert "closed" in failed(ask(app, context, "hang"))
    assert gone(int(pid))
    assert "closed" in failed(ask(app, context, "ok"))  # closed for good: no new child


def test_an_app_that_cannot_load_in_the_child_is_an_error_reply(app_dir: Path,
                                                                context: Context) -> None:
    (app_dir / "tinyapp" / "client_app.py").write_text("raise ImportError('no torch here')\n")
    app = ProcessClientApp(app_dir)
    try:
        reason = failed(ask(app, context, "ok"))
        assert reason.startswith("ClientApp could not be loaded in its process: AppError: "
                                 "cannot import tinyapp.client_app"), reason
        assert "no torch here" in reason and app.pid is None
    finally:
        app.close()


@pytest.mark.parametrize(("code", "words"), [
    (0, "exited with code 0"), (3, "exited with code 3"), (-11, "killed by SIGSEGV"),
    (-9, "killed by SIGKILL (memory limit?)"), (-200, "killed by signal 200"),
    (None, "still running"),
])
def test_describe_exit(code: int | None, words: str) -> None:
    assert describe_exit(code) == words


NODE = '''
import sys
from flwr.app import ConfigRecord, Context, Message, RecordDict
from raftfl.flower.codec import decode_message, encode_message
from raftfl.flower.identity import adopt_server_identity
from raftfl.flower.isolation import ProcessClientApp

adopt_server_identity(1)
app = ProcessClientApp(sys.argv[1])
context = Context(run_id=1, node_id=7, node_config={"partition-id": 0}, state=RecordDict(),
                  run_config={"lr": 0.1})
for do in ("ok", "hang"):
    sent = Message(RecordDict({"config": ConfigRecord({"do": do})}), dst_node_id=7,
                   message_type="query")
    app(decode_message(encode_message(sent, None, {"message_id": do}))[0], context)
    print(app.pid, flush=True)
'''


def test_a_sigkilled_node_leaves_no_clientapp_process_behind(app_dir: Path) -> None:
    node = subprocess.Popen([sys.executable, "-c", NODE, str(app_dir)], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert node.stdout is not None
        child = int(node.stdout.readline())  # the child answered "ok" and now hangs
        assert not gone(child)
        node.kill()
        node.wait(10)
        deadline = time.monotonic() + 5
        while not gone(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert gone(child), "the ClientApp process outlived its node (PR_SET_PDEATHSIG)"
    finally:
        if node.poll() is None:
            node.kill()
            node.wait()


class _Started(Exception):
    pass


@pytest.mark.parametrize(("flags", "isolation", "memory_mb"), [
    ([], "thread", None),
    (["--isolation", "thread"], "thread", None),
    (["--isolation", "process"], "process", None),
    (["--isolation", "process", "--isolation-memory-mb", "6000"], "process", 6000),
])
def test_the_flags_reach_the_nodes_options(flags: list[str], isolation: str,
                                           memory_mb: int | None,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import raftfl.node.ha

    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.setenv(var, os.environ.get(var, "1"))  # node start sets them
    seen: dict[str, Any] = {}

    class FakeNode:
        published = Published()

        def __init__(self, opts: Any, hooks: Any) -> None:
            seen["opts"] = opts

        def run(self) -> int:
            raise _Started

    monkeypatch.setattr(raftfl.node.ha, "Node", FakeNode)
    result = CliRunner().invoke(cli, ["node", "start", "-s", "127.0.0.1:5000", "--insecure",
                                      *flags])
    assert isinstance(result.exception, _Started), result.output
    assert (seen["opts"].isolation, seen["opts"].isolation_memory_mb) == (isolation, memory_mb)


@pytest.mark.parametrize(("flags", "says"), [
    (["--isolation", "proces"], "'proces' is not one of 'thread', 'process'"),
    (["--isolation-memory-mb", "6000"], "give --isolation process too"),
    (["--isolation", "process", "--isolation-memory-mb", "50"], "50 is not in the range x>=100"),
])
def test_bad_isolation_flags_are_one_line_usage_errors(flags: list[str], says: str) -> None:
    result = CliRunner().invoke(cli, ["node", "start", "-s", "127.0.0.1:5000", *flags])
    assert result.exit_code == 2 and says in result.output, result.output


class _Store:
    """The aggregator key as the worker's admit reads it: term 5."""

    def get(self, key: str, serializable: bool = False) -> Any:
        return SimpleNamespace(key=key, create_revision=5)


def _worker(app_dir: Path, isolation: str) -> Any:
    from concurrent.futures import Future

    from raftfl.core.address import parse_address
    from raftfl.core.keys import Keys
    from raftfl.core.specs import ClusterConfig
    from raftfl.flower.app import load_app
    from raftfl.node.options import NodeOptions
    from raftfl.node.runs import RunApp
    from raftfl.node.shell import Shell, Voice
    from raftfl.node.worker import WorkerRole

    def in_thread(message: Message, context: Context) -> Message:
        return Message(RecordDict({"metrics": MetricRecord({"pid": os.getpid()})}),
                       reply_to=message)

    class Runs:
        def app(self, run_id: int) -> RunApp:
            loaded: Future[tuple[Any, Any]] = Future()
            loaded.set_result((None, in_thread))  # what the node imported itself
            return RunApp(run_id, None, load_app(app_dir), loaded)

    opts = NodeOptions(address=parse_address("127.0.0.1:5000"), isolation=isolation)
    shell = Shell(opts, Keys("default"), _Store(), Voice(opts.name, io.StringIO()))  # type: ignore[arg-type]
    return WorkerRole(shell, Runs(), ClusterConfig(rounds=1, nodes=[opts.name]), lambda: 1)


def _pid_from(worker: Any, run_id: int) -> int:
    adopt_server_identity(run_id)
    sent = Message(RecordDict({"config": ConfigRecord({"do": "ok"})}), dst_node_id=7,
                   message_type="query")
    payload = encode_message(sent, Stamp(run_id, 5).to_json(), {"message_id": f"r{run_id}",
                                                                 "run_id": run_id})
    return int(ok(decode_message(worker.handle(f"r{run_id}", payload))[0])["pid"])


def test_the_worker_runs_each_runs_clientapp_in_a_process_of_its_own(app_dir: Path) -> None:
    worker = _worker(app_dir, "process")
    try:
        first = _pid_from(worker, 1)
        assert first != os.getpid() and _pid_from(worker, 1) == first
        second = _pid_from(worker, 2)  # the next run: the previous child is killed
        assert second != first and gone(first) and not gone(second)
    finally:
        worker.close()
    assert gone(second)


def test_the_worker_keeps_the_clientapp_in_its_thread_by_default(app_dir: Path) -> None:
    assert _pid_from(_worker(app_dir, "thread"), 1) == os.getpid()
