"""A kidney out of its place is named, not measured as a left or right kidney: real_ct's left kidney moved 135 mm
down (a low, pelvic kidney, as a transplant lies), the prediction its reference masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from dicomnode.analysis.measure import measure
from dicomnode.analysis.plan import Absence, decide
from dicomnode.analysis.qc import check
from dicomnode.config import QCConfig
from dicomnode.imaging.aorta import ImagePhase
from dicomnode.imaging.load import load_series
from dicomnode.renal import STRUCTURES, Side
from dicomnode.segment.model import Model, Segmentation, TissueLabel
from tests.peers import REAL_CT
from training.variants import moved_down
from training.volume_dicom import SeriesTags, write_volume_series

pytestmark = pytest.mark.skipif(not REAL_CT.exists(), reason="shared real CT not present")


def test_a_pelvic_kidney_is_reported_as_atypical_not_as_a_left_kidney(tmp_path: Path) -> None:
    labels_dir = REAL_CT / "example_ct_labels"
    ct = sitk.ReadImage(str(REAL_CT / "example_ct.nii.gz"))
    left, right = (sitk.GetArrayFromImage(sitk.ReadImage(str(labels_dir / f"kidney_{side}.nii.gz"))) > 0 for side in ("left", "right"))
    image, low = moved_down(ct, left, 45)  # 45 slices of 3 mm
    series = load_series(write_volume_series(image, tmp_path, SeriesTags(study_seed="pelvic")))
    both = low | right
    labels = np.where(both, TissueLabel.CORTEX, 0).astype(np.uint8)
    labels[ndimage.binary_erosion(both, iterations=2)] = TissueLabel.MEDULLA
    measurements = measure(series, Segmentation(labels, Model("reference-masks", Path("."), {}, "0"), "cpu"))
    plan = decide(measurements, check(measurements, ImagePhase.UNENHANCED, QCConfig()), STRUCTURES, QCConfig())
    assert plan.delivered == ()  # which of two kidneys at heights 123 mm apart is the typical one the image cannot say
    atypical = {a.side for a in plan.absent if a.reason is Absence.ATYPICAL}
    assert atypical == {Side.LEFT, Side.RIGHT}
    assert any(line.startswith("Left kidney not reported: not measured: atypical position or fusion") and "apart in height" in line for line in plan.lines())
