"""The checks that do not trust the model, on real pixels: kidney left out of a mask, and a neighbour taken in as cortex.

Masks are the shared real CTs' reference kidneys (s0009: corrected by people; real_ct: TotalSegmentator's, with its
spleen), labelled cortex in an outer shell and medulla inside, then broken on purpose: the core of a kidney removed
(as a model that leaves the medulla out), or the spleen next to the left kidney added as cortex.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from dicomnode.analysis.measure import Measurements, measure
from dicomnode.analysis.qc import Rule, check
from dicomnode.config import QCConfig
from dicomnode.imaging.aorta import ImagePhase
from dicomnode.imaging.load import LoadedSeries, load_series
from dicomnode.renal import Side
from dicomnode.segment.model import Model, Segmentation, TissueLabel
from tests.peers import REAL_CT, SHARED
from training.volume_dicom import SeriesTags, write_volume_series

S0009 = SHARED / "data" / "real_ct2" / "s0009"
pytestmark = pytest.mark.skipif(not S0009.exists() or not REAL_CT.exists(), reason="shared real CTs not present")
MODEL = Model("reference-masks", Path("."), {"version": "test"}, "0")
LIMITS = QCConfig()


def _mask(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path))) > 0


def _series(image: Path, folder: Path) -> LoadedSeries:
    return load_series(write_volume_series(sitk.ReadImage(str(image)), folder, SeriesTags(study_seed=image.name)))


def _labels(kidneys: np.ndarray, shell_voxels: int) -> np.ndarray:
    """Cortex in an outer shell of ``shell_voxels``, medulla inside."""
    labels = np.where(kidneys, TissueLabel.CORTEX, 0).astype(np.uint8)
    labels[ndimage.binary_erosion(kidneys, iterations=shell_voxels)] = TissueLabel.MEDULLA
    return labels


def _findings(series: LoadedSeries, labels: np.ndarray, phase: ImagePhase = ImagePhase.UNENHANCED) -> tuple[Measurements, set[tuple[Rule, str]]]:
    measurements = measure(series, Segmentation(labels, MODEL, "cpu"))
    report = check(measurements, phase, LIMITS)
    return measurements, {(f.rule, f.scope) for f in report.findings}


@pytest.fixture(scope="module")
def s0009(tmp_path_factory) -> tuple[LoadedSeries, dict[Side, np.ndarray]]:
    return _series(S0009 / "ct.nii.gz", tmp_path_factory.mktemp("s0009")), {side: _mask(S0009 / f"kidney_{side.value}.nii.gz") for side in Side}


def test_reference_kidneys_pass_both_checks(s0009) -> None:
    series, kidneys = s0009
    measurements, findings = _findings(series, _labels(kidneys[Side.LEFT] | kidneys[Side.RIGHT], 3))
    assert set(measurements.kidneys) == {Side.LEFT, Side.RIGHT}
    assert not {rule for rule, _ in findings} & {Rule.LEFT_OUT, Rule.THICK_CORTEX}, findings
    for kidney in measurements.kidneys.values():
        assert kidney.left_out_share < LIMITS.max_left_out_share / 2 and kidney.thick_cortex_share == 0.0


def test_a_kidney_whose_core_is_left_out_is_withheld_for_it(s0009) -> None:
    """The left kidney's voxels deeper than 5 mm removed (about a third of it, as when a model leaves the medulla out):
    the left-out check fires on the left kidney only."""
    series, kidneys = s0009
    depth = ndimage.distance_transform_edt(kidneys[Side.LEFT], sampling=series.spacing_zyx)
    hollow = kidneys[Side.LEFT] & (depth <= 5.0)
    assert 0.2 < 1 - hollow.sum() / kidneys[Side.LEFT].sum() < 0.5
    measurements, findings = _findings(series, _labels(hollow | kidneys[Side.RIGHT], 3))
    assert (Rule.LEFT_OUT, Side.LEFT) in findings and (Rule.LEFT_OUT, Side.RIGHT) not in findings, findings
    assert measurements.kidneys[Side.LEFT].left_out_share > 2 * LIMITS.max_left_out_share


def test_a_neighbour_taken_in_as_cortex_is_withheld_for_it(tmp_path: Path) -> None:
    """real_ct's spleen within 25 mm of the left kidney added to it as cortex: the thick-cortex check fires on the left
    kidney only (the unmodified masks pass)."""
    labels_dir = REAL_CT / "example_ct_labels"
    series = _series(REAL_CT / "example_ct.nii.gz", tmp_path / "ct")
    left, right, spleen = (_mask(labels_dir / f"{name}.nii.gz") for name in ("kidney_left", "kidney_right", "spleen"))
    near = ndimage.distance_transform_edt(~left, sampling=series.spacing_zyx) <= 25.0
    taken = spleen & near & ~left
    assert taken.sum() * series.voxel_ml > 20.0
    labels = _labels(left | right, 1)
    _, plain = _findings(series, labels, ImagePhase.ARTERIAL)  # the cortex is checked where it means something
    assert not {rule for rule, _ in plain} & {Rule.LEFT_OUT, Rule.THICK_CORTEX}, plain
    labels[taken] = TissueLabel.CORTEX
    measurements, findings = _findings(series, labels, ImagePhase.ARTERIAL)
    assert (Rule.THICK_CORTEX, Side.LEFT) in findings and (Rule.THICK_CORTEX, Side.RIGHT) not in findings, findings
