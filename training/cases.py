"""Annotated cases as a researcher brings them: a manifest of images, label files and groups."""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from training.phantom_dicom import to_sitk, write_nifti
from training.phantoms import Grid, Label, Phase, make_phantom

#: Label values of the ITK-SNAP convention the importer expects by default:
#: parenchyma drawn as 1, cortex drawn over it as 2 (so medulla stays 1).
PARENCHYMA_VALUES = (1, 2)
CORTEX_VALUES = (2,)


@dataclass(frozen=True)
class Case:
    """One annotated case: an image (DICOM folder, NIfTI or NRRD), its labels and a group (e.g. CKD stage)."""

    case_id: str
    image: Path
    labels: Path | None = None  # one multi-label file ...
    parenchyma: Path | None = None  # ... or one mask per structure
    cortex: Path | None = None
    group: str = ""


def read_manifest(path: Path) -> list[Case]:
    """Read a CSV manifest with columns case, image, labels | (parenchyma, cortex), group; paths relative to it."""
    base = path.parent

    def resolve(value: str | None) -> Path | None:
        return (base / value) if value else None

    with path.open(newline="") as handle:
        return [
            Case(
                row["case"],
                base / row["image"],
                resolve(row.get("labels")),
                resolve(row.get("parenchyma")),
                resolve(row.get("cortex")),
                row.get("group", ""),
            )
            for row in csv.DictReader(handle)
        ]


def write_manifest(path: Path, cases: list[Case]) -> None:
    """Write a manifest with paths relative to its folder (with ``..`` where a file lies outside it)."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["case", "image", "labels", "group"])
        for case in cases:
            labels = os.path.relpath(case.labels, path.parent) if case.labels else ""
            writer.writerow([case.case_id, os.path.relpath(case.image, path.parent), labels, case.group])


def phantom_cases(folder: Path, seeds: list[int], phase: Phase, grid: Grid) -> list[Case]:
    """Write phantoms as NIfTI cases labelled in the ITK-SNAP convention, plus their manifest and full label maps."""
    folder.mkdir(parents=True, exist_ok=True)
    cases = []
    for seed in seeds:
        phantom = make_phantom(seed, phase, grid)
        case_id = f"phantom_{seed:05d}"
        image, labels = folder / f"{case_id}.nii.gz", folder / f"{case_id}_labels.nii.gz"
        write_nifti(phantom, image, folder / f"{case_id}_anatomy.nii.gz")
        drawn = np.zeros(phantom.labels.shape, np.uint8)
        drawn[phantom.labels == Label.MEDULLA] = 1
        drawn[phantom.labels == Label.CORTEX] = 2
        sitk.WriteImage(to_sitk(drawn, grid), str(labels))
        cases.append(Case(case_id, image, labels, group=f"CKD{phantom.anatomy.ckd_stage}"))
    write_manifest(folder / "manifest.csv", cases)
    return cases
