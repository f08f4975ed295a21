"""A case's field of view: the output grid around both kidneys, cut into one, or above or below them."""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np

from training.phantoms import Grid
from training.synth.tissues import CORTEX, KIDNEY_TISSUES, LEFT, MEDULLA, RIGHT
from training.synth_anatomy import ATLAS_MM, Atlas, Tissue, triple


@dataclass(frozen=True)
class OutputGrid:
    """Spacing (x, y, z mm) and largest shape (z, y, x) of the written cases."""

    spacing: tuple[float, float, float] = (1.6, 1.6, 5.0)
    max_shape: tuple[int, int, int] = (72, 256, 256)
    max_work_mm: tuple[float, float, float] = (1.7, 1.7, 2.0)  # finer grid the anatomy is rendered on


DEFAULT_GRID = OutputGrid()


class View(str, enum.Enum):
    """What a case's field of view holds."""

    KIDNEYS = "kidneys"  # both kidneys whole, with random margins
    CUT = "cut"  # a kidney cut by one edge of the image
    NO_KIDNEY = "no kidney"  # above or below the kidneys (or an anatomy without any): nothing to find


_VIEW_SHARES = {View.KIDNEYS: 0.7, View.CUT: 0.15, View.NO_KIDNEY: 0.15}


def view_shares(no_kidney_share: float | None = None) -> list[float]:
    """The chance of each View (in its order), with ``no_kidney_share`` for View.NO_KIDNEY where given."""
    if no_kidney_share is None:
        return list(_VIEW_SHARES.values())
    if not 0.0 <= no_kidney_share <= 1.0:
        raise ValueError(f"no_kidney_share: must lie between 0 and 1, got {no_kidney_share}")
    rest = 1.0 - no_kidney_share
    others = _VIEW_SHARES[View.KIDNEYS] + _VIEW_SHARES[View.CUT]
    return [rest * _VIEW_SHARES[View.KIDNEYS] / others, rest * _VIEW_SHARES[View.CUT] / others, no_kidney_share]


_NO_KIDNEY_MIN_MM = 40.0  # the least height of a field of view without kidney


def field_of_view(tissues: np.ndarray, atlas: Atlas, grid: OutputGrid, view: View, rng: np.random.Generator) -> tuple[Grid, tuple[int, int, int], View]:
    """An output grid for ``view``: around both kidneys with random margins (x: either side, y: front/back,
    z: below/above, reaching the body's sides, the pelvis and the lung bases in many cases); the same with one edge
    moved into a kidney; or a slab above or below the kidneys. Returns the view it could make (a slab without kidney
    needs room in the atlas; an atlas without kidneys gives nothing else)."""
    kidney = np.argwhere(np.isin(tissues, KIDNEY_TISSUES))
    origin = np.array(atlas.origin)
    axis, upper = 0, False  # the cutting edge of View.CUT
    top = origin + (np.array(tissues.shape[::-1]) - 1) * ATLAS_MM
    body = np.argwhere(tissues[::4, ::4, ::4] != Tissue.OUTSIDE) * 4
    body_lo, body_hi = body.min(axis=0)[::-1] * ATLAS_MM + origin, body.max(axis=0)[::-1] * ATLAS_MM + origin
    if not kidney.size:
        view = View.NO_KIDNEY
        centre = body_lo + rng.uniform(0.2, 0.8, 3) * (body_hi - body_lo)
        lo, hi = centre - rng.uniform(80, 250, 3), centre + rng.uniform(80, 250, 3)
    else:
        k_lo = kidney.min(axis=0)[::-1] * ATLAS_MM + origin
        k_hi = kidney.max(axis=0)[::-1] * ATLAS_MM + origin
        # wide margins down to the hips and up to the lung bases: the model must see what is not kidney there
        lo = k_lo - [rng.uniform(5, 150), rng.uniform(50, 250), rng.uniform(0, 320)]
        hi = k_hi + [rng.uniform(5, 150), rng.uniform(5, 60), rng.uniform(0, 100)]
        room_below, room_above = k_lo[2] - origin[2], top[2] - k_hi[2]
        if view is View.NO_KIDNEY and max(room_below, room_above) < _NO_KIDNEY_MIN_MM + 5:
            view = View.KIDNEYS
        if view is View.NO_KIDNEY:
            above = room_above >= _NO_KIDNEY_MIN_MM + 5 and (room_below < _NO_KIDNEY_MIN_MM + 5 or rng.random() < 0.5)
            if above:
                lo[2], hi[2] = k_hi[2] + 5.0, k_hi[2] + 5.0 + rng.uniform(_NO_KIDNEY_MIN_MM, max(room_above - 5.0, _NO_KIDNEY_MIN_MM))
            else:
                hi[2], lo[2] = k_lo[2] - 5.0, k_lo[2] - 5.0 - rng.uniform(_NO_KIDNEY_MIN_MM, max(room_below - 5.0, _NO_KIDNEY_MIN_MM))
        elif view is View.CUT:  # one kidney's box, cut from one side by 15-45 % of its size
            side = (RIGHT, LEFT)[int(rng.integers(2))]
            one = np.argwhere(np.isin(tissues, (CORTEX[side], MEDULLA[side])))
            if not one.size:
                one = kidney
            c_lo, c_hi = one.min(axis=0)[::-1] * ATLAS_MM + origin, one.max(axis=0)[::-1] * ATLAS_MM + origin
            axis, upper = int(rng.integers(3)), bool(rng.random() < 0.5)
            depth = rng.uniform(0.15, 0.45) * (c_hi[axis] - c_lo[axis])
            if upper:
                hi[axis] = c_hi[axis] - depth
            else:
                lo[axis] = c_lo[axis] + depth
    lo = np.maximum(lo, origin)
    hi = np.minimum(hi, top)
    spacing = np.array(grid.spacing)
    excess = np.maximum(hi - lo - np.array(grid.max_shape[::-1]) * spacing, 0.0)
    shift = rng.uniform(0, 1, 3) * excess
    if view is View.CUT:  # keep the cutting edge where it was put
        shift[axis] = excess[axis] if upper else 0.0
    lo += shift
    shape_xyz = np.maximum(np.minimum(np.floor((hi - lo) / spacing).astype(int), grid.max_shape[::-1]), 8)
    fx, fy, fz = (_odd_factor(s, m) for s, m in zip(grid.spacing[::-1], grid.max_work_mm[::-1]))
    nz, ny, nx = (int(n) for n in shape_xyz[::-1])
    return Grid((nz, ny, nx), triple(grid.spacing), triple(lo)), (fx, fy, fz), view


def on_edge(mask: np.ndarray) -> bool:
    """Whether ``mask`` touches a face of its array."""
    return bool(mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any() or mask[:, :, 0].any() or mask[:, :, -1].any())


def _odd_factor(spacing: float, finest: float) -> int:
    """The smallest odd f with spacing / f <= finest, so output voxel centres are work voxel centres."""
    f = 1
    while spacing / f > finest:
        f += 2
    return f
