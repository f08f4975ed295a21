"""A kidney's interior: cortex (outer shell and columns of Bertin), medulla, sinus fat and pelvis, in one of several
styles, drawn inside a kidney mask."""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from training.synth_anatomy import ATLAS_MM


class InteriorStyle(enum.Enum):
    """How a kidney's medulla and sinus are drawn: real kidneys range from many small pyramids around ample sinus fat
    to one confluent block of medulla with no sinus fat at all (young, atrophic or CKD kidneys)."""

    PYRAMIDS = "pyramids"  # 7-12 pyramids between columns of Bertin, sinus fat
    FEW = "few"  # 2-4 large pyramids, sinus fat
    CONFLUENT = "confluent"  # one block of medulla (no columns), sinus fat
    NO_SINUS = "no_sinus"  # one block of medulla filling the sinus, a collecting system only where it is dilated


#: Share of kidneys drawn in each style.
_INTERIOR_STYLES = {InteriorStyle.PYRAMIDS: 0.4, InteriorStyle.FEW: 0.2, InteriorStyle.CONFLUENT: 0.25, InteriorStyle.NO_SINUS: 0.15}


@dataclass(frozen=True)
class Interior:
    """Codes in a kidney's box: 0 outside, 1 cortex, 2 medulla, 3 sinus fat, 4 pelvis."""

    codes: np.ndarray
    cortex_mm: float
    pyramids: int
    style: InteriorStyle
    sinus_centre: np.ndarray  # mm from the box origin (x, y, z)


_CORTEX_MM = (2.5, 10.0)  # a thin cortex in chronic kidney disease
_SHELL_SHARE = (0.3, 0.55)  # of the whole mask: caps the cortex thickness of thin kidneys
_COLUMN_HALF_MM = (1.2, 2.5)
_PYRAMIDS = {InteriorStyle.PYRAMIDS: (7, 13), InteriorStyle.FEW: (2, 5)}
_MAX_SINUS_SHARE = 0.3
_SINUS_SIZE = (0.35, 1.15)  # times the default sinus ellipsoid: scant to ample sinus fat
_DILATED_PELVIS_SHARE = 0.12  # a dilated, water-dense collecting system


def kidney_interior(kidney: np.ndarray, centre: np.ndarray, long_axis: np.ndarray, hilum: np.ndarray, rng: np.random.Generator) -> Interior:
    """Cortex (outer shell and, between pyramids, columns of Bertin), medulla, sinus and pelvis inside a kidney mask,
    in a style drawn from _INTERIOR_STYLES.

    ``centre`` is the kidney's centre in mm from the mask's first voxel (x, y, z); directions are unit vectors.
    """
    depth = ndimage.distance_transform_edt(np.pad(kidney, 1), sampling=ATLAS_MM)[1:-1, 1:-1, 1:-1]
    voxels = np.argwhere(kidney)
    offsets = voxels[:, ::-1] * ATLAS_MM - centre
    frame = np.stack([long_axis, hilum, np.cross(long_axis, hilum)])
    local = offsets @ frame.T  # (u along the long axis, h towards the hilum, w)
    reach = np.abs(local).max(axis=0)
    d = depth[tuple(voxels.T)]
    styles = list(_INTERIOR_STYLES)
    style = styles[int(rng.choice(len(styles), p=list(_INTERIOR_STYLES.values())))]
    shell_share = rng.uniform(*_SHELL_SHARE)
    cortex_mm = float(np.clip(min(rng.uniform(*_CORTEX_MM), np.quantile(d, shell_share)), *_CORTEX_MM))
    sinus, sinus_centre, sinus_axes = _sinus(local, d, reach, cortex_mm, rng.uniform(*_SINUS_SIZE), rng)
    dilated = rng.random() < _DILATED_PELVIS_SHARE
    pelvis_axes = sinus_axes * (np.array([0.55, 0.7, 0.6]) if dilated else np.array([0.3, 0.5, 0.4]))
    pelvis = sinus & _ellipsoid(local, sinus_centre + np.array([0.0, 0.6 * sinus_axes[1], 0.0]), pelvis_axes)
    if style is InteriorStyle.NO_SINUS:
        sinus = pelvis if dilated else np.zeros_like(sinus)
    if style in _PYRAMIDS:
        directions = _pyramid_directions(int(rng.integers(*_PYRAMIDS[style])), rng)
        column = _near_pyramid_border(local - sinus_centre, reach, directions, rng.uniform(*_COLUMN_HALF_MM))
    else:
        directions, column = np.zeros((1, 3)), np.zeros(len(voxels), bool)
    codes = np.where(sinus, np.where(pelvis, 4, 3), np.where((d > cortex_mm) & ~column, 2, 1)).astype(np.uint8)
    out = np.zeros(kidney.shape, np.uint8)
    out[tuple(voxels.T)] = codes
    return Interior(out, float(cortex_mm), len(directions), style, centre + frame.T @ sinus_centre)


def _sinus(local: np.ndarray, depth: np.ndarray, reach: np.ndarray, cortex_mm: float, size: float, rng: np.random.Generator):
    """Sinus fat: an ellipsoid towards the hilum (``size`` times the usual one), a cortex deep except at the hilum lip,
    at most 30 % of the kidney."""
    medial = local[:, 1].max()
    centre = np.array([0.0, rng.uniform(0.2, 0.4) * medial, 0.0])
    axes = np.array([rng.uniform(0.5, 0.7), rng.uniform(0.6, 0.8), rng.uniform(0.4, 0.6)]) * reach * size
    lip = (local[:, 1] > 0.5 * medial) & (np.abs(local[:, 0]) < 0.35 * reach[0])
    allowed = (depth > cortex_mm + 1.0) | lip
    sinus = allowed & _ellipsoid(local, centre, axes)
    while sinus.mean() > _MAX_SINUS_SHARE:
        axes = axes * 0.85
        sinus = allowed & _ellipsoid(local, centre, axes)
    return sinus, centre, axes


def _ellipsoid(points: np.ndarray, centre: np.ndarray, axes: np.ndarray) -> np.ndarray:
    return np.sum(((points - centre) / axes) ** 2, axis=1) <= 1.0


def _pyramid_directions(count: int, rng: np.random.Generator) -> np.ndarray:
    """Well-spread unit directions (kidney frame, normalised by its reach) that avoid the hilum."""
    candidates = rng.normal(size=(400, 3))
    candidates /= np.linalg.norm(candidates, axis=1, keepdims=True)
    candidates = candidates[candidates[:, 1] < 0.5]
    chosen = [candidates[0]]
    for _ in range(count - 1):
        nearest = np.max(candidates @ np.array(chosen).T, axis=1)
        chosen.append(candidates[int(np.argmin(nearest))])
    return np.array(chosen)


def _near_pyramid_border(offsets: np.ndarray, reach: np.ndarray, directions: np.ndarray, half_mm: float) -> np.ndarray:
    """Voxels within ``half_mm`` of the border between two pyramids' sectors (the columns of Bertin)."""
    unit = offsets / reach
    unit /= np.maximum(np.linalg.norm(unit, axis=1, keepdims=True), 1e-6)
    cosines = np.sort(unit @ directions.T, axis=1)[:, -2:]
    gap = np.arccos(np.clip(cosines[:, 0], -1, 1)) - np.arccos(np.clip(cosines[:, 1], -1, 1))
    return np.linalg.norm(offsets, axis=1) * np.sin(gap / 2) < half_mm
