"""Two-process DDP training with torchrun on the CPU (gloo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from training.checkpoints import load_checkpoint

pytestmark = pytest.mark.slow  # two processes train for real

REPO = Path(__file__).resolve().parents[2]


def test_torchrun_two_processes_train_and_agree(tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node=2", "-m", "training", "train", "--config", "mnist-lenet5",
               "--set", "data.train_limit=1024", "--set", "data.eval_limit=500",
               "--set", "optim.epochs=2", "--set", "optim.batch_size=32",
               "--set", "device=cpu", "--set", f"output_dir={out}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "[rank 0]" in result.stderr and "backend" not in result.stdout
    state = load_checkpoint(out)
    assert state["world_size"] == 2
    digests = state["rank_weight_digests"]
    assert len(digests) == 2 and digests[0] == digests[1]  # both ranks hold the same weights
    assert len(state["rng"]) == 2  # each rank's RNG state, for resuming
    lines = (out / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]  # written by rank 0 only
    # Each rank trained on its half: 2 x 512 images = 16 steps of 32 per rank and epoch.
    assert state["lr_scheduler"]["last_epoch"] == 2 * 16
    printed = json.loads(result.stdout.strip().splitlines()[-1])
    assert printed["top1"] > 0.6 and printed["images"] == 500
    assert torch.equal(torch.tensor(state["test_metrics"]["confusion"]).sum(), torch.tensor(500))
