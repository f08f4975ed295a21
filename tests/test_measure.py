"""Volumes and sides from a labelled volume (the phantom's ground truth as the prediction), in any patient position."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from dicomnode.load import LoadedSeries
from dicomnode.measure import measure
from dicomnode.segment import CORTEX, MEDULLA, Model, Segmentation
from training.phantoms import Grid, Label, Phase, make_phantom

MODEL = Model("truth", None, {}, "0")


def _series_and_truth(seed: int, phase: Phase = Phase.ARTERIAL):
    phantom = make_phantom(seed, phase, grid=Grid.centred(96, 3.6, 30, 6.0))
    grid = phantom.grid
    series = LoadedSeries([], phantom.image.astype(np.float32), np.array(grid.origin), np.array(grid.spacing), np.eye(3))
    labels = np.zeros_like(phantom.labels)
    labels[phantom.labels == Label.MEDULLA] = MEDULLA
    labels[phantom.labels == Label.CORTEX] = CORTEX
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
    labels[:6, 40:46, 8:14] = CORTEX  # ... and a 17 ml block low down at the body's right side
    result = measure(series, Segmentation(labels, MODEL, "cpu"))
    assert set(result.kidneys) == {"right"}
    assert result.notes == ["more than one kidney-sized component beside the spine on the right side; one was kept"]


def test_a_larger_component_out_of_a_kidneys_place_is_not_taken_for_the_kidney() -> None:
    phantom, series, labels = _series_and_truth(27)
    labels[:, 5:20, 30:66] = CORTEX  # 400+ ml in front of the spine, e.g. bowel or liver taken for kidney
    result = measure(series, Segmentation(labels, MODEL, "cpu"))
    for side in ("left", "right"):
        assert result.kidneys[side].parenchyma_ml == pytest.approx(phantom.volumes_ml[f"parenchyma_{side}"], rel=1e-6)
    assert result.predicted_ml - result.total_parenchyma_ml > 400


def test_specks_are_ignored_and_a_missing_kidney_is_absent() -> None:
    phantom, series, labels = _series_and_truth(22)
    x = np.broadcast_to(series.origin[0] + np.arange(labels.shape[2]) * series.spacing[0], labels.shape)
    labels[x <= 0] = 0  # remove the right kidney
    labels[0, 0, 0] = CORTEX  # a one-voxel speck
    result = measure(series, Segmentation(labels, MODEL, "cpu"))
    assert set(result.kidneys) == {"left"}
    assert result.kidneys["left"].parenchyma_ml == pytest.approx(phantom.volumes_ml["parenchyma_left"], rel=1e-6)
    assert result.predicted_ml == pytest.approx(phantom.volumes_ml["parenchyma_left"] + series.voxel_ml, rel=1e-6)


def test_no_kidney() -> None:
    _, series, labels = _series_and_truth(23)
    result = measure(series, Segmentation(np.zeros_like(labels), MODEL, "cpu"))
    assert result.kidneys == {} and result.predicted_ml == 0.0


def test_the_pair_at_one_height_is_taken_over_a_component_lower_down() -> None:
    phantom = make_phantom(28, grid=Grid.centred(96, 3.6, 44, 6.0))
    labels = np.zeros_like(phantom.labels)
    labels[phantom.labels == Label.MEDULLA] = MEDULLA
    labels[phantom.labels == Label.CORTEX] = CORTEX
    last = int(np.nonzero(labels.any(axis=(0, 1)))[0].max())  # the left kidney's last column (+x is left)
    labels, image = labels[:, :, : last + 1], phantom.image[:, :, : last + 1].astype(np.float32)  # it now reaches the edge
    labels[1:4, 56:62, last - 12 : last - 2] = CORTEX  # 14 ml beside the spine on the left, 110 mm lower, inside the image
    grid = phantom.grid
    series = LoadedSeries([], image, np.array(grid.origin), np.array(grid.spacing), np.eye(3))
    result = measure(series, Segmentation(labels, MODEL, "cpu"))
    assert result.kidneys["left"].parenchyma_ml == pytest.approx(phantom.volumes_ml["parenchyma_left"], rel=1e-6)
    assert result.kidneys["left"].touches_edge
