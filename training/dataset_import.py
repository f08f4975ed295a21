"""Import annotated cases into an nnU-Net v2 raw dataset.

The project's convention (default): region-based labels, 1 = medulla (parenchyma outside the cortex), 2 = cortex;
regions trained: parenchyma = {1, 2} and cortex = {2}, so one model gives both of the paper's targets.

TotalSegmentator's convention (``Convention.TOTALSEGMENTATOR``): images prepared as TotalSegmentator prepares them
for its nnU-Net models (closest canonical RAS orientation, isotropic spacing, int32; see ``dicomnode.segment.external_arrays``)
and its ``total`` label numbers for the kidneys, 2 = right kidney and 3 = left kidney (1, its spleen, is declared and
not drawn). It builds stand-ins for TotalSegmentator's models, to test the node's external model source.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from dicomnode.imaging.load import SeriesError, load_series
from dicomnode.options import Orientation
from dicomnode.segment.external_arrays import reorientation, resample_image, resample_labels
from training.cases import CORTEX_VALUES, PARENCHYMA_VALUES, Case

DATASET_LABELS = {"background": 0, "parenchyma": [1, 2], "cortex": 2}
REGIONS_CLASS_ORDER = [1, 2]
#: TotalSegmentator's ``total`` class map (``map_to_binary.class_map["total"]``) up to its left kidney.
TOTALSEGMENTATOR_LABELS = {"background": 0, "spleen": 1, "kidney_right": 2, "kidney_left": 3}


class Convention(str, enum.Enum):
    """How images and labels are written for nnU-Net."""

    PROJECT = "project"  # the series' own grid and orientation; medulla 1, cortex 2 (region-based)
    TOTALSEGMENTATOR = "totalsegmentator"  # RAS, isotropic, int32; kidney_right 2, kidney_left 3


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
    outside = cortex & ~parenchyma
    if outside.sum() > 0.01 * cortex.sum():
        raise CaseError(f"{case.case_id}: {int(outside.sum())} cortex voxels lie outside the parenchyma")
    labels = np.zeros(parenchyma.shape, np.uint8)
    labels[parenchyma | cortex] = 1
    labels[cortex] = 2
    return labels


def kidney_sides(image: sitk.Image, parenchyma: np.ndarray) -> np.ndarray:
    """Labels 2 (right kidney) and 3 (left kidney) of TotalSegmentator: the two largest components of ``parenchyma``
    are the kidneys; a voxel is left where it lies further to the patient's left (LPS +x) than the point halfway
    between their centres (halfway between the kidney and the image's centre where there is one kidney)."""
    components, count = ndimage.label(parenchyma)
    if count == 0:  # no kidney in view
        return np.zeros(parenchyma.shape, np.uint8)
    direction = np.array(image.GetDirection(), float).reshape(3, 3)
    x_per_index = direction[0] * np.array(image.GetSpacing())  # patient x (mm) per step along column, row, slice

    def patient_x(index_zyx: np.ndarray) -> np.ndarray:
        return image.GetOrigin()[0] + np.asarray(index_zyx, float)[..., ::-1] @ x_per_index

    sizes = ndimage.sum_labels(parenchyma, components, np.arange(1, count + 1))
    largest = [int(i) + 1 for i in np.argsort(sizes)[::-1][:2]]
    centres = [float(patient_x(np.array(c))) for c in ndimage.center_of_mass(parenchyma, components, largest)]
    if len(centres) == 1:
        centres.append(float(patient_x((np.array(parenchyma.shape) - 1) / 2)))
    midline = sum(centres) / 2
    sides = np.zeros(parenchyma.shape, np.uint8)
    left = patient_x(np.argwhere(parenchyma)) > midline
    sides[parenchyma] = np.where(left, TOTALSEGMENTATOR_LABELS["kidney_left"], TOTALSEGMENTATOR_LABELS["kidney_right"])
    return sides


def totalsegmentator_case(image: sitk.Image, labels: np.ndarray, spacing_mm: float) -> tuple[sitk.Image, sitk.Image]:
    """Image and label images as TotalSegmentator feeds its models: RAS, ``spacing_mm`` on every axis, int32 HU."""
    direction = np.array(image.GetDirection(), float).reshape(3, 3)
    turn = reorientation(direction, Orientation.RAS)
    spacing = turn.spacing(image.GetSpacing())
    volume = resample_image(turn.forward(sitk.GetArrayFromImage(image)), spacing, spacing_mm)
    sides = resample_labels(turn.forward(kidney_sides(image, labels > 0)), volume.shape)
    written = []
    for array in (volume, sides):
        out = sitk.GetImageFromArray(np.ascontiguousarray(array))
        out.SetSpacing((spacing_mm,) * 3)
        out.SetDirection((-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0))  # RAS in ITK's LPS terms
        written.append(out)
    return written[0], written[1]


def import_cases(
    cases: list[Case], raw_root: Path, dataset_id: int, name: str, convention: Convention = Convention.PROJECT, spacing_mm: float = 1.5
) -> ImportedDataset:
    """Write ``raw_root/DatasetXXX_name`` (imagesTr, labelsTr, dataset.json, groups.json) in ``convention``;
    ``spacing_mm`` is the isotropic spacing of TotalSegmentator's convention (1.5 mm ``total``, 3 mm ``--fast``)."""
    folder = raw_root / f"Dataset{dataset_id:03d}_{name}"
    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTr").mkdir(parents=True, exist_ok=True)
    groups = {}
    for case in cases:
        image = read_image(case.image)
        drawn = case_labels(case, image)
        if convention is Convention.TOTALSEGMENTATOR:
            image, labels = totalsegmentator_case(image, drawn, spacing_mm)
        else:
            labels = sitk.GetImageFromArray(drawn)
            labels.CopyInformation(image)
        sitk.WriteImage(image, str(folder / "imagesTr" / f"{case.case_id}_0000.nii.gz"))
        sitk.WriteImage(labels, str(folder / "labelsTr" / f"{case.case_id}.nii.gz"))
        groups[case.case_id] = case.group
    dataset: dict[str, object] = {"channel_names": {"0": "CT"}, "labels": DATASET_LABELS, "regions_class_order": REGIONS_CLASS_ORDER}
    if convention is Convention.TOTALSEGMENTATOR:
        dataset = {"channel_names": {"0": "CT"}, "labels": TOTALSEGMENTATOR_LABELS}
    dataset.update(numTraining=len(cases), file_ending=".nii.gz", name=name)
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=2))
    (folder / "groups.json").write_text(json.dumps(groups, indent=2))
    return ImportedDataset(folder, dataset_id, groups)
