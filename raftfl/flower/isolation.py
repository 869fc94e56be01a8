"""`--isolation process`: the user's ClientApp in a child process of the node.

Why: in-thread, a ClientApp that raises or calls `sys.exit` becomes an error reply, but one
that exhausts memory, crashes in native code or hangs takes the node (its worker thread, its
lease, its etcd member) with it. `ProcessClientApp` is a ClientApp callable, so `ClientAppHost`
is unchanged: each call crosses to ONE long-lived child per run (`python -m
raftfl.flower.isolation`), which imports the app from its unpacked directory and keeps the
run's `context.state` across calls, as a thread would. (Flower's `flower-supernode
--isolation subprocess` starts a process per message and ships the state back; raftfl keeps
one child per run, so torch and the data are loaded once.)

The channel is a pair of pipes beside the child's stdout and stderr (the app's prints and
tracebacks go to the node's log), carrying frames `uint64-LE length | kind | body`. Messages
cross as raftfl's codec bytes, never pickled; the Context's configs as JSON. Kinds: parent ->
child `S` setup (JSON), `M` a message; child -> parent `R` ready, `M` the reply, `E` an error
reply (the app raised; the child lives on), `X` an error reply after which the child exits
(the app called sys.exit, ran out of memory, or could not be imported).

A child that dies (exit, signal, the kernel's OOM killer) or misses the call's deadline (the
instruction's TTL, at most an hour, Flower's strategy timeout) becomes an error reply with
Flower's CLIENT_APP_RAISED_EXCEPTION and a one-line reason; the next call starts a fresh
child. `memory_mb` caps the child's address space (RLIMIT_AS), so a runaway allocation fails
in the child (MemoryError) instead of drawing the OOM killer onto the node. The child is
killed by PID on `close()` (the run changed), when the node's stop event is set during a
call, at the node's exit, and by the kernel if the thread that started it ends
(PR_SET_PDEATHSIG), so a SIGKILLed node leaves no orphan training on.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import select
import signal
import struct
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flwr.app import Context, Error, Message, RecordDict

from raftfl.flower.codec import CodecError, decode_message, encode_message
from raftfl.flower.grid import CLIENT_APP_RAISED_EXCEPTION

log = logging.getLogger(__name__)

DEFAULT_CALL_S = 3600.0  # a call's deadline when the TTL says more (Flower's strategy timeout)
POLL_S = 0.2  # how often a waiting call looks at the node's stop event
REAP_S = 5.0  # how long to wait for a killed child's exit status
MAX_FRAME = 1 << 36  # 64 GiB: a length beyond this is a broken channel, not a model
_LEN = struct.Struct("<Q")
CLOSED = "ClientApp process closed: the run changed or the node stops"
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


class ChannelClosed(Exception):
    """The child's end of the pipe is gone (it exited or was killed)."""


class DeadlineMissed(Exception):
    """The child did not answer in time."""


class Stopping(Exception):
    """The node is stopping: a call in flight is abandoned."""


class _Refused(Exception):
    """The child could not set up (the app failed to import): its reason is the reply."""


# ---------------------------------------------------------------- the node's side

