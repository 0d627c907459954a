"""Logging for the service's processes: one line per record, written from a thread when serving."""

from __future__ import annotations

import atexit
import logging
import logging.handlers
import queue
import sys
from collections.abc import Callable


def configure_logging(level: str, background: bool = False,
                      process: bool = False) -> Callable[[], None]:
    """One line per record: time, level, logger, message (access lines are JSON).

    Args:
        level: the root logger's level, e.g. ``info``.
        background: write records to stderr from a thread (``serve``): the event loop only
            queues them. A write releases the GIL, and taking it back from the decode and
            inference threads costs the loop time under load (figure: docs/service-architecture.md).
        process: name the process id after the logger (``--workers N``: which worker spoke).

    Returns:
        A function that writes what is queued and goes back to direct writes (call it before
        the process ends; it also runs at exit).
    """
    stream = logging.StreamHandler(sys.stderr)
    pid = " [%(process)d]" if process else ""
    stream.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s %(name)s{pid} %(message)s"))
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
