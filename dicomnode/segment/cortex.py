"""Cortex and medulla inside a parenchyma mask made by another model, by intensity (arterial phase).

In the corticomedullary (arterial) phase the cortex enhances far above the medulla (about 150-250 HU against 60-100
HU). Each kidney's interior (its mask eroded by one pixel within each slice, out of the partial volume of its rim) is
split by Otsu's threshold of its lightly smoothed HU; the rim then takes the class of the nearest interior voxel, so
the partial volume with fat or sinus does not turn outer cortex into medulla.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

#: Gaussian smoothing (voxels, within each slice) of the HU before the threshold, against noise.
SMOOTH_VOXELS = 1.5
#: A kidney with fewer interior voxels than this is split without the rim rule.
MIN_INTERIOR = 50
#: Histogram bins of Otsu's threshold.
BINS = 128


def otsu_threshold(values: np.ndarray) -> float:
    """The threshold that maximises the between-class variance of ``values`` (Otsu 1979)."""
    values = np.asarray(values, float)
    if values.size == 0:
        raise ValueError("values: empty")
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return low
    counts, edges = np.histogram(values, BINS, (low, high))
    share = counts / counts.sum()
    below = np.cumsum(share)[:-1]  # share of the lower class when it ends after each bin
    mean_below = np.cumsum(share * (edges[:-1] + edges[1:]) / 2)[:-1]
    mean_all = float(np.sum(share * (edges[:-1] + edges[1:]) / 2))
    between = (mean_all * below - mean_below) ** 2 / np.maximum(below * (1 - below), 1e-12)
    return float(edges[1 + int(np.argmax(between))])


def split_cortex(hu: np.ndarray, kidneys: list[np.ndarray], spacing: tuple[float, float, float]) -> np.ndarray:
    """The cortex (bool, on ``hu``'s grid) inside each kidney mask of ``kidneys`` (slice, row, column arrays whose
    voxels measure ``spacing`` mm along slice, row and column)."""
    cortex = np.zeros(hu.shape, bool)
    in_plane = np.zeros((3, 3, 3), bool)
    in_plane[1] = ndimage.generate_binary_structure(2, 1)
    for kidney in kidneys:
        if not kidney.any():
            continue
        box = ndimage.find_objects(kidney.astype(np.uint8))[0]
        box = tuple(slice(max(s.start - 2, 0), s.stop + 2) for s in box)
        mask = kidney[box]
        smooth = ndimage.gaussian_filter(np.asarray(hu[box], np.float32), (0, SMOOTH_VOXELS, SMOOTH_VOXELS))
        interior = ndimage.binary_erosion(mask, in_plane)
        if interior.sum() < MIN_INTERIOR:
            cortex[box] |= mask & (smooth > otsu_threshold(smooth[mask]))
            continue
        inner_cortex = interior & (smooth > otsu_threshold(smooth[interior]))
        # every voxel of the mask takes the class of its nearest interior voxel
        _, nearest = ndimage.distance_transform_edt(~interior, sampling=spacing, return_indices=True)
        labelled = inner_cortex[tuple(nearest)]
        cortex[box] |= mask & labelled
    return cortex
