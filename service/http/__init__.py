"""The HTTP adapter: the FastAPI application (``app.py``), its routes, middleware, dependency
aliases and the mapping of domain errors to HTTP answers. Everything here parses, calls the
engine (:mod:`service.engine`) and formats; serving logic lives below it."""
