"""Volumes and sides from a labelled volume (the phantom's ground truth as the prediction), in any patient position."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from dicomnode.analysis.measure import measure, median_at
from dicomnode.analysis.qc import check
from dicomnode.config import QCConfig
from dicomnode.imaging.aorta import ImagePhase
from dicomnode.imaging.load import LoadedSeries
from dicomnode.segment.model import Model, Segmentation, TissueLabel
from tests.peers import REAL_CT
from tests.readback import dice
from training.evaluate import as_series
from training.phantoms import Grid, Label, Phase, make_phantom

MODEL = Model("truth", None, {}, "0")


def _series_and_truth(seed: int, phase: Phase = Phase.ARTERIAL):
    phantom = make_phantom(seed, phase, grid=Grid.centred(96, 3.6, 30, 6.0))
    grid = phantom.grid
    series = LoadedSeries([], phantom.image.astype(np.float32), np.array(grid.origin), np.array(grid.spacing), np.eye(3))
    labels = np.zeros_like(phantom.labels)
    labels[phantom.labels == Label.MEDULLA] = TissueLabel.MEDULLA
    labels[phantom.labels == Label.CORTEX] = TissueLabel.CORTEX
    return phantom, series, labels


def _repositioned(series: LoadedSeries, labels: np.ndarray, flips: tuple[int, ...], shift_mm: tuple[float, float, float]):
    """The same patient stored with the array axes in ``flips`` reversed (directions negated), shifted in space.

    Reversing columns and rows is how a prone patient or a scanner with other row/column directions stores the
    image; reversing slices is a feet-first acquisition. Patient coordinates of every voxel stay the same.
    """
    direction = np.eye(3)
    origin = series.origin.astype(float).copy()
    for axis in flips:
        column = 2 - axis  # array axis (z, y, x) -> direction column (x, y, z)
        origin[column] += (series.hu.shape[axis] - 1) * series.spacing[column]
        direction[column, column] = -1.0
    moved = LoadedSeries([], np.ascontiguousarray(np.flip(series.hu, flips)), origin + np.array(shift_mm), series.spacing, direction)
    return moved, np.ascontiguousarray(np.flip(labels, flips))


def test_volumes_and_sides_match_ground_truth() -> None:
    phantom, series, labels = _series_and_truth(21)
    result = measure(series, Segmentation(labels, MODEL, "cpu"))
    assert set(result.kidneys) == {"left", "right"}
    for side in ("left", "right"):
        for structure in ("parenchyma", "cortex", "medulla"):
            assert result.kidneys[side].volume(structure) == pytest.approx(phantom.volumes_ml[f"{structure}_{side}"], rel=1e-6)
    left, right = phantom.volumes_ml["parenchyma_left"], phantom.volumes_ml["parenchyma_right"]
    assert result.left_split == pytest.approx(left / (left + right))
    assert result.notes == [] and result.midline_source == "spine"


@pytest.mark.parametrize(
    "flips, shift_mm",
    [
        ((), (150.0, 0.0, 0.0)),  # patient far off the scanner's centre: x = 0 is not the midline
        ((), (-150.0, 40.0, 300.0)),
        ((1, 2), (120.0, 0.0, 0.0)),  # prone, or rows and columns stored the other way round
        ((0, 2), (-130.0, 0.0, 0.0)),  # feet first
        ((2,), (150.0, 0.0, 0.0)),  # columns reversed only
        ((1,), (0.0, 0.0, 0.0)),  # rows reversed only
    ],
)
def test_sides_come_from_the_anatomy_in_any_position(flips, shift_mm) -> None:
    phantom, series, labels = _series_and_truth(25)
    moved, moved_labels = _repositioned(series, labels, flips, shift_mm)
    result = measure(moved, Segmentation(moved_labels, MODEL, "cpu"))
    assert result.midline_source == "spine"
    assert result.midline_x == pytest.approx(shift_mm[0], abs=6.0)
    for side in ("left", "right"):
        assert result.kidneys[side].parenchyma_ml == pytest.approx(phantom.volumes_ml[f"parenchyma_{side}"], rel=1e-6)
        truth = np.flip(phantom.kidney_mask(side, "parenchyma"), flips)
        assert np.array_equal(result.kidneys[side].parenchyma, truth), side


def test_sides_from_the_body_outline_where_no_spine_is_found() -> None:
    phantom, series, labels = _series_and_truth(26, Phase.NONCONTRAST)
    series.hu[ndimage.binary_dilation(phantom.labels == Label.SPINE, iterations=2)] = 40.0  # no vertebra visible
    moved, moved_labels = _repositioned(series, labels, (), (140.0, 0.0, 0.0))
    result = measure(moved, Segmentation(moved_labels, MODEL, "cpu"))
    assert result.midline_source == "body outline"
    assert result.kidneys["left"].parenchyma_ml == pytest.approx(phantom.volumes_ml["parenchyma_left"], rel=1e-6)
    assert result.kidneys["left"].spine_offset_mm is None


def test_two_components_on_one_side_keep_the_larger_and_say_so() -> None:
    _, series, labels = _series_and_truth(22)
    x = np.broadcast_to(series.origin[0] + np.arange(labels.shape[2]) * series.spacing[0], labels.shape)
    labels[x > 0] = 0  # the right kidney only ...
    labels[:6, 40:46, 8:14] = TissueLabel.CORTEX  # ... and a 17 ml block low down at the body's right side
    series.hu[:6, 40:46, 8:14] = 40.0  # of soft tissue's attenuation
    result = measure(series, Segmentation(labels, MODEL, "cpu"))
    assert set(result.kidneys) == {"right"}
    assert result.notes == ["more than one kidney-sized component beside the spine on the right side; one was kept"]


def test_a_larger_component_out_of_a_kidneys_place_is_not_taken_for_the_kidney() -> None:
    phantom, series, labels = _series_and_truth(27)
    labels[:, 5:20, 30:66] = TissueLabel.CORTEX  # 400+ ml in front of the spine, e.g. bowel or liver taken for kidney
    result = measure(series, Segmentation(labels, MODEL, "cpu"))
    for side in ("left", "right"):
        assert result.kidneys[side].parenchyma_ml == pytest.approx(phantom.volumes_ml[f"parenchyma_{side}"], rel=1e-6)
    assert result.predicted_ml - result.total_parenchyma_ml > 400


def test_specks_are_ignored_and_a_missing_kidney_is_absent() -> None:
    phantom, series, labels = _series_and_truth(22)
    x = np.broadcast_to(series.origin[0] + np.arange(labels.shape[2]) * series.spacing[0], labels.shape)
    labels[x <= 0] = 0  # remove the right kidney
    labels[0, 0, 0] = TissueLabel.CORTEX  # a one-voxel speck
    result = measure(series, Segmentation(labels, MODEL, "cpu"))
    assert set(result.kidneys) == {"left"}
    assert result.kidneys["left"].parenchyma_ml == pytest.approx(phantom.volumes_ml["parenchyma_left"], rel=1e-6)
    assert result.predicted_ml == pytest.approx(phantom.volumes_ml["parenchyma_left"] + series.voxel_ml, rel=1e-6)


def test_no_kidney() -> None:
    _, series, labels = _series_and_truth(23)
    result = measure(series, Segmentation(np.zeros_like(labels), MODEL, "cpu"))
    assert result.kidneys == {} and result.predicted_ml == 0.0


def test_a_blob_smaller_than_any_kidney_is_no_kidney_unless_the_edge_cuts_it() -> None:
    """15 ml inside the image cannot be a whole kidney (the smallest hand-drawn KiTS19 kidney is 43 ml); at the
    image's edge it may be the part of one that is in view."""
    _, series, labels = _series_and_truth(23)
    blob = np.zeros(labels.shape, bool)
    side = int(round((15.0 / series.voxel_ml) ** (1 / 3)))
    z0, y0, x0 = labels.shape[0] // 2, labels.shape[1] // 2 + 8, labels.shape[2] // 2 + 20  # beside the spine
    blob[z0 : z0 + side, y0 : y0 + side, x0 : x0 + side] = True
    series.hu[blob | np.roll(blob, labels.shape[0] - z0, axis=0)] = 40.0  # soft tissue, here and on the first slice
    inside = measure(series, Segmentation(np.where(blob, TissueLabel.CORTEX, 0).astype(np.uint8), MODEL, "cpu"))
    assert inside.kidneys == {} and inside.predicted_ml == pytest.approx(blob.sum() * series.voxel_ml)
    on_edge = np.roll(blob, labels.shape[0] - z0, axis=0)  # the same blob on the first slice
    assert on_edge[0].any()
    cut = measure(series, Segmentation(np.where(on_edge, TissueLabel.CORTEX, 0).astype(np.uint8), MODEL, "cpu"))
    assert list(cut.kidneys) == ["left"] and cut.kidneys["left"].touches_edge


