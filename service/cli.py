"""``convserve``: the command line. ``convserve serve`` runs the HTTP service under uvicorn.

Subcommands register themselves in :data:`COMMANDS`: a name -> (help, add_arguments, run)
triple. Another module adds one with :func:`add_command` (``service/predict.py`` adds
``convserve predict`` this way, imported in :func:`_load_commands`).
"""

from __future__ import annotations

import argparse
import atexit
import importlib
import logging
import logging.handlers
import queue
import socket
import sys
from collections.abc import Callable
from pathlib import Path

from service.errors import SettingsError

AddArguments = Callable[[argparse.ArgumentParser], None]
Run = Callable[[argparse.Namespace], int]
COMMANDS: dict[str, tuple[str, AddArguments, Run]] = {}
# Modules that may add subcommands; missing ones are skipped.
PLUGIN_MODULES = ("service.predict",)


def add_command(name: str, help_text: str, add_arguments: AddArguments, run: Run) -> None:
    """Register ``convserve <name>``."""
    COMMANDS[name] = (help_text, add_arguments, run)


def configure_logging(level: str, background: bool = False,
                      process: bool = False) -> Callable[[], None]:
    """One line per record: time, level, logger, message (access lines are JSON).

    Args:
        level: the root logger's level, e.g. ``info``.
        background: write records to stderr from a thread (``serve``): the event loop only
            queues them. A write releases the GIL, and taking it back from the decode and
            inference threads cost the loop ~0.4 ms per request under load.
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


def _serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="interface to bind (CONVSERVE_HOST, default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="TCP port (CONVSERVE_PORT, default 8000)")
    parser.add_argument("--models", type=Path,
                        help="models directory (CONVSERVE_MODELS_DIR, default ./models)")
    parser.add_argument("--workers", type=int,
                        help="processes serving the port (CONVSERVE_WORKERS, default 1)")


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from service.app import create_app
    from service.settings import load_settings

    overrides = {key: value for key, value in
                 (("host", args.host), ("port", args.port), ("models_dir", args.models),
                  ("workers", args.workers))
                 if value is not None}
    settings = load_settings(**overrides)
    if settings.workers > 1:
        from service import workers

        configure_logging(settings.log_level)
        return workers.serve(settings, overrides)
    flush_logs = configure_logging(settings.log_level, background=True)

    class Server(uvicorn.Server):
        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            try:
                await super().shutdown(sockets)
            finally:  # before uvicorn re-raises SIGTERM/SIGINT, which skips atexit
                flush_logs()

    config = uvicorn.Config(create_app(settings), host=settings.host, port=settings.port,
                            log_level=settings.log_level, access_log=False, loop="auto",
                            http="auto",
                            timeout_graceful_shutdown=int(settings.graceful_shutdown_s))
    server = Server(config)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    flush_logs()
    return 0 if server.started else 3  # 3: uvicorn's code for a failed start-up


add_command("serve", "run the HTTP service", _serve_arguments, _serve)


def _load_commands() -> None:
    for module in PLUGIN_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every registered subcommand."""
    _load_commands()
    parser = argparse.ArgumentParser(prog="convserve", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, add_arguments, _) in COMMANDS.items():
        add_arguments(commands.add_parser(name, help=help_text, description=help_text))
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``convserve`` and ``python -m service``."""
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command][2](args)
    except SettingsError as exc:
        print(f"convserve: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
