"""Landmarks found by thresholds on axial CT: the body, the vertebral column and the patient's midline.

Shared by the phase check (selection) and by measurement and QC. Every function works on arrays flipped into
patient axes (see :func:`dicomnode.imaging.axes.canonical_flips`): array columns run to the patient's left (+x), rows to posterior (+y),
slices to superior (+z), whatever the patient's position on the table and the scanner's row and column directions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

#: HU above which a voxel inside the body counts as bone (cancellous vertebral bone is about 150-400 HU).
BONE_HU = 180.0
#: HU above which a voxel is inside the patient's body (fat is about -100 HU, air -1000 HU).
BODY_HU = -300.0
#: Smallest cross-section (mm2) of a vertebra on one axial slice.
MIN_SPINE_MM2 = 150.0
#: The vertebral column lies within this distance (mm) left or right of the body's centre.
SPINE_OFF_CENTRE_MM = 60.0
#: A dense region this large (mm2) includes the vertebral body; a smaller one is the posterior arch alone, as in
#: osteoporotic vertebrae whose body is below 180 HU.
VERTEBRAL_BODY_MM2 = 600.0
#: Typical depth (mm) of a lumbar vertebral body and spinal canal in front of the arch (about 30 + 15 mm).
BODY_AND_CANAL_MM = 40.0


@dataclass(frozen=True)
class SliceLandmarks:
    """Body and spine of one axial slice in patient axes; positions in mm from the slice array's corner."""

    body: np.ndarray  # bool [row, column]
    body_centre: tuple[float, float]  # (x, y) mm
    spine: np.ndarray | None  # bool mask of the vertebra, or None where none was found
    spine_centre: tuple[float, float] | None  # (x, y) mm
    spine_front_mm: float | None  # y (mm) of the vertebral body's anterior edge near its centre (estimated where
    # only the arch is dense)


def slice_landmarks(hu: np.ndarray, pixel_mm: tuple[float, float]) -> SliceLandmarks | None:
    """Body and vertebra of one axial slice (``hu`` in patient axes, ``pixel_mm`` = (x, y) spacing).

    The body is the largest region above -300 HU, holes filled; the vertebra is the most posterior bone region
    (> 180 HU, >= 1.5 cm2) whose centre lies behind the body's centre and within 60 mm of it left to right, closed
    by a 4 mm disc and filled.
    Returns None where no body is found.
    """
    sx, sy = pixel_mm
    components, count = ndimage.label(hu > BODY_HU)
    if count == 0:
        return None
    body = components == (np.argmax(np.bincount(components.ravel())[1:]) + 1)
    body = ndimage.binary_fill_holes(body)
    rows, cols = np.nonzero(body)
    centre = (float(cols.mean() * sx), float(rows.mean() * sy))
    bone, count = ndimage.label((hu > BONE_HU) & body)
    best, best_area = None, 0.0
    if count:
        index = np.arange(1, count + 1)
        # counts and centres of all bone regions in three passes over the slice, not scipy's per-label statistics (a pass per label)
        flat = bone.ravel()
        row_of, col_of = (axis.ravel() for axis in np.indices(bone.shape))
        pixels = np.bincount(flat, minlength=count + 1)[1:]
        areas = pixels * sx * sy
        centres = zip(np.bincount(flat, row_of, count + 1)[1:] / pixels, np.bincount(flat, col_of, count + 1)[1:] / pixels)
        best_row = -1.0
        for label, area, (row, col) in zip(index, areas, centres):
            posterior = row * sy >= centre[1] + 5.0
            # the most posterior candidate: an enhanced aorta can be as large as a vertebral arch, but lies in front
            if area >= MIN_SPINE_MM2 and posterior and abs(col * sx - centre[0]) <= SPINE_OFF_CENTRE_MM and row > best_row:
                best, best_area, best_row = int(label), float(area), float(row)
    if best is None:
        return SliceLandmarks(body, centre, None, None, None)
    # cancellous bone of an older patient's vertebra can be below 180 HU: close and fill the cortical ring
    closing = disc(max(1, int(round(4.0 / min(sx, sy)))))
    spine = np.zeros(bone.shape, bool)
    box = ndimage.find_objects(bone, max_label=best)[best - 1]
    # closed inside the vertebra's box with a margin of the disc's size, so that it looks as on the whole plane
    pad = closing.shape[0]
    closed = ndimage.binary_fill_holes(ndimage.binary_closing(np.pad(bone[box] == best, pad), structure=closing))
    spine[box] = closed[pad:-pad, pad:-pad]
    rows, cols = np.nonzero(spine)
    spine_x = float(np.median(cols) * sx)
    near = np.abs(cols * sx - spine_x) <= 6.0
    front = float(rows[near].min() * sy)
    if best_area < VERTEBRAL_BODY_MM2:  # the arch alone: the body's front edge lies about 40 mm ahead of it
        front -= BODY_AND_CANAL_MM
    return SliceLandmarks(body, centre, spine, (spine_x, float(rows.mean() * sy)), front)


@dataclass(frozen=True)
class Midline:
    """The patient's midline and the spine, per slice of a volume in patient axes (NaN where not found)."""

    spine_x: np.ndarray  # mm, patient x of the vertebra's centre per slice
    spine_y: np.ndarray  # mm, patient y of the vertebra's centre per slice
    body_x: np.ndarray  # mm, patient x of the body's centre per slice

    def x_at(self, slices: np.ndarray) -> tuple[float, str]:
        """Midline x (mm) over the given slice indices, and what it came from: the spine, else the body."""
        for values, source in ((self.spine_x, "spine"), (self.body_x, "body outline")):
            found = values[slices]
            found = found[np.isfinite(found)]
            if found.size:
                return float(np.median(found)), source
        return float("nan"), "nothing"


def find_midline(hu: np.ndarray, origin: np.ndarray, spacing: np.ndarray, slices: np.ndarray | None = None, step_mm: float = 2.5) -> Midline:
    """Spine and body centre on the given slices (default all) of a volume in patient axes, thinned in-plane to
    about ``step_mm``; NaN on the others.

    ``origin`` is the patient position (x, y, z) of voxel [0, 0, 0] and ``spacing`` the (x, y, z) voxel size.
    """
    stride = max(1, int(round(step_mm / min(spacing[0], spacing[1]))))
    pixel = (float(spacing[0] * stride), float(spacing[1] * stride))
    nz = hu.shape[0]
    spine_x, spine_y, body_x = (np.full(nz, np.nan) for _ in range(3))
    for k in range(nz) if slices is None else slices:
        marks = slice_landmarks(hu[k, ::stride, ::stride], pixel)
        if marks is None:
            continue
        body_x[k] = origin[0] + marks.body_centre[0]
        if marks.spine_centre is not None:
            spine_x[k] = origin[0] + marks.spine_centre[0]
            spine_y[k] = origin[1] + marks.spine_centre[1]
    return Midline(spine_x, spine_y, body_x)


def disc(radius: int) -> np.ndarray:
    y, x = np.ogrid[-radius : radius + 1, -radius : radius + 1]
    return x**2 + y**2 <= radius**2
