"""The model repository: ``models/<name>/<version>/`` directories -> loaded, warmed-up versions
(each a :class:`service.model_version.ModelVersion`), and which version each name serves.

A scan replaces the set of versions in one assignment, so a request keeps the version it took
while a reload adds or removes others. Names from URLs are checked against :data:`NAME_RE` and
only ever used as dictionary keys, never as paths.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

from model_format import (
    CARD_FILE,
    DEFAULT_FILE,
    NAME_RE,
    VERSION_RE,
)
from service.errors import (
    ModelNotFound,
    NotReady,
    VersionNotFound,
)
from service.model_selection import choose
from service.model_version import ModelVersion, describe_batching, int8_note, load_version
from service.runtime import warn_missing_providers
from service.settings import Settings

logger = logging.getLogger("convserve.repository")


@dataclass
class ScanResult:
    """What one scan of ``models_dir`` changed."""

    added: list[ModelVersion] = field(default_factory=list)
    removed: list[ModelVersion] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # "name/version" -> reason


# In the pins: a model whose default_version cannot be read and that had no good pin before.
# Requests naming no version are refused (never served by the newest, unvetted version).
NO_DEFAULT = 0


@dataclass
class ScanPlan:
    """A scan's outcome before it is published: what changed, and the set to serve."""

    result: ScanResult
    versions: dict[tuple[str, int], ModelVersion]
    pins: dict[str, int]


def discover(root: Path, warn: bool = True) -> dict[tuple[str, int], Path]:
    """Complete version directories under ``root`` (those with a ``model.json``); ``warn``:
    log each directory skipped for its name."""
    found: dict[tuple[str, int], Path] = {}
    if not root.is_dir():
        return found
    for model_dir in sorted(root.iterdir()):
        if not model_dir.is_dir() or model_dir.name.startswith("."):
            continue
        if not NAME_RE.match(model_dir.name):
            if warn:
                logger.warning("skipping %s: model names are lower-case letters, digits and "
                               "'-'", model_dir)
            continue
        for version_dir in model_dir.iterdir():
            if (version_dir.is_dir() and VERSION_RE.match(version_dir.name)
                    and (version_dir / CARD_FILE).is_file()):
                found[(model_dir.name, int(version_dir.name))] = version_dir
    return found


def read_pin(path: Path) -> int | str | None:
    """One ``default_version`` file: its version number, None when there is no such entry at
    all, or why it holds none (anything else: a BOM, ``01``, ``v1``, an empty file as seen in
    the middle of ``echo 1 > default_version``, a directory, a dangling symlink, no access)."""
    if not path.exists() and not path.is_symlink():
        return None
    if path.is_symlink() and not path.exists():
        return f"is a symlink to {path.readlink()}, which does not exist"
    if not path.is_file():
        return "is not a file"
    try:
        raw = path.read_bytes()[:64]
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    text = raw.decode("ascii", errors="replace").strip(" \t\r\n")
    if VERSION_RE.match(text):
        return int(text)
    return f"holds {raw[:20]!r}, not a version number"


def read_defaults(root: Path, names: set[str]) -> tuple[dict[str, int], dict[str, str]]:
    """The pinned default versions: ``models/<name>/default_version`` holding a version number.

    A model without the file serves its newest version. Returns the pins and, for entries that
    are there but hold no version number (:func:`read_pin`), ``"name/default_version" -> why``:
    such a model has no default until the file is fixed, never the newest by accident.
    """
    pins: dict[str, int] = {}
    bad: dict[str, str] = {}
    for name in sorted(names):
        path = root / name / DEFAULT_FILE
        found = read_pin(path)
        if isinstance(found, int):
            pins[name] = found
        elif found is not None:
            bad[f"{name}/{DEFAULT_FILE}"] = (
                f"{path} {found}: write one (e.g. printf 1 > {DEFAULT_FILE}.tmp && "
                f"mv {DEFAULT_FILE}.tmp {DEFAULT_FILE}), or delete it to serve the newest "
                "version")
    return pins, bad


