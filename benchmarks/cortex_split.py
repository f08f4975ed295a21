"""Cortex inside a parenchyma made by another model: the intensity split against the project's model, on fresh
arterial phantoms, per side, with the phantom's own parenchyma (the split alone) and, given ``--external``, with an
external model's parenchyma (what the node does). Prints cortex volume error and Dice against the phantom's truth.

    .venv/bin/python -m benchmarks.cortex_split [--seeds 7201 7210] [--external tests/data/totalseg_standin/...]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from benchmarks.series import machine
from dicomnode.config import ExternalModelConfig
from dicomnode.imaging.load import LoadedSeries
from dicomnode.options import CortexMethod
from dicomnode.segment.cortex import split_cortex
from dicomnode.segment.external import ExternalModel, ExternalSegmenter, model_cortex
from dicomnode.segment.model import Model, ModelSide
from dicomnode.segment.segmenter import Segmenter
from tests.peers import REPO
from tests.readback import dice
from training.phantoms import Grid, Phase, make_phantom

SIDES = {"right": ModelSide.RIGHT, "left": ModelSide.LEFT}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs=2, default=[7201, 7210], metavar=("FIRST", "LAST"))
    parser.add_argument("--model", type=Path, default=REPO / "models" / "renal-synth-cpu")
    parser.add_argument("--external", type=Path, help="an nnU-Net v2 results folder under TotalSegmentator's conventions")
    parser.add_argument("--external-spacing-mm", type=float, default=3.0)
    args = parser.parse_args()
    project = Segmenter(Model.from_folder(args.model), "cpu")
    external = None
    if args.external:
        settings = ExternalModelConfig(folder=str(args.external), spacing_mm=args.external_spacing_mm)
        external = ExternalSegmenter(ExternalModel.from_config(settings, args.external), CortexMethod.INTENSITY, None, "cpu")
    grid = Grid.centred(224, 1.6, 36, 5.0)
    rows: dict[str, list[tuple[float, float]]] = {}
    print(f"machine: {machine()}; phantoms {args.seeds[0]}-{args.seeds[1]} (arterial, 224 x 224 x 36, 1.6 x 1.6 x 5 mm)")
    for seed in range(args.seeds[0], args.seeds[1] + 1):
        phantom = make_phantom(seed, Phase.ARTERIAL, grid)
        series = LoadedSeries([], phantom.image.astype(np.float32), np.array(grid.origin), np.array(grid.spacing), np.eye(3))
        spacing = (grid.spacing[2], grid.spacing[1], grid.spacing[0])
        sources = {"truth": {side: phantom.kidney_mask(side, "parenchyma") for side in SIDES}}
        if external is not None:
            sides = external.sides(series)
            sources["external"] = {side: sides == value for side, value in SIDES.items()}
        for source, parenchyma in sources.items():
            union = parenchyma["right"] | parenchyma["left"]
            methods = {
                "intensity": split_cortex(series.hu, list(parenchyma.values()), spacing) & union,
                "model": model_cortex(project, series, union),
            }
            for method, cortex in methods.items():
                for side, mask in parenchyma.items():
                    truth = phantom.kidney_mask(side, "cortex")
                    found = cortex & mask
                    error = 100.0 * (found.sum() - truth.sum()) / max(truth.sum(), 1)
                    rows.setdefault(f"{source:9} {method:10} {side:5}", []).append((error, dice(found, truth)))
        print(f"  seed {seed} done")
    print(f"\n{'parenchyma method     side':28} {'cortex volume error % (mean, mean |.|, max |.|)':48} {'cortex Dice (mean, min)'}")
    for key, values in rows.items():
        errors, dices = np.array([v[0] for v in values]), np.array([v[1] for v in values])
        print(f"{key:28} {errors.mean():+7.1f} {np.abs(errors).mean():7.1f} {np.abs(errors).max():7.1f}{'':26} {dices.mean():.3f} {dices.min():.3f}")


if __name__ == "__main__":
    main()