def test_the_pair_at_one_height_is_taken_over_a_component_lower_down() -> None:
    phantom = make_phantom(28, grid=Grid.centred(96, 3.6, 44, 6.0))
    labels = np.zeros_like(phantom.labels)
    labels[phantom.labels == Label.MEDULLA] = TissueLabel.MEDULLA
    labels[phantom.labels == Label.CORTEX] = TissueLabel.CORTEX
    last = int(np.nonzero(labels.any(axis=(0, 1)))[0].max())  # the left kidney's last column (+x is left)
    labels, image = labels[:, :, : last + 1], phantom.image[:, :, : last + 1].astype(np.float32)  # it now reaches the edge
    labels[1:4, 56:62, last - 12 : last - 2] = TissueLabel.CORTEX  # 14 ml beside the spine on the left, 110 mm lower, inside the image
    grid = phantom.grid
    series = LoadedSeries([], image, np.array(grid.origin), np.array(grid.spacing), np.eye(3))
    result = measure(series, Segmentation(labels, MODEL, "cpu"))
    assert result.kidneys["left"].parenchyma_ml == pytest.approx(phantom.volumes_ml["parenchyma_left"], rel=1e-6)
    assert result.kidneys["left"].touches_edge


# --- real pixels: a kidney is chosen by anatomy before size --------------------------------------------------------


