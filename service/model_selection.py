"""``CONVSERVE_MODELS``: which of the models found in ``models/`` a service loads.

A comma-separated list of names or ``fnmatch`` patterns (``*``, ``?``), each optionally
prefixed with ``-`` to leave models out; applied in order, starting from every model when the
first entry leaves out (``-*-int8``), else from none. Empty: every model. ``*,-*-int8`` loads all
but the int8 models (the GPU Compose service: int8 helps on CPUs only, docs/int8.md).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable
from pathlib import Path
from typing import TypeVar

PATTERN_RE = re.compile(r"^-?[a-z0-9*?][a-z0-9*?-]{0,63}$")

T = TypeVar("T")


def parse(value: str | list[str]) -> list[str]:
    """The entries of ``CONVSERVE_MODELS``, checked.

    Raises:
        ValueError: an entry that is no model name or pattern.
    """
    entries = [part.strip() for part in value.split(",")] if isinstance(value, str) else value
    entries = [entry for entry in entries if entry]
    for entry in entries:
        if not PATTERN_RE.match(entry):
            raise ValueError(f"{entry!r} is not a model name or pattern: lower-case letters, "
                             "digits, '-', '*' and '?', with a leading '-' to leave models out, "
                             "e.g. '*,-*-int8'")
    return entries


def chosen(names: Iterable[str], patterns: list[str]) -> set[str]:
    """The names that ``patterns`` select (all of them when ``patterns`` is empty)."""
    names = set(names)
    if not patterns:
        return names
    selected = set(names) if patterns[0].startswith("-") else set()
    for entry in patterns:
        if entry.startswith("-"):
            selected -= set(fnmatch.filter(names, entry[1:]))
        else:
            selected |= set(fnmatch.filter(names, entry))
    return selected


def choose(found: dict[tuple[str, int], T], patterns: list[str],
           root: Path) -> tuple[dict[tuple[str, int], T], dict[str, str]]:
    """``found`` (``discover``'s versions) limited to the chosen models, and a failure for
    each pattern that selects nothing (it keeps ``/readyz`` at 503 and says why)."""
    names = sorted({name for name, _ in found})
    keep = chosen(names, patterns)
    failures = {}
    for entry in patterns:
        pattern = entry.lstrip("-")
        if not fnmatch.filter(names, pattern):
            failures[f"CONVSERVE_MODELS={entry}"] = (
                f"{pattern!r} matches no model in {root} (there: {', '.join(names) or 'none'})")
    return {key: value for key, value in found.items() if key[0] in keep}, failures
