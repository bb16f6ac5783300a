"""Log lines that say which session and node they are about, as text or as JSON.

Two context variables carry the ids: a session sets :data:`SESSION_ID` in its main task and
every node task sets :data:`NODE_ID`; trio tasks (and node threads, see the thread executor)
inherit them, so any ``logging`` call made on a session's behalf — by the runtime, an
executor, or a node's own code — is tagged without passing anything around. Worker processes
forward their records to the supervisor, which logs them in the node's task (so they are
tagged the same way). :class:`ContextFilter` copies the ids onto each record
(``record.session_id``, ``record.node_id``; ``"-"`` outside a session).

:func:`configure` is for programs that own the process's logging (``nursery-pipes serve``):
one handler on the root logger, text or JSON (python-json-logger). A library user keeps their
own configuration and may add :class:`ContextFilter` to their handlers.

>>> import logging, io
>>> stream = io.StringIO()
>>> configure("json", "INFO", stream=stream)
>>> token = SESSION_ID.set("s1")
>>> logging.getLogger("demo").info("hello")
>>> SESSION_ID.reset(token)
>>> import json
>>> line = json.loads(stream.getvalue())
>>> line["message"], line["session_id"], line["node_id"], line["level"]
('hello', 's1', '-', 'INFO')
>>> unconfigure()
"""

from __future__ import annotations

import logging
import sys
from contextvars import ContextVar
from typing import IO, Literal

__all__ = ["NODE_ID", "SESSION_ID", "ContextFilter", "LogFormat", "configure", "unconfigure"]

SESSION_ID: ContextVar[str] = ContextVar("nursery_pipes_session_id", default="-")
NODE_ID: ContextVar[str] = ContextVar("nursery_pipes_node_id", default="-")

LogFormat = Literal["text", "json"]
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [session=%(session_id)s node=%(node_id)s] %(message)s"
JSON_FIELDS = "%(asctime)s %(levelname)s %(name)s %(session_id)s %(node_id)s %(message)s"


class ContextFilter(logging.Filter):
    """Adds ``session_id`` and ``node_id`` to every record (unless it already has them)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "session_id"):
            record.session_id = SESSION_ID.get()
        if not hasattr(record, "node_id"):
            record.node_id = NODE_ID.get()
        return True


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """Ours, so that configuring twice replaces it instead of adding another."""


def configure(fmt: LogFormat, level: str | int, *, stream: IO[str] | None = None) -> None:
    """Log to ``stream`` (stderr) from the root logger at ``level``, as ``fmt``.

    Text: ``time LEVEL logger [session=… node=…] message``, tracebacks on the following lines.
    JSON: one object per line with ``time``, ``level``, ``logger``, ``session_id``,
    ``node_id``, ``message`` (and ``exc_info`` with the traceback, when there is one).
    """
    handler = _Handler(stream if stream is not None else sys.stderr)
    handler.addFilter(ContextFilter())
    if fmt == "json":
        from pythonjsonlogger.json import JsonFormatter

        handler.setFormatter(
            JsonFormatter(
                JSON_FIELDS, rename_fields={"asctime": "time", "levelname": "level", "name": "logger"}
            )
        )
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    unconfigure()
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)


def unconfigure() -> None:
    """Remove the handler :func:`configure` added (if any)."""
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(old)
