"""``Annotated`` dependency aliases: the engine, as routes need it.

``app.state.engine`` (a :class:`service.engine.Engine`) is the only state the app has. Routes that
serve a model declare ``engine: EngineDep``, which refuses (503, Retry-After) while the engine
starts or stops; probes, metrics and descriptions, which answer in any state, declare
``engine: AnyEngineDep``. Both functions are ``async`` on purpose: FastAPI runs plain ``def``
dependencies in a worker thread, one thread hop each.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from service.engine import Engine


async def get_engine(request: Request) -> Engine:
    """The engine, whatever its state."""
    engine: Engine = request.app.state.engine
    return engine


async def get_serving_engine(request: Request) -> Engine:
    """The engine, once it serves: NotReady (503) while it starts or stops."""
    engine: Engine = request.app.state.engine
    engine.check_serving()
    return engine


AnyEngineDep = Annotated[Engine, Depends(get_engine)]
EngineDep = Annotated[Engine, Depends(get_serving_engine)]
