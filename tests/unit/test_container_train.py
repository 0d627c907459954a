"""``training/container.py``: what ``docker compose run --rm train`` does before training.

The version is chosen (or refused) before any training, the data every shipped config names is
among what the image fetches at build time, and a run started as root hands ``runs/`` to the
owner of ``models/`` and writes as that user (in a child process: it changes its uid).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from training.assets import ASSETS
from training.container import (
    DATASET_ASSETS,
    PRETRAINED_ASSETS,
    ContainerError,
    choose_target,
    training_argv,
)

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "models"


def test_the_next_free_version_is_chosen_and_a_taken_one_refused() -> None:
    taken = choose_target(SHIPPED, "mnist-lenet5", None)
    assert (taken.version, taken.chosen) == (2, True)  # the shipped one is 1
    assert choose_target(SHIPPED, "brand-new", "").version == 1
    assert choose_target(SHIPPED, "mnist-lenet5", "7").version == 7
    with pytest.raises(ContainerError, match=r"models/mnist-lenet5/1 exists already .* unset "
                                             r"TRAIN_VERSION to get the next free one \(2\)"):
        choose_target(SHIPPED, "mnist-lenet5", "1")
    with pytest.raises(ContainerError, match="not a version"):
        choose_target(SHIPPED, "mnist-lenet5", "v2")
    with pytest.raises(ContainerError, match="not a model name"):
        choose_target(SHIPPED, "Digits", None)


def test_overrides_and_device_reach_the_training_command() -> None:
    target = choose_target(SHIPPED, "mnist-lenet5", None)
    argv = training_argv("mnist-lenet5", target, ["optim.epochs=1"], "cpu", Path("/app/runs"))
    assert argv == ["train", "--config", "mnist-lenet5", "--set", "optim.epochs=1", "--set",
                    "output_dir=/app/runs/mnist-lenet5-2", "--set", "device=cpu"]


def test_the_image_fetches_the_data_of_every_shipped_config() -> None:
    from training import pretrained

    assert set(PRETRAINED_ASSETS) == {source.asset for source in pretrained.SOURCES.values()}
    for config in sorted((REPO / "training" / "configs").glob("*.yaml")):
        data = yaml.safe_load(config.read_text())["data"]
        assert data["name"] in DATASET_ASSETS, config.name
        if not DATASET_ASSETS[data["name"]]:
            assert data.get("path") is None  # the user's own file (--set data.path=...)
    assert all(name in ASSETS for names in DATASET_ASSETS.values() for name in names)


CHILD = """
import sys
from pathlib import Path
from training.container import run
root = Path(sys.argv[1])
sys.exit(run({"TRAIN_VERSION": sys.argv[2], "CONVSERVE_CACHE": str(root / "cache")},
             models=root / "models", runs=root / "runs"))
"""


def _child(root: Path, version: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", CHILD, str(root), version], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def clone() -> Iterator[Path]:
    """A folder the host user (uid 1000) can reach: pytest's tmp_path is root's alone."""
    root = Path(tempfile.mkdtemp(prefix="convserve-clone-"))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root)


def test_a_taken_version_stops_before_training_as_the_models_owner(clone: Path) -> None:
    tmp_path = clone
    models = tmp_path / "models" / "mnist-lenet5" / "1"
    models.mkdir(parents=True)
    (tmp_path / "runs").mkdir()
    if os.geteuid() == 0:  # as in the container: root, with ./models owned by the user
        for path in (tmp_path / "models", models.parent, models):
            os.chown(path, 1000, 1000)
    done = _child(tmp_path, "1")
    assert done.returncode == 2
    assert "error: models/mnist-lenet5/1 exists already" in done.stderr
    assert list((tmp_path / "runs").iterdir()) == []  # no training started
    if os.geteuid() == 0:
        assert (tmp_path / "runs").stat().st_uid == 1000
        assert (tmp_path / "cache").stat().st_uid == 1000


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere; as root, "
                    "tests/e2e/test_container.py runs this as the image's uid 10001")
def test_an_unwritable_models_folder_stops_with_the_command_that_fixes_it(clone: Path) -> None:
    tmp_path = clone
    (tmp_path / "models").mkdir(mode=0o555)
    (tmp_path / "runs").mkdir()
    done = _child(tmp_path, "")
    assert done.returncode == 2
    assert "is not writable by uid" in done.stderr and "CONVSERVE_TRAIN_USER=" in done.stderr
