"""One KiTS19 kidney placed at an atlas patient's kidney site: rescaled, rotated along the site, sometimes lower,
tilted, small or large, its tumour kept as kidney or left as a mass, and its interior drawn (:mod:`.interior`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from training.synth.geometry import atlas_box, box_points, rotation_xyz
from training.synth.interior import kidney_interior
from training.synth.tissues import BONES, CORTEX, MEDULLA, RIGHT
from training.synth_anatomy import ATLAS_MM, Atlas, KidneySite, KitsKidney, Tissue, principal_axis, triple

_SCALE = (0.8, 1.2)
_KIDNEY_ML = (70.0, 380.0)  # the whole mask (sinus included) after the case's deformation
#: Shares of small (chronic kidney disease) and large kidneys, with the whole mask's volume (ml) each is scaled to.
_SMALL_KIDNEY, _LARGE_KIDNEY = (0.15, (45.0, 100.0)), (0.1, (260.0, 420.0))
#: Kidney sites moved down (a low or ptotic kidney) and tilted: share, and how far (mm, degrees).
_LOW_SITE, _TILTED_SITE = (0.15, (20.0, 60.0)), (0.2, 25.0)
_TUMOUR_KEPT_SHARE = 0.35  # else the tumour is dropped from the kidney and rendered as a mass
#: A new kidney never overwrites these.
_KIDNEY_PROOF = (*BONES, Tissue.AORTA, Tissue.IVC, Tissue.SPINAL_CANAL)


@dataclass(frozen=True)
class PlacedKidney:
    """How one kidney of a case was made."""

    side: str
    kits_case: str
    source_side: str
    mirrored: bool
    scale: float
    tumour: str  # none | kept (labelled as kidney) | dropped (a non-kidney mass)
    cortex_mm: float
    pyramids: int
    medulla: str  # an InteriorStyle value
    centre_mm: tuple[float, float, float]
    hilum: tuple[float, float, float]  # unit vector, patient space
    sinus_centre_mm: tuple[float, float, float]


def place_kidney(tissues: np.ndarray, atlas: Atlas, site: KidneySite, pool: tuple[KitsKidney, ...], growth: float, rng: np.random.Generator) -> PlacedKidney:
    """Paint a random KiTS kidney, rescaled, at ``site`` with its long axis along the site's; returns how.

    The scale is kept such that the kidney's volume, times ``growth`` (the later deformation's), stays plausible.
    """
    source = pool[int(rng.integers(len(pool)))]
    mirrored = source.side != site.side
    shape = source.labels[:, :, ::-1] if mirrored else source.labels
    points = np.argwhere(shape == 1).astype(np.float64)
    centre_idx = points.mean(axis=0)
    long_axis = principal_axis((points - centre_idx)[:, ::-1])
    rotation = _spin(np.array(site.long_axis), rng.uniform(-10, 10)) @ _align(long_axis, np.array(site.long_axis))
    total_ml = float(np.sum(shape > 0)) * ATLAS_MM**3 / 1000.0 * growth
    size = rng.random()
    if size < _SMALL_KIDNEY[0] + _LARGE_KIDNEY[0]:
        target = rng.uniform(*(_SMALL_KIDNEY[1] if size < _SMALL_KIDNEY[0] else _LARGE_KIDNEY[1]))
        scale = float((target / total_ml) ** (1 / 3))
    else:
        scale = float(np.clip(rng.uniform(*_SCALE), (_KIDNEY_ML[0] / total_ml) ** (1 / 3), (_KIDNEY_ML[1] / total_ml) ** (1 / 3)))
    centre = np.array(site.centre) + rng.normal(0.0, 3.0, 3)
    box, kidney, tumour = _resample_kidney(shape, centre_idx, rotation, scale, centre, atlas, tissues.shape)
    mode = "none" if not tumour.any() else "kept" if rng.random() < _TUMOUR_KEPT_SHARE else "dropped"
    if mode == "kept":
        kidney |= tumour
    origin_mm = np.array(atlas.origin) + np.array([s.start for s in box][::-1]) * ATLAS_MM
    medial = np.array([1.0 if site.side == RIGHT else -1.0, 0.0, 0.0])
    hilum = _hilum_direction(medial, np.array(site.long_axis), rng)
    interior = kidney_interior(kidney, centre - origin_mm, np.array(site.long_axis), hilum, rng)
    region = tissues[box]
    free = ~np.isin(region, _KIDNEY_PROOF)
    for code, tissue in ((1, CORTEX[site.side]), (2, MEDULLA[site.side]), (3, Tissue.RENAL_SINUS), (4, Tissue.RENAL_PELVIS)):
        region[(interior.codes == code) & free] = tissue
    if mode == "dropped":
        region[tumour & ~kidney & free] = Tissue.RENAL_MASS
    return PlacedKidney(
        site.side,
        source.case_id,
        source.side,
        mirrored,
        scale,
        mode,
        interior.cortex_mm,
        interior.pyramids,
        interior.style.value,
        tuple(centre),
        tuple(hilum),
        tuple(interior.sinus_centre + origin_mm),
    )


def varied_site(site: KidneySite, rng: np.random.Generator) -> KidneySite:
    """The atlas patient's kidney site, sometimes lower (a low or ptotic kidney) or tilted further."""
    centre, axis = np.array(site.centre), np.array(site.long_axis)
    if rng.random() < _LOW_SITE[0]:
        centre[2] -= rng.uniform(*_LOW_SITE[1])
    if rng.random() < _TILTED_SITE[0]:
        axis = rotation_xyz(rng.uniform(-_TILTED_SITE[1], _TILTED_SITE[1], 3) * np.array([1.0, 1.0, 0.0])) @ axis
    return KidneySite(site.side, triple(centre), triple(axis / np.linalg.norm(axis)), site.volume_ml)


