"""``convserve``: the command line. ``convserve serve`` runs the HTTP service under uvicorn.

Subcommands are in :data:`COMMANDS`: a name -> (help, add_arguments, run) triple, added with
:func:`add_command`. ``convserve predict`` lives in ``service/predict.py``, which knows nothing
of this module; :func:`_load_commands` imports it when the parser is built.
"""

from __future__ import annotations

import argparse
import errno
import importlib.util
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from service.errors import SettingsError
from service.logs import configure_logging

if TYPE_CHECKING:
    from service.settings import Settings

DESCRIPTION = "convserve: serve the models over HTTP, or classify image files from the shell."
AddArguments = Callable[[argparse.ArgumentParser], None]
Run = Callable[[argparse.Namespace], int]
COMMANDS: dict[str, tuple[str, AddArguments, Run]] = {}


def add_command(name: str, help_text: str, add_arguments: AddArguments, run: Run) -> None:
    """Register ``convserve <name>``."""
    COMMANDS[name] = (help_text, add_arguments, run)


def _serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="interface to bind (CONVSERVE_HOST, default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="TCP port (CONVSERVE_PORT, default 8000)")
    parser.add_argument("--grpc-port", type=int,
                        help="gRPC port, the Open Inference Protocol (CONVSERVE_GRPC_PORT, "
                             "default 8001; 0: no gRPC)")
    parser.add_argument("--models", type=Path,
                        help="models directory (CONVSERVE_MODELS_DIR, default ./models)")
    parser.add_argument("--allow-empty", action="store_true", default=None,
                        help="start even if the models directory holds no model yet "
                             "(CONVSERVE_ALLOW_EMPTY)")
    parser.add_argument("--workers", type=int,
                        help="processes serving the port (CONVSERVE_WORKERS, default 1)")



def check_port(host: str, port: int, option: str = "--port (or CONVSERVE_PORT)") -> None:
    """Fail now, before any model loads, if ``host:port`` cannot be bound (binding as uvicorn
    does, with SO_REUSEADDR, then letting go).

    Raises:
        SettingsError: naming the port and how to choose another.
    """
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        hint = (" (another process is listening there, perhaps another convserve)"
                if exc.errno == errno.EADDRINUSE else "")
        raise SettingsError(f"cannot listen on {host}:{port}: {reason}{hint}; choose another "
                            f"port with {option}, or --host") from None


def check_models(settings: Settings) -> None:
    """Refuse an empty models directory (most likely a wrong path) unless it is intended.

    Raises:
        SettingsError: naming the directory and the two ways out.
    """
    from service.repository import discover

    if settings.allow_empty or discover(settings.models_dir, warn=False):
        return
    raise SettingsError(
        f"no models in {settings.models_dir.resolve()} (expected <name>/<version>/model.json "
        "under it): pass --models DIR (or CONVSERVE_MODELS_DIR), or --allow-empty "
        "(CONVSERVE_ALLOW_EMPTY=true) to start with none and add them later")


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from service import tracing
    from service.grpc.server import serve_grpc
    from service.http.app import create_app
    from service.http.connections import settings_protocol, uvicorn_options
    from service.settings import load_settings

    overrides = {key: value for key, value in
                 (("host", args.host), ("port", args.port), ("grpc_port", args.grpc_port),
                  ("models_dir", args.models),
                  ("allow_empty", args.allow_empty), ("workers", args.workers))
                 if value is not None}
    from service.memory import fix_mmap_threshold

    fix_mmap_threshold()  # before anything large is allocated (service/memory.py)
    settings = load_settings(**overrides)
    check_models(settings)
    check_port(settings.host, settings.port)
    if settings.grpc_port:
        check_port(settings.host, settings.grpc_port, "--grpc-port (or CONVSERVE_GRPC_PORT)")
    if settings.workers > 1:
        from service import workers

        configure_logging(settings.log_level, json_lines=settings.log_format == "json")
        return workers.serve(settings, overrides)
    flush_logs = configure_logging(settings.log_level, background=True,
                                   json_lines=settings.log_format == "json")
    tracing.configure()  # when OTEL_* asks for traces

    class Server(uvicorn.Server):
        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            try:
                await super().shutdown(sockets)
            finally:  # before uvicorn re-raises SIGTERM/SIGINT, which skips atexit
                flush_logs()

    app = create_app(settings)
    serve_grpc(app)  # in the app's lifespan, over its engine
    config = uvicorn.Config(app, **uvicorn_options(settings, settings_protocol(settings)))
    server = Server(config)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    flush_logs()
    tracing.shutdown()
    return 0 if server.started else 3  # 3: uvicorn's code for a failed start-up


add_command("serve", "run the HTTP service", _serve_arguments, _serve)


def _load_commands() -> None:
    from service.predict import COMMAND

    help_text, add_arguments, run = COMMAND

    def run_predict(args: argparse.Namespace) -> int:
        configure_logging("warning")  # a command line tool: only what the user must see
        return run(args)

    add_command("predict", help_text, add_arguments, run_predict)

    from service.tune import COMMAND as TUNE

    help_text, add_arguments, run_tune = TUNE

    def tune(args: argparse.Namespace) -> int:
        configure_logging("warning")
        return run_tune(args)

    add_command("tune", help_text, add_arguments, tune)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every registered subcommand."""
    _load_commands()
    parser = argparse.ArgumentParser(prog="convserve", description=DESCRIPTION)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, add_arguments, _) in COMMANDS.items():
        add_arguments(commands.add_parser(name, help=help_text, description=help_text))
    return parser


# What every convserve command imports from the serving extras (pyproject.toml's serve-common
# and the onnxruntime of serve/serve-cpu); a bare `pip install .` has none of them.
SERVE_MODULES = ("fastapi", "starlette", "uvicorn", "pydantic", "pydantic_settings", "httpx",
                 "prometheus_client", "onnxruntime", "onnx")
SERVE_INSTALL = ("pip install '.[serve]' (NVIDIA GPU or CPU: onnxruntime-gpu, CUDA as wheels) or "
                 "pip install '.[serve-cpu]' (CPU only: plain onnxruntime)")


def _serving_missing(error: ModuleNotFoundError | None = None) -> int:
    name = error.name if error is not None else next(
        m for m in SERVE_MODULES if importlib.util.find_spec(m) is None)
    print(f"convserve: serving needs the 'serve' or 'serve-cpu' extra, which is not installed "
          f"here (no module {name!r}); install it with: {SERVE_INSTALL}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``convserve`` and ``python -m service``.

    Without the serving extras it says which to install, in one line, and exits 2 (before
    parsing: even ``--help`` needs them), as ``convserve-train`` does without torch."""
    if any(importlib.util.find_spec(m) is None for m in SERVE_MODULES):
        return _serving_missing()
    try:
        args = build_parser().parse_args(argv)
        return COMMANDS[args.command][2](args)
    except SettingsError as exc:
        print(f"convserve: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as error:  # found above, yet part of it missing
        if (error.name or "").split(".")[0] not in SERVE_MODULES:
            raise
        return _serving_missing(error)


if __name__ == "__main__":
    sys.exit(main())