@pytest.fixture(scope="module")
def real_ct():
    """The shared real CT as a series, its reference kidney masks and liver mask (model-made, TotalSegmentator)."""
    if not REAL_CT.exists():
        pytest.skip("shared real CT not present")
    image = sitk.ReadImage(str(REAL_CT / "example_ct.nii.gz"))
    masks = {name: sitk.ReadImage(str(REAL_CT / "example_ct_labels" / f"{name}.nii.gz")) for name in ("kidney_left", "kidney_right", "liver")}
    return image, masks


def _kidney_labels(masks: dict[str, np.ndarray]) -> np.ndarray:
    """The reference kidneys as a prediction: cortex with a medulla inside."""
    both = masks["kidney_left"] | masks["kidney_right"]
    labels = np.where(both, TissueLabel.CORTEX, 0).astype(np.uint8)
    labels[ndimage.binary_erosion(both, iterations=2)] = TissueLabel.MEDULLA
    return labels


def _blob_in_liver(series: LoadedSeries, liver: np.ndarray, kidney: np.ndarray, radius_mm: float) -> np.ndarray:
    """A ball inside the liver, as far up as it fits above ``kidney`` (in a kidney's place beside the spine)."""
    spacing = np.array(series.spacing_zyx)
    deep = ndimage.distance_transform_edt(np.pad(liver, 1), sampling=spacing)[1:-1, 1:-1, 1:-1] > radius_mm + 3  # the image's edge too
    centre = np.argwhere(kidney).mean(axis=0)
    points = np.argwhere(deep)
    target = points[np.argmin(np.sum(((points - centre) * spacing * [0.3, 1.0, 1.0]) ** 2, axis=1))]
    z, y, x = np.indices(liver.shape)
    return ((z - target[0]) * spacing[0]) ** 2 + ((y - target[1]) * spacing[1]) ** 2 + ((x - target[2]) * spacing[2]) ** 2 <= radius_mm**2


def _arrays(image, masks, lowest: int = 0):
    series = as_series(image[:, :, lowest:])
    return series, {name: sitk.GetArrayFromImage(mask[:, :, lowest:]) > 0 for name, mask in masks.items()}


