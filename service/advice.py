"""Notes that travel with an answer when the request is valid but likely not what was meant.

An expression model classifies one face, cut from its photo the way ``POST /v1/expressions``
cuts it; sent a whole photo through ``classify``, it still answers (a face crop sent that way is
a fair request), but a group photo's "fear 0.78" says nothing about the five smiling people in it.
"""

from __future__ import annotations

from model_format import Task
from service.model_version import ModelVersion


def classify_notes(version: ModelVersion) -> list[str]:
    """The notes for a ``classify`` answer of ``version`` (empty for an image classifier)."""
    if version.task == Task.EXPRESSION:
        return [f"{version.name} is an expression model: it expects one face, cropped close as "
                "POST /v1/expressions crops it; for a photo with people in it, send it to "
                f"POST /v1/expressions?model={version.name}, which finds each face first"]
    return []
