"""Inference: seconds and peak memory of the segment stage for the shipped model and for nnU-Net's full-size
3d_fullres plan (same data, random weights: speed only): torch and ONNX Runtime on the CPU, the whole volume and
coarse to fine (``model.cascade``), with and without test-time mirroring, and torch on a GPU where one is present.
Each configuration runs in a fresh process so peaks do not mix; each row says how many voxels' labels differ from
torch's whole-volume labels of the same model.

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

    from dicomnode.segment.model import Model
    from dicomnode.segment.nnunet_trainers.nnUNetTrainerPaper import nnUNetTrainerPaper

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


#: (device, runtime, cascade, mirroring) rows per model; the first is the reference the others are compared with.
ROWS = [
    ("cpu", "torch", False, False),
    ("cpu", "onnxruntime", False, False),
    ("cpu", "torch", True, False),
    ("cpu", "onnxruntime", True, False),
    ("cpu", "onnxruntime", False, True),
    ("cuda", "torch", False, False),
    ("cuda", "torch", True, False),
    ("cuda", "torch", False, True),
]


def measure_one(model: Path, device: str, runtime: str, cascade: bool, mirroring: bool, slices: int, labels_out: Path) -> dict:
    """Runs in a child process: load, segment one phantom series, report seconds and peak memory, save the labels."""
    import torch

    from dicomnode.imaging.load import LoadedSeries
    from dicomnode.options import Runtime
    from dicomnode.segment.model import Model
    from dicomnode.segment.segmenter import Segmenter
    from training.phantoms import Grid, make_phantom

    phantom = make_phantom(7, grid=Grid.centred(224, 1.6, slices, 5.0))
    series = LoadedSeries([], phantom.image.astype(np.float32), np.array(phantom.grid.origin), np.array(phantom.grid.spacing), np.eye(3))
    segmenter = Segmenter(Model.from_folder(model), device, mirroring, cascade=cascade, runtime=Runtime(runtime))
    warm_up = LoadedSeries([], series.hu[:16], series.origin, series.spacing, series.direction)
    segmenter.segment(warm_up)  # the node keeps its model warm: the first call's set-up is not what users wait for
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    labels = segmenter.segment(series).labels
    seconds = time.perf_counter() - start
    np.save(labels_out, labels)
    return {
        "seconds": seconds,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_gpu_mib": torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--slices", type=int, default=36)
    parser.add_argument("--child", nargs=7, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        model, device, runtime, cascade, mirroring, slices, out = args.child
        print(json.dumps(measure_one(Path(model), device, runtime, cascade == "1", mirroring == "1", int(slices), Path(out))))
        return
    import torch
    import yaml

    name = yaml.safe_load((REPO / "config.yaml").read_text())["model"]["name"]
    shipped = REPO / "models" / name
    devices = {"cpu"} | ({"cuda"} if torch.cuda.is_available() else set())
    print(f"machine: {machine()}, torch {torch.__version__}")
    print(f"input: phantom 224 x 224 x {args.slices} (1.6 mm pixels, 5 mm slices); model warmed up on a 16-slice crop first")
    print("differ: voxels whose label differs from torch's on the CPU, whole volume, no mirroring (same model)")
    print(f"{'model':>22} {'device':>6} {'runtime':>11} {'cascade':>7} {'mirroring':>9}", end=" ")
    print(f"{'seconds':>8} {'peak RSS MiB':>13} {'peak GPU MiB':>13} {'differ':>7}")
    with tempfile.TemporaryDirectory() as tmp:
        models = {name: shipped, "nnU-Net 3d_fullres": full_size_model(shipped, Path(tmp) / "fullres")}
        for label, folder in models.items():
            reference = None
            for device, runtime, cascade, mirroring in ROWS:
                if device not in devices or (label != name and (cascade or mirroring)):
                    continue  # the random-weight model is timed whole and without mirroring only
                out = Path(tmp) / "labels.npy"
                command = [sys.executable, "-m", "benchmarks.inference", "--child", str(folder), device, runtime, str(int(cascade)), str(int(mirroring))]
                child = subprocess.run([*command, str(args.slices), str(out)], capture_output=True, text=True, cwd=REPO)
                row = f"{label:>22} {device:>6} {runtime:>11} {str(cascade):>7} {str(mirroring):>9}"
                if child.returncode != 0:
                    print(f"{row} failed: {child.stderr.strip().splitlines()[-1]}")
                    continue
                r = json.loads(child.stdout.strip().splitlines()[-1])
                labels = np.load(out)
                reference = labels if reference is None else reference
                gpu = f"{r['peak_gpu_mib']:13.0f}" if r["peak_gpu_mib"] is not None else f"{'-':>13}"
                print(f"{row} {r['seconds']:8.1f} {r['peak_rss_mib']:13.0f} {gpu} {int((labels != reference).sum()):7d}", flush=True)


if __name__ == "__main__":
    main()
