"""Writing a checked model into the repository: what every exporter shares.

The float exporter (:mod:`training.export`), int8 quantization (:mod:`training.quantize`) and the
face detector (:mod:`training.ship_faces`) each check their graphs their own way, then go through
the same three steps: refuse an existing version (:func:`check_target`), stamp the card's
provenance (:func:`provenance`) and write the version directory, graphs first and ``model.json``
last and atomically (:func:`publish`), so a reader never sees half a model.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from model_format import CARD_FILE, ClassifierCard, DetectorCard, Provenance, write_card
from training.errors import VersionExists

logger = logging.getLogger(__name__)


def check_target(models_dir: str | Path, name: str, version: int, overwrite: bool) -> Path:
    """The version directory ``models_dir/name/version``, refused if it holds a model already.

    Raises:
        VersionExists: it holds a ``model.json`` and ``overwrite`` is false.
    """
    target = Path(models_dir) / name / str(version)
    if (target / CARD_FILE).exists() and not overwrite:
        raise VersionExists(target)
    return target


def git_commit() -> str | None:
    """The repository's HEAD commit (None outside a git checkout)."""
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True, cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def provenance(exporter: str, **fields: Any) -> Provenance:
    """``model.json``'s ``provenance``: ``fields`` (source weights, config, export check...)
    stamped with the exporter, the git commit and the time (UTC) of this export."""
    return Provenance.model_validate({
        **fields, "git_commit": git_commit(),
        "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), "exporter": exporter})


def publish(scratch: Path, files: Iterable[str], card: ClassifierCard | DetectorCard,
            target: Path) -> None:
    """Copy ``files`` from ``scratch`` into ``target``, then write ``card`` there.

    The old ``model.json`` goes first (the version is incomplete until it is back), each graph
    is copied under a temporary name and renamed, and the new ``model.json`` is written last,
    atomically.
    """
    target.mkdir(parents=True, exist_ok=True)
    (target / CARD_FILE).unlink(missing_ok=True)
    for name in files:
        partial = target / f"{name}.tmp"
        shutil.copyfile(scratch / name, partial)
        partial.replace(target / name)
    write_card(card, target)
    logger.info("wrote %s", target)
