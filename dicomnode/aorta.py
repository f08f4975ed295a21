"""Image evidence for the contrast phase: the attenuation of the abdominal aorta on one axial slice."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from scipy import ndimage

#: Aorta attenuation (HU) at or above which a slice looks arterial, and below which it looks unenhanced.
ARTERIAL_HU, UNENHANCED_HU = 200.0, 100.0


def aorta_hu(path: Path) -> float | None:
    """Mean HU of the brightest aorta-sized spot just anterior to the spine, or None if no body or spine is found.

    The body is the largest region above -300 HU; the spine is the largest dense (> 300 HU) region near the body's midline in its
    posterior half; the aorta is searched 10-45 mm anterior to the spine's front edge.
    """
    try:
        ds = pydicom.dcmread(path)
        hu = ds.pixel_array.astype(np.float32) * float(ds.get("RescaleSlope", 1) or 1) + float(ds.get("RescaleIntercept", 0) or 0)
        row_mm, col_mm = (float(v) for v in ds.PixelSpacing)
        orientation = [float(v) for v in ds.ImageOrientationPatient]
    except Exception:  # no usable pixels or geometry: no image evidence
        return None
    if orientation[0] < 0:
        hu = hu[:, ::-1]
    if orientation[4] < 0:
        hu = hu[::-1, :]
    components, count = ndimage.label(hu > -300)
    if count == 0:
        return None
    body = components == (np.argmax(np.bincount(components.ravel())[1:]) + 1)
    rows, cols = np.nonzero(body)
    centre_row, centre_col = rows.mean(), cols.mean()
    half_width = int(25 / col_mm)
    near_midline = np.zeros_like(body)
    near_midline[int(centre_row):, max(int(centre_col) - half_width, 0): int(centre_col) + half_width] = True
    bone, count = ndimage.label((hu > 300) & body & near_midline)
    if count == 0:
        return None
    # the vertebral body is the largest dense region there; an enhanced aorta can be dense too, but is smaller
    spine = bone == (np.argmax(np.bincount(bone.ravel())[1:]) + 1)
    spine_front = int(np.nonzero(spine)[0].min())
    top, bottom = max(spine_front - int(45 / row_mm), 0), max(spine_front - int(10 / row_mm), 0)
    left, right = max(int(centre_col - 30 / col_mm), 0), int(centre_col + 45 / col_mm)
    size = (max(int(round(8 / row_mm)), 1), max(int(round(8 / col_mm)), 1))
    local = ndimage.uniform_filter(np.clip(hu, -200, 600), size=size)
    window = local[top:bottom, left:right]
    soft = hu[top:bottom, left:right] < 600
    return float(window[soft].max()) if window.size and soft.any() else None
