"""Plausibility priors for the QC gate from hand-drawn real kidneys (KiTS19 label maps: 1 kidney, 2 tumour).

Each kidney is a connected component of the label map; its kidney volume (tumour excluded), volume with tumour
and the longest side of its bounding box are measured on the file's own grid.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

#: Components smaller than this (ml) are fragments of a kidney drawn in pieces, not a kidney.
MIN_COMPONENT_ML = 5.0
PERCENTILES = (0, 0.5, 1, 5, 50, 95, 99, 99.5, 100)


@dataclass(frozen=True)
class KidneyShape:
    """One hand-drawn kidney."""

    case: str
    kidney_ml: float
    with_tumour_ml: float
    longest_mm: float


def kidney_shapes(label_file: Path) -> list[KidneyShape]:
    """The (at most two) largest kidney components of one label map."""
    image = sitk.ReadImage(str(label_file))
    labels = sitk.GetArrayViewFromImage(image)
    spacing = np.array(image.GetSpacing())[::-1]  # array axes (k, j, i)
    voxel_ml = float(np.prod(spacing) / 1000.0)
    components, count = ndimage.label(labels > 0)
    if count == 0:
        return []
    sizes = ndimage.sum_labels(labels > 0, components, np.arange(1, count + 1))
    shapes = []
    for index in np.argsort(sizes)[::-1][:2]:
        if sizes[index] * voxel_ml < MIN_COMPONENT_ML:
            continue
        box = ndimage.find_objects((components == index + 1).astype(np.uint8))[0]
        inside = components[box] == index + 1
        shapes.append(
            KidneyShape(
                label_file.name.split(".")[0],
                float((labels[box][inside] == 1).sum() * voxel_ml),
                float(inside.sum() * voxel_ml),
                float(max((s.stop - s.start) * d for s, d in zip(box, spacing))),
            )
        )
    return shapes


def priors(kits_folder: Path) -> dict[str, object]:
    """Percentiles of kidney volume, volume with tumour and length over every kidney of the KiTS19 label maps."""
    shapes = [shape for path in sorted(kits_folder.glob("case_*.nii.gz")) for shape in kidney_shapes(path)]
    if not shapes:
        raise ValueError(f"kits_folder: no case_*.nii.gz label maps in {kits_folder}")
    summary: dict[str, object] = {"kidneys": len(shapes), "cases": len({s.case for s in shapes}), "percentiles": list(PERCENTILES)}
    for field in ("kidney_ml", "with_tumour_ml", "longest_mm"):
        values = np.array([getattr(s, field) for s in shapes])
        summary[field] = [round(float(v), 1) for v in np.percentile(values, PERCENTILES)]
    summary["shapes"] = [asdict(s) for s in shapes]
    return summary


def write_priors(kits_folder: Path, out: Path) -> dict[str, object]:
    """Compute the priors and write them as JSON; returns them."""
    summary = priors(kits_folder)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=1))
    return summary
