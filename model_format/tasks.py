"""What a model can be asked to do: its :class:`Task` (``model.json``'s ``task``) and the
:class:`Capability` each task brings.

Endpoints ask for a capability, never compare task strings, so one mistake (classify on a face
detector, expressions with a digit classifier) gets one answer everywhere
(``service.errors.Incapable``).
"""

from __future__ import annotations

import enum


class Task(enum.StrEnum):
    """``model.json``'s ``task``."""

    CLASSIFICATION = "classification"  # a whole image -> class probabilities
    EXPRESSION = "expression"  # a face crop -> expression probabilities
    FACE_DETECTION = "face-detection"  # an image -> face boxes and landmarks


class Capability(enum.StrEnum):
    """One thing an endpoint needs of a model."""

    CLASSIFY = "classify"  # an image tensor in, one probability row out (/v1 classify, /v2 infer)
    EXPRESSIONS = "expressions"  # classifies the faces a detector cut (/v1/expressions model=)
    DETECT_FACES = "detect-faces"  # finds faces (/v1/expressions detector=)
    EXPLAIN = "explain"  # a class activation map or occlusion (/v1/.../explain)
    FIRST_LAYER = "first-layer"  # its first convolution's filters (/v1/.../first-layer)


CAPABILITIES: dict[Task, frozenset[Capability]] = {
    Task.CLASSIFICATION: frozenset({Capability.CLASSIFY, Capability.EXPLAIN,
                                    Capability.FIRST_LAYER}),
    Task.EXPRESSION: frozenset({Capability.CLASSIFY, Capability.EXPRESSIONS, Capability.EXPLAIN,
                                Capability.FIRST_LAYER}),
    Task.FACE_DETECTION: frozenset({Capability.DETECT_FACES}),
}
CLASSIFIER_TASKS = (Task.CLASSIFICATION, Task.EXPRESSION)
