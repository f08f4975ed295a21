"""The training CLI as the tests run it: in a subprocess, on tiny phantoms, with one process per nnU-Net pool."""

from __future__ import annotations

import os
import subprocess
import sys

#: A phantom grid small enough to train on in a test.
TINY = ["--matrix", "64", "--pixel-mm", "5.6", "--slices", "20", "--slice-mm", "8"]


def tiny_training(work: str, dataset_id: str, trainer: str) -> list[str]:
    """Arguments of ``dicomnode-train train`` for fold 0 of 2 on the ``3d_tiny`` plan, on the CPU."""
    return [
        "train",
        "--work",
        work,
        "--dataset-id",
        dataset_id,
        "--configuration",
        "3d_tiny",
        "--folds",
        "0",
        "--n-folds",
        "2",
        "--trainer",
        trainer,
        "--device",
        "cpu",
    ]


def cli_env() -> dict[str, str]:
    """The environment with nnU-Net limited to one worker process each for preprocessing and augmentation."""
    return {**os.environ, "nnUNet_def_n_proc": "1", "nnUNet_n_proc_DA": "1"}


def training_cli(*args: str, env: dict[str, str]) -> str:
    """Run ``dicomnode-train`` with ``args``; its stdout, or a failed assertion with its output."""
    result = subprocess.run([sys.executable, "-m", "training.cli", *args], capture_output=True, text=True, env=env, timeout=1800)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout
