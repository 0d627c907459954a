"""One registry for every CNN convserve can build.

Builders are small functions decorated with :func:`register_model`; :func:`get_model` builds one
by name. Every builder takes ``num_classes``, ``in_channels`` and ``input_size`` keywords and
returns a :class:`~training.models.base.ConvNet`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import torch.nn as nn

from training.errors import UnknownName

Builder = TypeVar("Builder", bound=Callable[..., nn.Module])

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str) -> Callable[[Builder], Builder]:
    """Register a model builder under ``name``.

    Raises:
        ValueError: if ``name`` is already registered.
    """

    def decorator(builder: Builder) -> Builder:
        if name in _MODELS:
            raise ValueError(f"model {name!r} is already registered")
        _MODELS[name] = builder
        return builder

    return decorator


def list_models() -> list[str]:
    """Names of every registered model, sorted."""
    return sorted(_MODELS)


def get_model(name: str, **config: Any) -> nn.Module:
    """Build the registered model ``name`` with the builder's keyword arguments.

    Raises:
        KeyError: if no model of that name exists; the message lists the valid names.
    """
    try:
        builder = _MODELS[name]
    except KeyError:
        valid = ", ".join(list_models())
        raise UnknownName(f"unknown model {name!r}; valid names: {valid}") from None
    return builder(**config)
