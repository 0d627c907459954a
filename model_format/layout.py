"""The repository layout: ``models/<name>/<version>/`` and the files each level holds.

Training writes this layout (``training/export.py``), serving reads it (``service/repository.py``);
both take the names and rules from here.
"""

from __future__ import annotations

import re
from pathlib import Path

NAME_PATTERN = r"^[a-z0-9][a-z0-9-]{0,63}$"
NAME_RE = re.compile(NAME_PATTERN)  # a model directory: models/<name>
VERSION_RE = re.compile(r"^[1-9][0-9]{0,8}$")  # a version directory: models/<name>/<version>
CARD_FILE = "model.json"  # models/<name>/<version>/model.json: the card (model_format.card)
SERVING_FILE = "serving.json"  # beside the card: measured batch sizes (optional)
DEFAULT_FILE = "default_version"  # models/<name>/default_version: the version served by default


def write_pin(name_dir: Path, version: int) -> Path:
    """Pin ``version`` as the default of the model in ``name_dir`` (``models/<name>``),
    atomically: a temporary file renamed over the old one, so that a reader (the service's
    periodic scan) never sees a half-written number."""
    pin = name_dir / DEFAULT_FILE
    temporary = name_dir / f".{DEFAULT_FILE}.tmp"
    temporary.write_text(f"{version}\n")
    temporary.replace(pin)
    return pin
