"""How a node process's lines look: `--log-format text` (for people) or `json` (for log shippers).

With `json` every line is one JSON object with the same keys, whether it is the node's own line
(raftfl/node/shell.py's Voice, on stdout) or a Python logging record (raftfl's, Flower's,
warnings; on stderr):

    {"time": "2026-12-05T09:24:31.587Z", "level": "info", "node": "10.0.0.1:5000",
     "term": 6, "run": 1, "round": 2, "event": "round 2 started by 10.0.0.1:5000 with 3 workers"}

`term`, `run` and `round` say where the node's last HA cycle stood (`follow`), null until
its first. A line that tells a typed event has its name as `event` and the text as
`text`. Logging records add `logger` (and `error`, a traceback, when there is one).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from raftfl.node.shell import LineContext, Voice

if TYPE_CHECKING:
    from raftfl.core.status import NodeStatus

FORMATS = ("text", "json")


def iso_utc(at: float) -> str:
    """`at` (epoch seconds) in ISO 8601, UTC, to the millisecond."""
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def json_line(node: str, text: str, event: str | None = None, level: str = "info",
              at: float | None = None, **extra: Any) -> str:
    """One line as a JSON object: `event` is the typed event's name (the text follows as
    `text`) or else the text itself."""
    context = Voice.contexts.get(node, LineContext)()
    told = {"event": event, "text": text} if event else {"event": text}
    return json.dumps({"time": iso_utc(time.time() if at is None else at), "level": level,
                       "node": node, "term": context.term, "run": context.run,
                       "round": context.round, **told, **extra}, ensure_ascii=False)


class JsonFormatter(logging.Formatter):
    """Python logging records of the process of node `node`, as `json_line`s."""

    def __init__(self, node: str):
        super().__init__()
        self.node = node

    def format(self, record: logging.LogRecord) -> str:
        extra: dict[str, Any] = {"logger": record.name}
        if record.exc_info:
            extra["error"] = self.formatException(record.exc_info)
        return json_line(self.node, record.getMessage(), level=record.levelname.lower(),
                         at=record.created, **extra)


def use(log_format: str, node: str) -> None:
    """Make the lines of this process (that of node `node`) `log_format`; text leaves them be.

    For json: the Voice's lines, the root logger's handlers (Flower's records reach them too,
    its own colour console handler is dropped) and warnings (through logging)."""
    if log_format != "json":
        return
    from flwr.common.logger import FLOWER_LOGGER, ConsoleHandler

    Voice.line_format = json_line
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig()
    for handler in root.handlers:
        handler.setFormatter(JsonFormatter(node))
    for handler in list(FLOWER_LOGGER.handlers):
        if isinstance(handler, ConsoleHandler):
            FLOWER_LOGGER.removeHandler(handler)
    logging.captureWarnings(True)


def follow(node: str, status: Callable[[], NodeStatus | None]) -> None:
    """Lines of `node` carry where its HA loop last stood (`status`, the snapshot each cycle
    publishes): the aggregator's term, the active run and the round it is at (the one after
    the last committed; the last once all are)."""

    def context() -> LineContext:
        now = status()
        if now is None or now.run is None:
            return LineContext(term=now.term if now else None)
        done = now.rounds is not None and now.last_round >= now.rounds
        return LineContext(term=now.term, run=now.run,
                           round=now.last_round if done else now.last_round + 1)

    Voice.contexts[node] = context
