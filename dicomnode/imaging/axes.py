"""The array axes of a series in patient axes: which to flip so that columns run to the patient's left (+x), rows
to posterior (+y) and slices to superior (+z), whatever the patient's position and the scanner's directions."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def canonical_flips(direction: np.ndarray) -> tuple[int, ...]:
    """Array axes (z, y, x order) to flip so columns run to +x, rows to +y and slices to +z."""
    return tuple(axis for axis, column in ((2, 0), (1, 1), (0, 2)) if direction[column, column] < 0)


def plane_in_patient_axes(plane: np.ndarray, row_cosines: Sequence[float] | np.ndarray, column_cosines: Sequence[float] | np.ndarray) -> np.ndarray:
    """One axial slice (rows, columns) flipped so that columns run to +x and rows to +y, from its row and column
    direction cosines (ImageOrientationPatient): :func:`canonical_flips` within the plane, as a view."""
    flips = tuple(axis for axis, cosine in ((1, row_cosines[0]), (0, column_cosines[1])) if cosine < 0)
    return np.flip(plane, flips) if flips else plane
