"""Benchmark inputs: large phantom series written as DICOM, and helpers shared by the benchmark scripts."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path

from training.phantom_dicom import StudyFiles, write_study
from training.phantoms import Grid, Phase


def big_study(folder: Path, slices: int, slice_mm: float, phases: tuple[Phase, ...] = (Phase.ARTERIAL,), seed: int = 2024) -> StudyFiles:
    """A 512 x 512 phantom study (0.7 mm pixels, 358 mm field of view) with ``slices`` slices of ``slice_mm``."""
    return write_study(seed, folder, phases=phases, grid=Grid.centred(512, 0.7, slices, slice_mm))


def machine() -> str:
    """One line naming the machine the figures come from."""
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), platform.processor())
    cores = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    memory = next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal"))
    gpu = subprocess.run(["sh", "-c", "nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null"], capture_output=True, text=True).stdout.strip()
    return f"{cpu}, {cores} cores, {int(memory) // 2**20} GiB RAM, GPU: {gpu or 'none'}"