class ProcessClientApp:
    """A ClientApp callable that runs the app in the Flower app directory `root` in a child.

    `memory_mb` caps the child's address space; `stop` (the node's stop event) ends a call in
    flight; `max_call_s` bounds every call's deadline (else the instruction's TTL, counted
    from its arrival); `say` gets a line when a child starts or goes (else they are logged)."""

    def __init__(self, root: Path, *, memory_mb: int | None = None,
                 stop: threading.Event | None = None, max_call_s: float = DEFAULT_CALL_S,
                 say: Callable[[str], None] | None = None):
        self.root, self.memory_mb, self.max_call_s = Path(root), memory_mb, max_call_s
        self.stop = stop or threading.Event()
        self.say = say
        self._child: _Child | None = None
        self._closed = False
        self._lock = threading.Lock()  # one call at a time; close() may come from another thread
        _LIVE.add(self)

    @property
    def pid(self) -> int | None:
        """The live child's PID (None between children)."""
        child = self._child
        return child.proc.pid if child is not None else None

    def __call__(self, message: Message, context: Context) -> Message:
        budget = self._budget(message)
        deadline = time.monotonic() + budget
        with self._lock:
            try:
                if self._closed:
                    return _error(message, CLOSED)
                child = self._child or self._spawn(context, deadline)
                kind, body = child.call(b"M", encode_message(message), deadline, self.stop)
                if kind == b"M":
                    return decode_message(body)[0]
                if kind not in (b"E", b"X"):
                    raise CodecError(f"unknown reply kind {kind!r}")
                reason = body.decode(errors="replace")
                if kind == b"X":  # the child exits after this answer
                    self._reap(reason)
                return _error(message, reason)
            except _Refused as exc:
                return _error(message, str(exc))
            except ChannelClosed:
                return _error(message, self._reap(CLOSED if self._closed else None))
            except DeadlineMissed:
                return _error(message, self._reap(
                    f"ClientApp process missed its {budget:g}s deadline: killed", kill=True))
            except Stopping:
                return _error(message, self._reap(
                    "ClientApp process stopped: the node is stopping", kill=True))
            except (CodecError, OSError) as exc:
                return _error(message, self._reap(
                    f"ClientApp process channel failed: {exc}".splitlines()[0], kill=True))

    def close(self) -> None:
        """Kill the child by PID (the run changed, or the node stops); from any thread."""
        self._closed = True
        child = self._child
        if child is not None:
            child.kill()
        with self._lock:  # a call in flight sees its channel close and returns first
            self._reap(None, kill=True, quiet=True)
        _LIVE.discard(self)

    def _budget(self, message: Message) -> float:
        ttl = message.metadata.ttl
        return min(ttl, self.max_call_s) if ttl > 0 else self.max_call_s

    def _spawn(self, context: Context, deadline: float) -> _Child:
        setup = {"root": str(self.root), "run_id": context.run_id, "node_id": context.node_id,
                 "node_config": dict(context.node_config),
                 "run_config": dict(context.run_config), "memory_mb": self.memory_mb}
        self._child = child = _Child.start()
        kind, body = child.call(b"S", json.dumps(setup).encode(), deadline, self.stop)
        if kind != b"R":
            raise _Refused(self._reap(body.decode(errors="replace")))
        self._note(f"ClientApp of run {context.run_id} in process {child.proc.pid} "
                   "(--isolation process)", logging.INFO)
        return child

    def _reap(self, reason: str | None, *, kill: bool = False, quiet: bool = False) -> str:
        """End the current child (if any) and say why it is gone: `reason`, or how it died."""
        child, self._child = self._child, None
        if child is None:
            return reason or "ClientApp process died"
        if kill:
            child.kill()
        code = child.end()
        reason = reason or f"ClientApp process died: {describe_exit(code)}"
        if not quiet:
            self._note(f"{reason} (pid {child.proc.pid})", logging.WARNING)
        return reason

    def _note(self, text: str, level: int) -> None:
        if self.say is not None:
            self.say(text)
        else:
            log.log(level, "%s", text)


def describe_exit(code: int | None) -> str:
    """A child's exit status in words (a signal's name; SIGKILL hints at the OOM killer)."""
    if code is None:
        return "still running"
    if code >= 0:
        return f"exited with code {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    return f"killed by {name}" + (" (memory limit?)" if -code == signal.SIGKILL else "")


def _error(message: Message, reason: str) -> Message:
    return Message(Error(CLIENT_APP_RAISED_EXCEPTION, reason), reply_to=message)


class _Child:
    """One child process and the parent's ends of its two pipes."""

    def __init__(self, proc: subprocess.Popen[bytes], to_child: int, from_child: int):
        self.proc, self.to_child, self.from_child = proc, to_child, from_child

    @classmethod
    def start(cls) -> _Child:
        down_r, down_w = os.pipe()  # parent -> child
        up_r, up_w = os.pipe()  # child -> parent
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "raftfl.flower.isolation", str(os.getpid()),
                 str(down_r), str(up_w)],
                pass_fds=(down_r, up_w), stdin=subprocess.DEVNULL)
        except OSError:
            for fd in (down_r, down_w, up_r, up_w):
                os.close(fd)
            raise
        os.close(down_r)
        os.close(up_w)
        for fd in (down_w, up_r):
            os.set_blocking(fd, False)
        return cls(proc, down_w, up_r)

    def call(self, kind: bytes, body: bytes, deadline: float,
             stop: threading.Event) -> tuple[bytes, bytes]:
        """Send one frame and wait for the answer by `deadline`."""
        self._send(_LEN.pack(len(body) + 1) + kind + body, deadline, stop)
        head = self._recv(_LEN.size, deadline, stop)
        (size,) = _LEN.unpack(head)
        if not 1 <= size <= MAX_FRAME:
            raise CodecError(f"frame length {size}")
        frame = self._recv(size, deadline, stop)
        return frame[:1], frame[1:]

    def _wait(self, fd: int, write: bool, deadline: float, stop: threading.Event) -> None:
        while True:
            if stop.is_set():
                raise Stopping()
            left = deadline - time.monotonic()
            if left <= 0:
                raise DeadlineMissed()
            ready = select.select([], [fd], [], min(left, POLL_S)) if write else \
                select.select([fd], [], [], min(left, POLL_S))
            if any(ready):
                return

    def _send(self, data: bytes, deadline: float, stop: threading.Event) -> None:
        view = memoryview(data)
        while view:
            self._wait(self.to_child, True, deadline, stop)
            try:
                view = view[os.write(self.to_child, view):]
            except BlockingIOError:
                continue
            except BrokenPipeError:
                raise ChannelClosed() from None

    def _recv(self, size: int, deadline: float, stop: threading.Event) -> bytes:
        chunks: list[bytes] = []
        while size:
            self._wait(self.from_child, False, deadline, stop)
            try:
                chunk = os.read(self.from_child, min(size, 1 << 20))
            except BlockingIOError:
                continue
            if not chunk:
                raise ChannelClosed()
            chunks.append(chunk)
            size -= len(chunk)
        return b"".join(chunks)

    def kill(self) -> None:
        """SIGKILL the child by PID (ours: we started it and have not reaped it yet)."""
        if self.proc.poll() is None:
            try:
                self.proc.kill()
            except ProcessLookupError:
                pass

    def end(self) -> int | None:
        """The child's exit status: it is given REAP_S to exit on its own (it may be writing
        its last words), then killed; the pipes are closed."""
        for fd in (self.to_child, self.from_child):
            try:
                os.close(fd)
            except OSError:
                pass
        try:
            return self.proc.wait(REAP_S)
        except subprocess.TimeoutExpired:
            self.kill()
            return self.proc.wait()


