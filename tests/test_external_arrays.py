"""The array an external model sees is the array TotalSegmentator would give it: nibabel's closest canonical (RAS)
orientation in nnU-Net's (k, j, i) order and TotalSegmentator's isotropic resampling, for series in any axis-aligned
orientation; and the labels come back onto the series' own grid. These fail if the convention were flipped."""

from __future__ import annotations

import itertools

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from dicomnode.options import Orientation
from dicomnode.segment.external_arrays import reorientation, resample_image, resample_labels
from training.dataset_import import TOTALSEGMENTATOR_LABELS, kidney_sides

SHAPE = (4, 5, 6)  # slices, rows, columns
SPACING = (0.8, 0.9, 2.5)  # column, row, slice mm


def _directions() -> list[np.ndarray]:
    """All 48 axis-aligned directions: every permutation of the patient axes, each with either sign."""
    found = []
    for order in itertools.permutations(range(3)):
        for signs in itertools.product((1, -1), repeat=3):
            direction = np.zeros((3, 3))
            for column, (axis, sign) in enumerate(zip(order, signs)):
                direction[axis, column] = sign
            found.append(direction)
    return found


def _patient_points(direction: np.ndarray) -> np.ndarray:
    """LPS position (x, y, z) of every voxel of a SHAPE array, origin 0."""
    k, j, i = np.indices(SHAPE)
    steps = np.stack([i, j, k], -1) * np.array(SPACING)
    return steps @ direction.T


@pytest.mark.parametrize("direction", _directions(), ids=lambda d: "".join("xyz"[int(np.argmax(np.abs(c)))] + "+-"[int(c.sum() < 0)] for c in d.T))
def test_ras_puts_the_patients_right_anterior_superior_corner_last_on_every_axis(direction: np.ndarray) -> None:
    points = _patient_points(direction)
    turn = reorientation(direction, Orientation.RAS)

    def each(convert, array: np.ndarray) -> np.ndarray:
        return np.stack([convert(array[..., c]) for c in range(3)], -1)

    model = each(turn.forward, points)
    # columns run to the patient's right (-x LPS), rows anterior (-y), slices superior (+z)
    assert np.all(np.diff(model[..., 0], axis=2) < 0) and np.all(np.diff(model[..., 1], axis=1) < 0) and np.all(np.diff(model[..., 2], axis=0) > 0)
    lps = each(reorientation(direction, Orientation.LPS).forward, points)
    assert np.all(np.diff(lps[..., 0], axis=2) > 0) and np.all(np.diff(lps[..., 1], axis=1) > 0)
    assert np.array_equal(each(turn.backward, model), points)
    sizes = {"z": SPACING[2], "y": SPACING[1], "x": SPACING[0]}
    column_axis = [int(np.argmax(np.abs(direction[:, c]))) for c in range(3)]  # patient axis of column, row, slice
    expected = tuple(sizes["xyz"[column_axis.index(axis)]] for axis in (2, 1, 0))
    assert turn.spacing(SPACING) == expected


@pytest.mark.parametrize("direction", [np.eye(3), np.diag([-1.0, 1.0, -1.0]), np.array([[0, 0, 1], [1, 0, 0], [0, -1, 0]], float)])
def test_ras_array_is_what_nibabel_closest_canonical_gives_nnunet(direction: np.ndarray) -> None:
    """nnU-Net's NIfTI readers hand the network ``get_fdata().transpose(2, 1, 0)`` of the canonical image."""
    volume = np.random.default_rng(0).normal(size=SHAPE).astype(np.float32)
    affine = np.eye(4)
    affine[:3, :3] = np.diag([-1.0, -1.0, 1.0]) @ direction @ np.diag(SPACING)  # LPS -> RAS world, voxel (i, j, k)
    canonical = nib.as_closest_canonical(nib.Nifti1Image(volume.transpose(2, 1, 0), affine))
    expected = np.asarray(canonical.get_fdata(), np.float32).transpose(2, 1, 0)
    turn = reorientation(direction, Orientation.RAS)
    assert np.array_equal(turn.forward(volume), expected)
    assert np.allclose(turn.spacing(SPACING), canonical.header.get_zooms()[::-1])


def test_resampling_follows_totalsegmentator_shape_and_int32_and_labels_come_back() -> None:
    volume = np.full((36, 224, 224), 100.7, np.float32)
    volume[10:20, 50:100, 60:120] = -50.9
    resampled = resample_image(volume, (5.0, 1.6, 1.6), 3.0)
    assert resampled.dtype == np.int32 and resampled.shape == (60, 119, 119)  # round(n * spacing / 3 mm)
    assert set(np.unique(resampled)) >= {100, -50}  # truncated towards zero, as numpy's astype(int32)
    labels = (resampled < 0).astype(np.uint8) * 2
    back = resample_labels(labels, volume.shape)
    assert back.shape == volume.shape
    truth = volume < 0
    assert (back.astype(bool) & truth).sum() / truth.sum() > 0.9
    with pytest.raises(ValueError, match="target_mm"):
        resample_image(volume, (5.0, 1.6, 1.6), 0)


def test_training_labels_give_the_patients_right_kidney_label_2_in_any_orientation() -> None:
    """The importer's sides come from patient x (LPS: the left kidney at larger x), not from array columns."""
    mask = np.zeros((8, 20, 30), bool)
    mask[2:6, 5:15, 3:8] = True  # low column index
    mask[2:6, 5:15, 22:27] = True  # high column index
    for flip_x, right_columns in ((1.0, slice(3, 8)), (-1.0, slice(22, 27))):
        image = sitk.GetImageFromArray(mask.astype(np.uint8))
        image.SetDirection((flip_x, 0, 0, 0, 1, 0, 0, 0, 1))
        sides = kidney_sides(image, mask)
        assert np.all(sides[2:6, 5:15, right_columns] == TOTALSEGMENTATOR_LABELS["kidney_right"]), flip_x
        assert np.count_nonzero(sides == TOTALSEGMENTATOR_LABELS["kidney_left"]) == mask.sum() // 2
