"""Array conventions of nnU-Net models trained elsewhere: axis orientation and resampling before prediction.

TotalSegmentator (2.x, ``nnunet.py``: ``nnUNet_predict_image``) prepares a CT for its nnU-Net models so: the NIfTI is
turned to nibabel's closest canonical orientation (``as_closest_canonical``: voxel axes i, j, k increase towards the
patient's right, anterior and superior), resampled to an isotropic spacing (1.5 mm for ``total``, 3 mm for
``total --fast``) by ``scipy.ndimage.zoom`` (order 1, mode "nearest") and cast to int32; nnU-Net's NIfTI readers then
give the network the array in (k, j, i) order. The labels come back by ``zoom`` of order 0 to the canonical grid and
are turned back to the image's orientation. This module does the same on the node's arrays, which are (slice, row,
column) with DICOM's patient axes (LPS: +x to the patient's left, +y posterior, +z superior).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from dicomnode.options import Orientation

#: Sign of the LPS patient axis (x, y, z) each orientation's (column, row, slice) axis follows.
_SIGNS = {Orientation.RAS: (-1, -1, 1), Orientation.LPS: (1, 1, 1)}


@dataclass(frozen=True)
class Reorientation:
    """How a loaded array (slice, row, column) becomes a model's array: its axes permuted, then some flipped."""

    axes: tuple[int, int, int]  # the loaded array's axis that becomes the model's slice, row and column axis
    flips: tuple[int, ...]  # the model's axes flipped after the permutation

    def forward(self, array: np.ndarray) -> np.ndarray:
        """The loaded array in the model's orientation."""
        moved = np.transpose(array, self.axes)
        return np.flip(moved, self.flips) if self.flips else moved

    def backward(self, array: np.ndarray) -> np.ndarray:
        """A model-orientation array back in the loaded array's orientation."""
        unflipped = np.flip(array, self.flips) if self.flips else array
        return np.transpose(unflipped, np.argsort(self.axes))

    def spacing(self, spacing_xyz: tuple[float, float, float]) -> tuple[float, float, float]:
        """Spacing (mm) along the model's (slice, row, column) axes, from the loaded (column, row, slice) spacing."""
        loaded = (spacing_xyz[2], spacing_xyz[1], spacing_xyz[0])
        return (loaded[self.axes[0]], loaded[self.axes[1]], loaded[self.axes[2]])


def reorientation(direction: np.ndarray, orientation: Orientation) -> Reorientation:
    """The closest axis-aligned reorientation of an array whose column, row and slice axes point along ``direction``'s
    columns (LPS unit vectors, a 3x3 matrix as ``LoadedSeries.direction``), as nibabel's ``as_closest_canonical``."""
    direction = np.asarray(direction, float)
    if direction.shape != (3, 3):
        raise ValueError(f"direction: expected a 3 x 3 matrix, got shape {direction.shape}")
    # loaded array axis a (0 slice, 1 row, 2 column) is index axis 2 - a (x column, y row, z slice) of ``direction``
    world = [int(np.argmax(np.abs(direction[:, 2 - a]))) for a in range(3)]
    if sorted(world) != [0, 1, 2]:
        raise ValueError("direction: two axes of the array point along the same patient axis")
    signs = _SIGNS[orientation]
    axes: list[int] = []
    flips: list[int] = []
    for model_axis, patient_axis in enumerate((2, 1, 0)):  # the model's slice axis follows z, rows y, columns x
        loaded_axis = world.index(patient_axis)
        axes.append(loaded_axis)
        if np.sign(direction[patient_axis, 2 - loaded_axis]) != signs[patient_axis]:
            flips.append(model_axis)
    return Reorientation((axes[0], axes[1], axes[2]), tuple(flips))


def resample_image(volume: np.ndarray, spacing: tuple[float, float, float], target_mm: float) -> np.ndarray:
    """``volume`` (HU) resampled to ``target_mm`` on every axis as TotalSegmentator does: zoom of order 1, mode
    "nearest", then cast to int32 (values truncated towards zero)."""
    if target_mm <= 0:
        raise ValueError(f"target_mm: must be positive, got {target_mm}")
    zoom = np.asarray(spacing, float) / target_mm
    return np.asarray(ndimage.zoom(np.asarray(volume, np.float32), zoom, order=1, mode="nearest"), np.float32).astype(np.int32)


def resample_labels(labels: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Labels brought back to ``shape`` by zoom of order 0 (nearest), as TotalSegmentator returns its labels."""
    zoom = np.asarray(shape, float) / np.asarray(labels.shape, float)
    back = ndimage.zoom(labels, zoom, order=0, mode="nearest")
    if back.shape != tuple(shape):
        raise ValueError(f"shape: labels came back as {back.shape}, not {tuple(shape)}")
    return back
