"""Inference: seconds and peak memory of the segment stage, with and without test-time mirroring, for the
shipped model and for nnU-Net's full-size 3d_fullres plan (same data, random weights: speed only), on the CPU
and on a GPU where one is present. Each configuration runs in a fresh process so peaks do not mix.

    .venv/bin/python -m benchmarks.inference [--slices 36]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.series import machine
from tests.peers import REPO


def full_size_model(shipped: Path, target: Path) -> Path:
    """The shipped model's plans with the 3d_fullres configuration and a randomly initialised checkpoint."""
    import torch
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from dicomnode.nnunet_trainers.nnUNetTrainerPaper import nnUNetTrainerPaper
    from dicomnode.segment import Model

    shutil.copytree(shipped, target, ignore=shutil.ignore_patterns("fold_*", "evaluation"))
    plans = json.loads((target / "plans.json").read_text())
    dataset = json.loads((target / "dataset.json").read_text())
    manager = PlansManager(plans)
    config = manager.get_configuration("3d_fullres")
    network = nnUNetTrainerPaper.build_network_architecture(
        manager, config, 1, manager.get_label_manager(dataset).num_segmentation_heads, enable_deep_supervision=False
    )
    checkpoint = torch.load(shipped / f"fold_{Model.from_folder(shipped).fold}" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    checkpoint["network_weights"] = network.state_dict()
    checkpoint["init_args"]["configuration"] = "3d_fullres"
    (target / "fold_0").mkdir()
    torch.save(checkpoint, target / "fold_0" / "checkpoint_final.pth")
    (target / "model.yaml").write_text(f"name: {target.name}\nfold: 0\n")
    return target


def measure_one(model: Path, device: str, mirroring: bool, slices: int) -> dict:
    """Runs in a child process: load, segment one phantom series, report seconds and peak memory."""
    import torch

    from dicomnode.load import LoadedSeries
    from dicomnode.segment import Model, Segmenter
    from training.phantoms import Grid, make_phantom

    torch.set_num_threads(max(torch.get_num_threads(), 1))
    phantom = make_phantom(7, grid=Grid.centred(224, 1.6, slices, 5.0))
    series = LoadedSeries([], phantom.image.astype(np.float32), np.array(phantom.grid.origin), np.array(phantom.grid.spacing), np.eye(3))
    segmenter = Segmenter(Model.from_folder(model), device, mirroring)
    warm_up = LoadedSeries([], series.hu[:16], series.origin, series.spacing, series.direction)
    segmenter.segment(warm_up)  # the node keeps its model warm: the first call's set-up is not what users wait for
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    segmenter.segment(series)
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_gpu_mib": torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--slices", type=int, default=36)
    parser.add_argument("--child", nargs=4, metavar=("MODEL", "DEVICE", "MIRRORING", "SLICES"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        model, device, mirroring, slices = args.child
        print(json.dumps(measure_one(Path(model), device, mirroring == "1", int(slices))))
        return
    import torch
    import yaml

    name = yaml.safe_load((REPO / "config.yaml").read_text())["model"]["name"]
    shipped = REPO / "models" / name
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(f"machine: {machine()}")
    print(f"input: phantom 224 x 224 x {args.slices} (1.6 mm pixels, 5 mm slices); model warmed up on a 16-slice crop first")
    print(f"{'model':>22} {'device':>6} {'mirroring':>9} {'seconds':>8} {'peak RSS MiB':>13} {'peak GPU MiB':>13}")
    with tempfile.TemporaryDirectory() as tmp:
        models = {name: shipped, "nnU-Net 3d_fullres": full_size_model(shipped, Path(tmp) / "fullres")}
        for label, folder in models.items():
            for device in devices:
                for mirroring in (False, True):
                    child = subprocess.run(
                        [sys.executable, "-m", "benchmarks.inference", "--child", str(folder), device, str(int(mirroring)), str(args.slices)],
                        capture_output=True,
                        text=True,
                        cwd=REPO,
                    )
                    if child.returncode != 0:
                        print(f"{label:>22} {device:>6} {str(mirroring):>9} failed: {child.stderr.strip().splitlines()[-1]}")
                        continue
                    r = json.loads(child.stdout.strip().splitlines()[-1])
                    gpu = f"{r['peak_gpu_mib']:13.0f}" if r["peak_gpu_mib"] is not None else f"{'-':>13}"
                    print(f"{label:>22} {device:>6} {str(mirroring):>9} {r['seconds']:8.1f} {r['peak_rss_mib']:13.0f} {gpu}")


if __name__ == "__main__":
    main()
