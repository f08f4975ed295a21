"""Coarse-to-fine inference (``model.cascade``, on by default) against the whole volume at full overlap:
per-side parenchyma Dice against the truth drops by no more than 0.01, on a phantom and on the shared real CT, with
the kidneys measured as the node measures them and the same QC verdict on predictions outside the kidneys; and the
cascade falls back to the whole volume when its coarse pass finds no kidney."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from dicomnode.analysis.measure import measure
from dicomnode.config import QCConfig
from dicomnode.imaging.load import LoadedSeries
from dicomnode.segment.model import Model
from dicomnode.segment.segmenter import Segmenter, boxes_around, kidney_sized
from tests.peers import REAL_CT, REPO
from tests.readback import dice
from training.phantoms import Grid, make_phantom

pytestmark = pytest.mark.slow
MODEL = Model.from_folder(REPO / "models" / "renal-synth-cpu")


@pytest.fixture(scope="module")
def segmenters() -> tuple[Segmenter, Segmenter]:
    return Segmenter(MODEL, "cpu", cascade=False), Segmenter(MODEL, "cpu", cascade=True)


def _per_side_dice(series: LoadedSeries, segmenter: Segmenter, truth: dict[str, np.ndarray]) -> tuple[dict[str, float], float]:
    """Per-side parenchyma Dice against the truth, and the ml predicted outside the two kidneys kept (what QC checks)."""
    measured = measure(series, segmenter.segment(series))
    kidneys = measured.kidneys
    stray = measured.predicted_ml - sum(k.parenchyma_ml for k in kidneys.values())
    return {side: dice(kidneys[side].parenchyma, truth[side]) if side in kidneys else 0.0 for side in truth}, stray


def _compare(series: LoadedSeries, truth: dict[str, np.ndarray], segmenters: tuple[Segmenter, Segmenter]) -> None:
    (full, full_stray), (cascade, cascade_stray) = (_per_side_dice(series, s, truth) for s in segmenters)
    print(f"\nper-side parenchyma Dice, whole volume {full}, cascade {cascade}; stray ml {full_stray:.1f}, {cascade_stray:.1f}")
    for side in truth:
        assert cascade[side] >= full[side] - 0.01, (side, full, cascade)
    limit = QCConfig().max_stray_ml  # the cascade neither hides a stray prediction from QC nor makes one up
    assert (cascade_stray > limit) == (full_stray > limit), (full_stray, cascade_stray)


def test_cascade_keeps_the_accuracy_of_whole_volume_inference_on_a_phantom(segmenters) -> None:
    grid = Grid.centred(224, 1.6, 36, 5.0)
    phantom = make_phantom(4242, grid=grid, ckd_stage=0)
    series = LoadedSeries([], phantom.image.astype(np.float32), np.array(grid.origin), np.array(grid.spacing), np.eye(3))
    _compare(series, {side: phantom.kidney_mask(side, "parenchyma") for side in ("left", "right")}, segmenters)


@pytest.mark.skipif(not REAL_CT.exists(), reason="shared real CT not present")
def test_cascade_keeps_the_accuracy_of_whole_volume_inference_on_the_real_ct(segmenters) -> None:
    image = sitk.ReadImage(str(REAL_CT / "example_ct.nii.gz"))
    direction = np.array(image.GetDirection()).reshape(3, 3)
    series = LoadedSeries([], sitk.GetArrayFromImage(image).astype(np.float32), np.array(image.GetOrigin()), np.array(image.GetSpacing()), direction)
    truth = {side: sitk.GetArrayFromImage(sitk.ReadImage(str(REAL_CT / "example_ct_labels" / f"kidney_{side}.nii.gz"))) > 0 for side in ("left", "right")}
    _compare(series, truth, segmenters)


def test_refined_boxes_surround_the_chosen_kidney_sized_components_with_a_margin() -> None:
    mask = np.zeros((40, 100, 100), bool)
    mask[10:30, 20:40, 10:30] = True  # 8 ml at 1 mm
    mask[10:30, 20:40, 70:90] = True
    mask[5:7, 90:92, 50:52] = True  # a speck: not a kidney
    assert kidney_sized(mask, np.array([1.0, 1.0, 1.0]))[1] == {}  # 8 ml each: below the 10 ml a kidney has at least
    mask[10:40, 20:50, 10:40] = True
    mask[10:40, 20:50, 60:90] = True
    spacing = np.array([2.0, 1.0, 3.0])  # (z, y, x) mm
    components, sizes = kidney_sized(mask, spacing)
    assert sorted(sizes.values()) == [162.0, 162.0]  # 30 x 30 x 30 voxels of 6 mm3; the speck is left out
    boxes = boxes_around(components, list(sizes), spacing)
    assert len(boxes) == 2 and all(box[0] == slice(0, 40) for box in boxes)  # 30 mm margin = 15 slices, clipped
    assert sorted((box[2].start, box[2].stop) for box in boxes) == [(0, 50), (50, 100)]  # 10 columns of 3 mm each side
    assert len(boxes_around(components, list(sizes)[:1], spacing)) == 1
    mask[10:40, 20:50, 40:60] = True  # joined into one component: one box
    components, sizes = kidney_sized(mask, spacing)
    assert len(boxes_around(components, list(sizes), spacing)) == 1


def test_without_a_kidney_in_the_coarse_pass_the_whole_volume_is_segmented(segmenters, caplog: pytest.LogCaptureFixture) -> None:
    air = LoadedSeries([], np.full((12, 64, 64), -1000.0, np.float32), np.zeros(3), np.array([1.6, 1.6, 5.0]), np.eye(3))
    with caplog.at_level("INFO", logger="dicomnode.segment.segmenter"):
        labels = segmenters[1].segment(air).labels
    assert labels.shape == air.hu.shape and not labels.any()
    assert "no kidney-sized component in the coarse pass; segmenting the whole volume" in caplog.text
