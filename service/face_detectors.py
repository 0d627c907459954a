"""The face detector a loaded ``face-detection`` model version runs, chosen by its ``model.json``.

``detector.algorithm`` in the card names the code: ``"MTCNN"`` (three graphs, ``pnet``,
``rnet``, ``onet``: :class:`service.faces.MTCNN`), ``"RetinaFace"`` (one graph:
:class:`service.retinaface.RetinaFace`) or ``"BlazeFace"`` (one graph, for webcam frames:
:class:`service.blazeface.BlazeFace`). Both answer :class:`service.faces.Face` lists with
five landmarks (eyes, nose, mouth corners) that :func:`service.faces.face_crop` levels the eyes
with.
"""

from __future__ import annotations

import numpy as np

from model_format import DetectorCard
from service.blazeface import DEFAULT_THRESHOLD as BLAZE_THRESHOLD
from service.blazeface import BlazeFace
from service.detection import FaceDetector
from service.faces import MTCNN, Graph
from service.model_version import ModelVersion
from service.retinaface import DEFAULT_THRESHOLD, RetinaFace, RetinaGraph
from service.runtime import Session

ALGORITHMS = ("MTCNN", "RetinaFace", "BlazeFace")


def detector_for(version: ModelVersion) -> FaceDetector:
    """The detector that runs ``version``'s graphs.

    Raises:
        ValueError: ``version`` is not a face detector this code can run (the message says so).
    """
    card = version.card
    settings = (card.detector or {}) if isinstance(card, DetectorCard) else {}
    algorithm = settings.get("algorithm")
    if algorithm == "MTCNN" and {"pnet", "rnet", "onet"} <= set(version.sessions):
        def graph(session: Session) -> Graph:
            return lambda batch: session.run({"image": batch})

        return MTCNN({name: graph(version.sessions[name]) for name in ("pnet", "rnet", "onet")})
    if algorithm == "RetinaFace" and "model" in version.sessions:
        session, input_name = version.sessions["model"], card.input.name

        def run(batch: np.ndarray) -> np.ndarray:
            return session.run({input_name: batch})[0]

        retina_graph: RetinaGraph = run
        return RetinaFace(retina_graph, float(settings.get("threshold", DEFAULT_THRESHOLD)))
    if algorithm == "BlazeFace" and "model" in version.sessions:
        blaze = version.sessions["model"]

        def run_blaze(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            regressors, scores = blaze.run({"input": batch}, ["regressors", "classificators"])
            return regressors, scores

        return BlazeFace(run_blaze, float(settings.get("threshold", BLAZE_THRESHOLD)))
    raise ValueError(f"{version.name} is not a face detector (task {version.task!r}, algorithm "
                     f"{algorithm!r}; known: {', '.join(ALGORITHMS)})")