def test_a_low_kidney_on_the_lower_edge_is_kept_over_a_smaller_blob_in_the_liver(real_ct) -> None:
    """Real CT A: a low right kidney reached the lower edge and a 45 ml piece of liver was kept instead of it."""
    image, masks = real_ct
    right = sitk.GetArrayFromImage(masks["kidney_right"]) > 0
    z = np.flatnonzero(right.any(axis=(1, 2)))  # slices from the feet up
    lowest = int(z[0] + 0.3 * (z[-1] - z[0]))  # the image now starts 30 % up the right kidney
    series, cut = _arrays(image, masks, lowest)
    blob = _blob_in_liver(series, cut["liver"], cut["kidney_right"], 22.0)
    labels = _kidney_labels(cut)
    labels[blob & ~(cut["kidney_left"] | cut["kidney_right"])] = TissueLabel.CORTEX
    assert 35 < blob.sum() * series.voxel_ml < cut["kidney_right"].sum() * series.voxel_ml
    result = measure(series, Segmentation(labels, MODEL, "cpu"))
    kept = result.kidneys["right"]
    assert dice(kept.parenchyma, cut["kidney_right"]) > 0.99
    assert kept.touches_edge and kept.cut_share > 0.3 and kept.fat_share > 0.5
    assert dice(result.kidneys["left"].parenchyma, cut["kidney_left"]) > 0.99
    report = check(result, ImagePhase.UNENHANCED, QCConfig())
    assert ("cut off by the field of view", "right") in {(f.rule.value, f.scope) for f in report.findings}


def test_a_blob_in_the_liver_larger_than_the_kidney_is_not_taken_for_it(real_ct) -> None:
    """Real CT B: kidney predicted inside the liver; a blob there has liver around it, a kidney perirenal fat."""
    image, masks = real_ct
    series, whole = _arrays(image, masks)
    spacing = np.array(series.spacing_zyx)
    inner = ndimage.distance_transform_edt(np.pad(whole["liver"], 1), sampling=spacing)[1:-1, 1:-1, 1:-1]
    centre = np.unravel_index(np.argmax(inner), inner.shape)
    z, y, x = np.indices(inner.shape)
    ellipsoid = sum(((i - c) * d / r) ** 2 for i, c, d, r in zip((z, y, x), centre, spacing, (70.0, 45.0, 45.0))) <= 1
    blob = ellipsoid & (inner > 6.0)  # inside the liver, liver all around it
    labels = _kidney_labels(whole)
    labels[blob & ~(whole["kidney_left"] | whole["kidney_right"])] = TissueLabel.CORTEX
    assert blob.sum() > whole["kidney_right"].sum()
    result = measure(series, Segmentation(labels, MODEL, "cpu"))
    assert dice(result.kidneys["right"].parenchyma, whole["kidney_right"]) > 0.99
    assert result.kidneys["right"].fat_share > 0.5
    stray = result.predicted_ml - result.total_parenchyma_ml
    assert stray == pytest.approx(blob.sum() * series.voxel_ml, rel=0.02)
    findings = check(result, ImagePhase.UNENHANCED, QCConfig()).lines()
    assert any("predicted as kidney outside the kidneys kept" in line for line in findings)


def test_a_component_too_dense_for_parenchyma_is_no_kidney() -> None:
    """Bone or excreted contrast (mean above 350 HU) predicted as kidney is stray prediction, not a kidney."""
    _, series, labels = _series_and_truth(23)
    dense = series.hu.copy()
    dense[labels > 0] = 600.0
    result = measure(LoadedSeries([], dense, series.origin, series.spacing, series.direction), Segmentation(labels, MODEL, "cpu"))
    assert result.kidneys == {} and result.predicted_ml > 80


@pytest.mark.parametrize("shape", [(12, 40, 33), (3, 4, 3), (2, 1, 7)])
def test_median_at_the_core_equals_scipys_median_filter_there(shape: tuple[int, int, int]) -> None:
    rng = np.random.default_rng(sum(shape))
    planes = rng.integers(-200, 400, shape).astype(np.float32)
    where = rng.random(shape) > 0.6
    assert np.array_equal(median_at(planes, where, 5), ndimage.median_filter(planes, size=(1, 5, 5))[where])