def _resample_kidney(shape, centre_idx, rotation, scale, centre, atlas: Atlas, atlas_shape):
    """Kidney and tumour masks of a source shape mapped into a box of the atlas around ``centre`` (mm)."""
    reach = ATLAS_MM * scale * np.linalg.norm(np.maximum(centre_idx, np.array(shape.shape) - centre_idx)) + 3.0
    box = atlas_box(atlas, centre - reach, centre + reach, atlas_shape)
    source = ((box_points(atlas, box) - centre) @ rotation) / (scale * ATLAS_MM)  # R^T (p - c) / s, source voxels (x, y, z)
    coords = [source[..., 2 - a] + centre_idx[a] for a in range(3)]
    kidney_score = ndimage.map_coordinates((shape > 0).astype(np.float32), coords, order=1, cval=0.0)
    tumour_score = ndimage.map_coordinates((shape == 2).astype(np.float32), coords, order=1, cval=0.0)
    whole = kidney_score > 0.5
    tumour = whole & (tumour_score > 0.5)
    return box, whole & ~tumour, tumour


def _hilum_direction(medial: np.ndarray, long_axis: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Antero-medial direction, perpendicular to the long axis."""
    angle = np.radians(rng.uniform(20, 45))
    direction = np.cos(angle) * medial + np.sin(angle) * np.array([0.0, -1.0, 0.0])
    direction -= direction.dot(long_axis) * long_axis
    return direction / np.linalg.norm(direction)


def _align(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The rotation taking unit vector ``a`` to unit vector ``b`` (not opposite)."""
    skew = _skew(np.cross(a, b))
    return np.eye(3) + skew + skew @ skew / (1.0 + float(a.dot(b)))


def _spin(axis: np.ndarray, degrees: float) -> np.ndarray:
    """Rotation by ``degrees`` about a unit ``axis`` (Rodrigues)."""
    t, skew = np.radians(degrees), _skew(axis)
    return np.eye(3) + np.sin(t) * skew + (1 - np.cos(t)) * skew @ skew


def _skew(v: np.ndarray) -> np.ndarray:
    return np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])
