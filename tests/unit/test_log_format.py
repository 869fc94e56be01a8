"""`--log-format json`: a node's lines and its logging records as one JSON object per line
(no etcd, no node process)."""

from __future__ import annotations

import io
import json
import logging
import sys
import warnings
from collections.abc import Iterator
from dataclasses import fields
from datetime import datetime

import pytest

from raftfl.cli import logs
from raftfl.core.status import NodeStatus
from raftfl.node.shell import LineContext, Voice, text_line

pytestmark = pytest.mark.unit

KEYS = {"time", "level", "node", "term", "run", "round", "event"}


@pytest.fixture(autouse=True)
def restore_lines() -> Iterator[None]:
    """No node's context registered (other tests may have left theirs); afterwards the
    process's line format, contexts and logging as they were."""
    root = logging.getLogger()
    flower = logging.getLogger("flwr")
    saved = (Voice.line_format, dict(Voice.contexts), list(root.handlers),
             [h.formatter for h in root.handlers], list(flower.handlers))
    Voice.contexts.clear()
    yield
    Voice.line_format, contexts, handlers, formatters, flower_handlers = saved
    Voice.contexts.clear()
    Voice.contexts.update(contexts)
    root.handlers[:] = handlers
    for handler, formatter in zip(handlers, formatters, strict=True):
        handler.setFormatter(formatter)
    flower.handlers[:] = flower_handlers
    logging.captureWarnings(False)


def _time(line: dict[str, object]) -> datetime:
    stamp = str(line["time"])
    assert stamp.endswith("Z")
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def test_a_line_of_a_node_that_said_nothing_about_where_it_stands() -> None:
    line = json.loads(logs.json_line("127.0.0.1:5000", "etcd healthy", at=0.25))
    assert line == {"time": "1970-01-01T00:00:00.250Z", "level": "info", "node": "127.0.0.1:5000",
                    "term": None, "run": None, "round": None, "event": "etcd healthy"}
    assert list(line) == ["time", "level", "node", "term", "run", "round", "event"]


def test_a_line_carries_the_context_its_node_registered() -> None:
    Voice.contexts["n:1"] = lambda: LineContext(term=121, run=1, round=2)
    line = json.loads(logs.json_line("n:1", 'round 2 started: "quoted" ünïcødé'))
    assert (line["term"], line["run"], line["round"]) == (121, 1, 2)
    assert line["event"] == 'round 2 started: "quoted" ünïcødé'
    assert json.loads(logs.json_line("n:2", "x"))["term"] is None  # another node's is not ours


def test_voice_writes_text_by_default_and_json_when_the_process_says() -> None:
    out = io.StringIO()
    voice = Voice("n:1", out)
    voice("hello")
    voice("once", once="k")
    voice("once", once="k")
    voice("round 1 committed: accuracy 0.271 (term 9)", event="round_committed")
    Voice.line_format = logs.json_line
    voice("hello\nworld")
    voice("round 2 committed: accuracy 0.417 (term 72)", event="round_committed")
    first, second, third, fourth, fifth = out.getvalue().splitlines()
    assert first.endswith(" [n:1] hello") and second.endswith(" [n:1] once")
    assert third.endswith(" [n:1] round 1 committed: accuracy 0.271 (term 9)")
    assert json.loads(fourth)["event"] == "hello\nworld"  # a newline stays inside its line
    told = json.loads(fifth)
    assert (told["event"], told["text"]) == ("round_committed",
                                             "round 2 committed: accuracy 0.417 (term 72)")


def test_logging_records_become_json_lines_with_their_level_and_logger() -> None:
    formatter = logs.JsonFormatter("n:1")
    record = logging.LogRecord("raftfl.node.ha", logging.WARNING, __file__, 1, "lease %s lost",
                               ("42",), None)
    line = json.loads(formatter.format(record))
    assert KEYS <= set(line)
    assert (line["level"], line["node"], line["event"], line["logger"]) == \
        ("warning", "n:1", "lease 42 lost", "raftfl.node.ha")
    assert abs(_time(line).timestamp() - record.created) < 0.001
    try:
        raise ValueError("boom")
    except ValueError:
        failed = logging.LogRecord("raftfl", logging.ERROR, __file__, 1, "cycle failed", (),
                                   sys.exc_info())
    line = json.loads(formatter.format(failed))
    assert line["level"] == "error" and "ValueError: boom" in line["error"]


def test_use_json_turns_the_process_lines_json_and_text_leaves_them() -> None:
    from flwr.common.logger import FLOWER_LOGGER, ConsoleHandler

    logs.use("text", "n:1")
    assert Voice.line_format is text_line
    stream = io.StringIO()
    logging.getLogger().handlers[:] = [logging.StreamHandler(stream)]
    logs.use("json", "n:1")
    assert Voice.line_format is logs.json_line
    assert not any(isinstance(h, ConsoleHandler) for h in FLOWER_LOGGER.handlers)
    logging.getLogger("raftfl.test").warning("from raftfl")
    FLOWER_LOGGER.warning("from flower")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("from warnings", UserWarning, stacklevel=1)
    lines = [json.loads(text) for text in stream.getvalue().splitlines()]
    assert [line["logger"] for line in lines] == ["raftfl.test", "flwr", "py.warnings"]
    assert all(KEYS <= set(line) and line["node"] == "n:1" for line in lines)


def _status(**where: object) -> NodeStatus:
    """A snapshot whose other fields do not matter here."""
    return NodeStatus(**{f.name: None for f in fields(NodeStatus)} | where)  # type: ignore[arg-type]


@pytest.mark.parametrize("status, context", [
    (None, LineContext()),
    (_status(term=None, run=None, last_round=0, rounds=None), LineContext()),
    (_status(term=6, run=None, last_round=0, rounds=None), LineContext(term=6)),
    (_status(term=6, run=1, last_round=0, rounds=None), LineContext(6, 1, 1)),
    (_status(term=121, run=1, last_round=1, rounds=3), LineContext(121, 1, 2)),
    (_status(term=121, run=1, last_round=3, rounds=3), LineContext(121, 1, 3)),
])
def test_lines_follow_the_snapshot_each_cycle_publishes(
        status: NodeStatus | None, context: LineContext) -> None:
    logs.follow("n:1", lambda: status)
    line = json.loads(logs.json_line("n:1", "x"))
    assert LineContext(line["term"], line["run"], line["round"]) == context
