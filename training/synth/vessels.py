"""Renal arteries and veins drawn from each placed kidney's hilum to the aorta and IVC, through fat only."""

from __future__ import annotations

import numpy as np

from training.synth.geometry import atlas_box, box_points
from training.synth.kidney import PlacedKidney
from training.synth.tissues import RIGHT
from training.synth_anatomy import ATLAS_MM, Atlas, Tissue

#: Renal vessels are drawn only through these.
_VESSEL_PATH = (Tissue.FAT, Tissue.VISCERA, Tissue.RENAL_SINUS)


def draw_renal_vessels(tissues: np.ndarray, atlas: Atlas, kidney: PlacedKidney, rng: np.random.Generator) -> None:
    """Renal artery from the aorta and vein to the IVC, through fat only (left vein in front of the aorta)."""
    sinus, hilum_dir = np.array(kidney.sinus_centre_mm), np.array(kidney.hilum)
    hilum = sinus + 25.0 * hilum_dir
    aorta, ivc = (_vessel_centre(tissues, atlas, t, sinus[2]) for t in (Tissue.AORTA, Tissue.IVC))
    if aorta is None or ivc is None:
        return
    front, behind = np.array([0.0, -20.0, 0.0]), np.array([0.0, 20.0, 0.0])
    if kidney.side == RIGHT:
        artery, vein = [sinus, hilum, ivc + behind, aorta], [sinus, hilum, ivc]
    else:
        artery, vein = [sinus, hilum, aorta], [sinus, hilum, aorta + front, ivc]
    _paint_tube(tissues, atlas, artery, rng.uniform(2.5, 3.5), Tissue.RENAL_ARTERY)
    _paint_tube(tissues, atlas, vein, rng.uniform(4.0, 6.0), Tissue.RENAL_VEIN)


def _vessel_centre(tissues: np.ndarray, atlas: Atlas, tissue: Tissue, z_mm: float) -> np.ndarray | None:
    """The centre (x, y, z mm) of a vessel's cross-section at ``z_mm``, or at the nearest slice within 30 mm."""
    k = int(round((z_mm - atlas.origin[2]) / ATLAS_MM))
    for dk in range(0, 20):
        for kk in (k - dk, k + dk):
            if 0 <= kk < tissues.shape[0] and (hits := np.argwhere(tissues[kk] == tissue)).size:
                y, x = hits.mean(axis=0) * ATLAS_MM + np.array(atlas.origin[1::-1])
                return np.array([x, y, z_mm])
    return None


def _paint_tube(tissues: np.ndarray, atlas: Atlas, path: list[np.ndarray], radius: float, tissue: Tissue) -> None:
    """Paint a tube of ``radius`` mm along a polyline (x, y, z mm), over _VESSEL_PATH tissues only."""
    for a, b in zip(path[:-1], path[1:]):
        box = atlas_box(atlas, np.minimum(a, b) - radius, np.maximum(a, b) + radius, tissues.shape)
        points = box_points(atlas, box)
        along = np.clip(((points - a) @ (b - a)) / max(float((b - a) @ (b - a)), 1e-6), 0.0, 1.0)
        inside = np.linalg.norm(points - (a + along[..., None] * (b - a)), axis=-1) <= radius
        region = tissues[box]
        region[inside & np.isin(region, _VESSEL_PATH)] = tissue
