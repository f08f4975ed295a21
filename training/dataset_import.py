"""Import annotated cases into an nnU-Net v2 raw dataset with region-based labels.

nnU-Net labels: 1 = medulla (parenchyma outside the cortex), 2 = cortex. Regions trained:
parenchyma = {1, 2} and cortex = {2}, so one model gives both of the paper's targets.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from dicomnode.load import SeriesError, load_series
from training.cases import CORTEX_VALUES, PARENCHYMA_VALUES, Case

DATASET_LABELS = {"background": 0, "parenchyma": [1, 2], "cortex": 2}
REGIONS_CLASS_ORDER = [1, 2]


class CaseError(ValueError):
    """A case that cannot be imported, with the reason."""


@dataclass(frozen=True)
class ImportedDataset:
    """An nnU-Net raw dataset folder and the group of each case."""

    folder: Path
    dataset_id: int
    groups: dict[str, str]


def read_image(path: Path) -> sitk.Image:
    """Read a folder holding one DICOM series (with the node's geometry checks), or a NIfTI/NRRD file."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file())
        if not files:
            raise CaseError(f"{path}: no DICOM files found")
        try:
            return load_series(files).to_sitk()
        except SeriesError as exc:
            raise CaseError(f"{path}: {exc}") from exc
    return sitk.ReadImage(str(path))


def check_same_grid(image: sitk.Image, label: sitk.Image, what: str) -> None:
    """Refuse a label whose grid differs from the image's (size, spacing, origin, direction)."""
    problems = []
    if image.GetSize() != label.GetSize():
        problems.append(f"size {label.GetSize()} != image {image.GetSize()}")
    if not np.allclose(image.GetSpacing(), label.GetSpacing(), atol=1e-3):
        problems.append(f"spacing {label.GetSpacing()} != image {image.GetSpacing()}")
    if not np.allclose(image.GetOrigin(), label.GetOrigin(), atol=1e-2):
        problems.append(f"origin {label.GetOrigin()} != image {image.GetOrigin()}")
    if not np.allclose(image.GetDirection(), label.GetDirection(), atol=1e-4):
        problems.append("direction differs from the image's")
    if problems:
        raise CaseError(f"{what}: label grid does not match the image: " + "; ".join(problems))


def case_labels(case: Case, image: sitk.Image, parenchyma_values=PARENCHYMA_VALUES, cortex_values=CORTEX_VALUES) -> np.ndarray:
    """The nnU-Net label array (0 background, 1 medulla, 2 cortex) of a case."""
    if case.labels is not None:
        drawn = sitk.ReadImage(str(case.labels))
        check_same_grid(image, drawn, case.case_id)
        values = sitk.GetArrayFromImage(drawn)
        parenchyma, cortex = np.isin(values, parenchyma_values), np.isin(values, cortex_values)
    elif case.parenchyma is not None and case.cortex is not None:
        masks = []
        for path in (case.parenchyma, case.cortex):
            mask = sitk.ReadImage(str(path))
            check_same_grid(image, mask, f"{case.case_id} ({path.name})")
            masks.append(sitk.GetArrayFromImage(mask) > 0)
        parenchyma, cortex = masks
    else:
        raise CaseError(f"{case.case_id}: give either a labels file or both parenchyma and cortex masks")
    if not parenchyma.any():
        raise CaseError(f"{case.case_id}: the parenchyma label is empty")
    outside = cortex & ~parenchyma
    if outside.sum() > 0.01 * cortex.sum():
        raise CaseError(f"{case.case_id}: {int(outside.sum())} cortex voxels lie outside the parenchyma")
    labels = np.zeros(parenchyma.shape, np.uint8)
    labels[parenchyma | cortex] = 1
    labels[cortex] = 2
    return labels


def import_cases(cases: list[Case], raw_root: Path, dataset_id: int, name: str) -> ImportedDataset:
    """Write ``raw_root/DatasetXXX_name`` (imagesTr, labelsTr, dataset.json, groups.json)."""
    folder = raw_root / f"Dataset{dataset_id:03d}_{name}"
    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTr").mkdir(parents=True, exist_ok=True)
    groups = {}
    for case in cases:
        image = read_image(case.image)
        labels = sitk.GetImageFromArray(case_labels(case, image))
        labels.CopyInformation(image)
        sitk.WriteImage(image, str(folder / "imagesTr" / f"{case.case_id}_0000.nii.gz"))
        sitk.WriteImage(labels, str(folder / "labelsTr" / f"{case.case_id}.nii.gz"))
        groups[case.case_id] = case.group
    dataset = {
        "channel_names": {"0": "CT"},
        "labels": DATASET_LABELS,
        "regions_class_order": REGIONS_CLASS_ORDER,
        "numTraining": len(cases),
        "file_ending": ".nii.gz",
        "name": name,
    }
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=2))
    (folder / "groups.json").write_text(json.dumps(groups, indent=2))
    return ImportedDataset(folder, dataset_id, groups)