_LIVE: weakref.WeakSet[ProcessClientApp] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    """The node is exiting: no ClientApp child outlives it."""
    for app in list(_LIVE):
        child = app._child
        if child is not None:
            child.kill()


# ---------------------------------------------------------------- the child's side

def _die_with_parent(parent: int) -> None:
    """Ask Linux to SIGKILL this process when the thread that started it ends (the node's
    worker thread, or the whole node); then check the parent is still the one we had."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the closed pipe still ends the child
        pass
    if os.getppid() != parent:
        os._exit(0)


def _read_exact(fd: int, size: int) -> bytes | None:
    chunks: list[bytes] = []
    while size:
        chunk = os.read(fd, min(size, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _read_frame(fd: int) -> tuple[bytes, bytes] | None:
    head = _read_exact(fd, _LEN.size)
    if head is None:
        return None
    frame = _read_exact(fd, _LEN.unpack(head)[0])
    return None if not frame else (frame[:1], frame[1:])


def _write_frame(fd: int, kind: bytes, body: bytes) -> None:
    view = memoryview(_LEN.pack(len(body) + 1) + kind + body)
    while view:
        view = view[os.write(fd, view):]


def _load(setup: dict[str, Any]) -> tuple[Any, Context]:
    """The app and its Context, as the node would build them in-thread."""
    from raftfl.flower.app import load_app

    if setup.get("memory_mb"):
        import resource

        cap = int(setup["memory_mb"]) << 20
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    app = load_app(setup["root"]).load_client_app()
    if "torch" in sys.modules:  # one torch thread per node, as raftfl.node.runs sets it
        sys.modules["torch"].set_num_threads(int(os.environ.get("RAFTFL_TORCH_THREADS", "1")))
    context = Context(run_id=setup["run_id"], node_id=setup["node_id"],
                      node_config=setup["node_config"], state=RecordDict(),
                      run_config=setup["run_config"])
    return app, context


def _answer(app: Any, context: Context, body: bytes, memory_mb: int | None) -> tuple[bytes, bytes]:
    """One call: (kind, body) of the reply frame."""
    import traceback

    message, _ = decode_message(body)
    try:
        reply = app(message, context)
        if not isinstance(reply, Message):
            raise TypeError(f"the ClientApp returned {type(reply).__name__}, not a Message")
        return b"M", encode_message(reply)
    except MemoryError as exc:  # the heap is in doubt: answer, then make way for a fresh child
        cap = f" (--isolation-memory-mb {memory_mb})" if memory_mb else ""
        return b"X", f"ClientApp process ran out of memory{cap}: {type(exc).__name__}".encode()
    except SystemExit as exc:  # the app asked its process to end: answer as a thread would
        traceback.print_exc()
        return b"X", f"{type(exc)}:<'{exc}'>".encode()
    except Exception as exc:  # noqa: BLE001 - reported as Flower does; the child lives on
        traceback.print_exc()
        return b"E", f"{type(exc)}:<'{exc}'>".encode()


def main(argv: list[str]) -> int:
    parent, rfd, wfd = (int(a) for a in argv)
    _die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C is the node's to handle
    first = _read_frame(rfd)
    if first is None or first[0] != b"S":
        return 2
    setup = json.loads(first[1])
    try:
        app, context = _load(setup)
    except BaseException as exc:  # noqa: BLE001 - the reason is the parent's reply
        _write_frame(wfd, b"X", f"ClientApp could not be loaded in its process: "
                                f"{type(exc).__name__}: {exc}".splitlines()[0].encode())
        return 1
    _write_frame(wfd, b"R", b"")
    while (frame := _read_frame(rfd)) is not None:
        kind, body = _answer(app, context, frame[1], setup.get("memory_mb"))
        _write_frame(wfd, kind, body)
        if kind == b"X":
            return 1
    return 0  # the node closed the channel


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