class ModelRepository:
    """Every loaded model version, reloadable while the service runs. Thread-safe."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # Loaded versions and pinned defaults, replaced together by one assignment.
        self._state: tuple[dict[tuple[str, int], ModelVersion], dict[str, int]] = ({}, {})
        self.failures: dict[str, str] = {}
        self._failed_stamps: dict[tuple[str, int], int] = {}  # not retried until model.json changes
        self.loaded = False  # True once the first scan has finished
        self._scan_lock = threading.Lock()
        self._logged: dict[str, str] = {}  # problems logged by the last scan

    def _keep_good_pins(self, pins: dict[str, int], bad: dict[str, str]) -> None:
        """Across an unreadable ``default_version`` (half written, or wrong), keep serving the
        last good pin; a name that never had one gets :data:`NO_DEFAULT`: refused."""
        previous = self._state[1]
        for key in bad:
            name, _, what = key.partition("/")
            if what != DEFAULT_FILE:
                continue
            if previous.get(name, NO_DEFAULT) != NO_DEFAULT:
                pins[name] = previous[name]
                bad[key] += f" (still serving version {previous[name]}, the last good pin)"
            else:
                pins[name] = NO_DEFAULT

    @property
    def _versions(self) -> dict[tuple[str, int], ModelVersion]:
        return self._state[0]

    def scan(self) -> ScanResult:
        """:meth:`plan` and :meth:`publish` at once (tools and tests; the engine does the two
        steps itself, opening and retiring lanes between them). Blocking."""
        plan = self.plan()
        self.publish(plan)
        return plan.result

    def plan(self) -> ScanPlan:
        """Load new or changed versions and find vanished ones, without publishing anything:
        requests keep seeing the current set. Blocking (loads and warms up): call from a thread.
        """
        with self._scan_lock:
            result = ScanResult()
            found, unmatched = choose(discover(self.settings.models_dir),
                                      self.settings.models, self.settings.models_dir)
            current = dict(self._versions)
            for gone in [k for k in current if k not in found]:
                result.removed.append(current.pop(gone))
            for (name, version), path in sorted(found.items()):
                existing = current.get((name, version))
                stamp = (path / CARD_FILE).stat().st_mtime_ns
                if existing is not None and existing.stamp == stamp:
                    continue
                key = f"{name}/{version}"
                if self._failed_stamps.get((name, version)) == stamp:
                    result.failed[key] = self.failures[key]  # unchanged: still broken
                    continue
                try:
                    loaded = load_version(name, version, path, self.settings)
                except Exception as exc:
                    result.failed[key] = f"{type(exc).__name__}: {exc}"
                    self._failed_stamps[(name, version)] = stamp
                    logger.error("model %s failed to load: %s", key, exc)
                    continue
                self._failed_stamps.pop((name, version), None)
                if existing is not None:
                    result.removed.append(existing)
                current[(name, version)] = loaded
                result.added.append(loaded)
                logger.info("loaded model %s version %s in %.2f s on %s%s", name, version,
                            loaded.load_seconds, ", ".join(loaded.providers),
                            describe_batching(loaded))
                if note := int8_note(loaded):
                    logger.warning("%s", note)
            pins, bad = read_defaults(self.settings.models_dir, {name for name, _ in found})
            self._keep_good_pins(pins, bad)
            for name, version in pins.items():
                if version != NO_DEFAULT and (name, version) not in current:
                    have = ", ".join(str(v) for n, v in sorted(current) if n == name) or "none"
                    bad[f"{name}/{DEFAULT_FILE}"] = (
                        f"the default version {version} is not loaded (versions: {have}); "
                        f"fix {self.settings.models_dir / name / DEFAULT_FILE} or delete it to "
                        "serve the newest version")
            for key, why in bad.items():
                if self._logged.get(key) != why:  # once, not at every periodic scan
                    logger.error("%s: %s", key, why)
            self._logged = dict(bad)
            result.failed.update({key: why for key, why in bad.items()
                                  if "still serving version" not in why})
            result.failed.update(unmatched)
            if result.added:
                in_use = {p for v in current.values() for p in v.providers}
                warn_missing_providers(list(self.settings.providers), in_use)
            return ScanPlan(result, current, pins)

    def publish(self, plan: ScanPlan) -> None:
        """Make ``plan`` the served set, in one assignment: readers see old or new, never a
        mix. Call it where removed versions are retired in the same step (the engine)."""
        self._state = (plan.versions, plan.pins)
        self.failures = plan.result.failed
        self.loaded = True

    def names(self) -> list[str]:
        """Model names, sorted.

        Raises:
            NotReady: the first scan has not finished (an empty list would be a wrong answer).
        """
        if not self.loaded:
            raise NotReady("the models are still loading; retry when GET /readyz answers 200")
        return sorted({name for name, _ in self._versions})

    def versions(self, name: str) -> list[ModelVersion]:
        """Every loaded version of ``name``, newest first.

        Raises:
            ModelNotFound: no such model (or an invalid name).
            NotReady: the first scan has not finished.
        """
        return self._versions_of(name, self._state[0])

    def _versions_of(self, name: str, snapshot: dict[tuple[str, int], ModelVersion],
                     ) -> list[ModelVersion]:
        if not self.loaded:
            raise NotReady("the models are still loading; retry when GET /readyz answers 200")
        if not NAME_RE.match(name):
            raise ModelNotFound(f"no model named {name!r}: names are lower-case letters, "
                                "digits and '-'; GET /v1/models lists the models")
        found = sorted((v for (n, _), v in snapshot.items() if n == name),
                       key=lambda v: v.version, reverse=True)
        if not found:
            known = ", ".join(sorted({n for n, _ in snapshot})) or "none loaded"
            raise ModelNotFound(f"no model named {name!r}; models: {known}")
        return found

    def default_version(self, name: str) -> tuple[int, bool]:
        """The version served when none is named, and whether ``default_version`` pins it
        (else it is the newest); :data:`NO_DEFAULT` (0) and True when the pin cannot be read.
        Raises like :meth:`versions`."""
        snapshot, pins = self._state
        newest = self._versions_of(name, snapshot)[0].version
        return (pins[name], True) if name in pins else (newest, False)

    def _refuse_unreadable(self, name: str, pins: dict[str, int]) -> None:
        if pins.get(name) == NO_DEFAULT:
            raise NotReady(f"the default version of model {name!r} cannot be read from "
                           f"models/{name}/{DEFAULT_FILE} (see the service's log): name a "
                           "version, or fix the file and reload")

    def get(self, name: str, version: str | int | None = None) -> ModelVersion:
        """One version of ``name``: when ``version`` is None, the one ``default_version`` pins,
        else the newest.

        Raises:
            ModelNotFound, VersionNotFound, NotReady.
        """
        snapshot, pins = self._state
        versions = self._versions_of(name, snapshot)
        if version is None:
            self._refuse_unreadable(name, pins)
        if version is None and name not in pins:
            return versions[0]
        wanted = str(version if version is not None else pins[name])
        for candidate in versions:
            if str(candidate.version) == wanted:
                return candidate
        have = ", ".join(str(v.version) for v in versions)
        if version is None:
            raise VersionNotFound(
                f"the default version {wanted} of model {name!r} is not loaded (versions: "
                f"{have}): name a version, or fix models/{name}/{DEFAULT_FILE}")
        raise VersionNotFound(f"model {name!r} has no version {wanted!r}; versions: {have}")

    def serves(self, version: ModelVersion) -> bool:
        """Whether ``version`` (this very object, not a reloaded twin) is in the served set."""
        return self._versions.get((version.name, version.version)) is version

    def all_versions(self) -> list[ModelVersion]:
        """Every loaded version, by name then newest first."""
        return sorted(self._versions.values(), key=lambda v: (v.name, -v.version))
