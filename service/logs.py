"""Logging for the service's processes: one line per record, written from a thread when serving.

Two formats (``CONVSERVE_LOG_FORMAT``): ``text``, for a person reading a terminal (time, level,
logger, message; access lines are JSON after that prefix), and ``json``, for log collectors:
every line one JSON object, uvicorn's own lines included, an access line's fields at its top
level, a traceback inside its line.
"""

from __future__ import annotations

import atexit
import json
import logging
import logging.handlers
import queue
import sys
from collections.abc import Callable
from datetime import UTC, datetime

ACCESS_LOGGER = "convserve.access"  # its messages are JSON objects (service/http/middleware.py)


class JsonLines(logging.Formatter):
    """One JSON object per record: time, level, logger, (pid), then the message, or an access
    line's own fields."""

    def __init__(self, process: bool = False) -> None:
        super().__init__()
        self.process = process

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname, "logger": record.name}
        if self.process:
            line["pid"] = record.process
        message = record.getMessage()
        fields = None
        if record.name == ACCESS_LOGGER:
            try:
                fields = json.loads(message)
            except ValueError:
                fields = None
        if isinstance(fields, dict):
            line.update(fields)
        else:
            line["message"] = message
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line)


def configure_logging(level: str, background: bool = False, process: bool = False,
                      json_lines: bool = False) -> Callable[[], None]:
    """One line per record: time, level, logger, message (access lines are JSON), or with
    ``json_lines`` one JSON object per line.

    Args:
        level: the root logger's level, e.g. ``info``.
        background: write records to stderr from a thread (``serve``): the event loop only
            queues them. A write releases the GIL, and taking it back from the decode and
            inference threads costs the loop time under load (figure: docs/service-architecture.md).
        process: name the process id after the logger (``--workers N``: which worker spoke).
        json_lines: every line a JSON object (``CONVSERVE_LOG_FORMAT=json``).

    Returns:
        A function that writes what is queued and goes back to direct writes (call it before
        the process ends; it also runs at exit).
    """
    stream = logging.StreamHandler(sys.stderr)
    pid = " [%(process)d]" if process else ""
    stream.setFormatter(JsonLines(process) if json_lines else
                        logging.Formatter(f"%(asctime)s %(levelname)s %(name)s{pid} %(message)s"))
    if not background:
        logging.basicConfig(level=level.upper(), handlers=[stream])
        return lambda: None
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    listener = logging.handlers.QueueListener(records, stream)
    handler = logging.handlers.QueueHandler(records)
    handler.setFormatter(logging.Formatter("%(message)s"))  # the message (and traceback) only
    logging.basicConfig(level=level.upper(), handlers=[handler])
    listener.start()

    def stop() -> None:
        root = logging.getLogger()
        if handler in root.handlers:
            root.addHandler(stream)
            root.removeHandler(handler)
            listener.stop()  # writes every queued record, then ends the thread

    atexit.register(stop)
    return stop
