"""A CT volume with its truth by construction (cortex and medulla per side), as the test renderers write it.

Files for ``dicomnode-train evaluate-real --cases``: ``NAME.nii.gz`` (int16 HU), ``NAME_labels.nii.gz`` (1 medulla,
2 cortex), ``NAME_{left,right}_{parenchyma,cortex}.nii.gz`` and ``NAME.json`` (what was drawn).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from dicomnode.renal import SIDES, Side

#: Which side a kidney voxel is on, in :attr:`TruthCase.sides`.
SIDE_CODES = {Side.RIGHT: 1, Side.LEFT: 2}
STRUCTURE_LABELS = {"parenchyma": (1, 2), "cortex": (2,)}


@dataclass(frozen=True)
class TruthCase:
    """An image (HU), its labels (1 medulla, 2 cortex), each kidney voxel's side (SIDE_CODES) and what was drawn."""

    image: sitk.Image
    labels: sitk.Image
    sides: sitk.Image
    metadata: dict


def write_truth_case(case: TruthCase, folder: Path, name: str) -> Path:
    """Write the case's files into ``folder``; returns the image's path."""
    folder.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.Cast(sitk.Round(case.image), sitk.sitkInt16), str(folder / f"{name}.nii.gz"))
    sitk.WriteImage(case.labels, str(folder / f"{name}_labels.nii.gz"))
    labels, sides = sitk.GetArrayFromImage(case.labels), sitk.GetArrayFromImage(case.sides)
    for side in SIDES:
        for structure, values in STRUCTURE_LABELS.items():
            mask = sitk.GetImageFromArray((np.isin(labels, values) & (sides == SIDE_CODES[side])).astype(np.uint8))
            mask.CopyInformation(case.labels)
            sitk.WriteImage(mask, str(folder / f"{name}_{side.value}_{structure}.nii.gz"))
    metadata = {**case.metadata, "spacing_mm": list(case.image.GetSpacing()), "shape_xyz": list(case.image.GetSize())}
    (folder / f"{name}.json").write_text(json.dumps(metadata, indent=2))
    return folder / f"{name}.nii.gz"


def truth_case_names(folder: Path) -> list[str]:
    """The names of the cases written into ``folder``, sorted."""
    return sorted(p.name.removesuffix(".json") for p in folder.glob("*.json"))


def as_images(reference: sitk.Image, *arrays: np.ndarray) -> list[sitk.Image]:
    """Each ``[z, y, x]`` array as an image on ``reference``'s grid."""
    made = []
    for array in arrays:
        image = sitk.GetImageFromArray(np.ascontiguousarray(array))
        image.CopyInformation(reference)
        made.append(image)
    return made
