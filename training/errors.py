"""The errors training reports to its user: one base, :class:`UserError`, and a kind per cause.

``python -m training`` (:mod:`training.cli`) prints a :class:`UserError` as one line,
``error: <message>``, and exits 2; any other exception is a bug and keeps its traceback. Each
message names what is wrong and how to fix it. The kinds keep the built-in exception they
refine as a second base (``ValueError``, ``KeyError``, ``FileNotFoundError``, ``RuntimeError``),
so code that caught those still does; ``str()`` never adds ``KeyError``'s quotes.
"""

from __future__ import annotations

from pathlib import Path


class UserError(Exception):
    """A mistake the user can fix: a config, a data set, a checkpoint, an export refused."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if len(self.args) == 1 else super().__str__()

    def for_cli(self) -> str:
        """The message as the command line says it (flags rather than keyword arguments)."""
        return str(self)


class ConfigError(UserError, ValueError):
    """The configuration is invalid; the message says which key and how to fix it."""


class UnknownName(ConfigError, KeyError):
    """A name (model, data set, pretrained weights) that no registry holds; the message lists
    the valid ones."""


class DataError(UserError, ValueError):
    """A data set cannot be read as the config describes it (missing files, a bad format)."""


class MissingData(DataError, FileNotFoundError):
    """A file or folder a data set or a run needs is not there."""


class ExportError(UserError, RuntimeError):
    """The model failed an export check; nothing was written. The message says what failed."""


class VersionExists(ExportError):
    """The target version already holds a model and overwriting was not asked for."""

    def __init__(self, target: Path, flag: str = "overwrite=True") -> None:
        super().__init__(f"{target} already holds a model; export a new version or pass {flag}")
        self.target = target

    def for_cli(self) -> str:
        return str(VersionExists(self.target, "--overwrite"))


class QuantizeError(ExportError):
    """The int8 model failed a check or lost too much accuracy; nothing was written."""


class AssetError(UserError, RuntimeError):
    """A file could not be fetched or failed its checksum; the message says what to do."""
