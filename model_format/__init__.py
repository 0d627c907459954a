"""The model format shared by training and serving: the ``model.json`` card
(:mod:`model_format.card`), the repository layout (:mod:`model_format.layout`) and the tasks
(:mod:`model_format.tasks`).

It needs pydantic only: no torch, no ONNX Runtime, no web framework, so the training install and
the serving install both import it (``tests/unit/test_import_boundaries.py`` keeps it so).
"""

from model_format import card as _card
from model_format.card import *  # noqa: F403
from model_format.layout import (
    CARD_FILE,
    DEFAULT_FILE,
    NAME_PATTERN,
    NAME_RE,
    SERVING_FILE,
    VERSION_RE,
)
from model_format.tasks import CAPABILITIES, CLASSIFIER_TASKS, Capability, Task

__all__ = [*_card.__all__, "CARD_FILE", "DEFAULT_FILE", "NAME_PATTERN", "NAME_RE", "SERVING_FILE",
           "VERSION_RE", "CAPABILITIES", "CLASSIFIER_TASKS", "Capability", "Task"]
