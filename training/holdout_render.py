"""A second renderer, never used for training: arterial-phase CT with geometric kidneys, to catch a model that has
learned the training renderer (:mod:`training.synth`) rather than kidneys.

What differs from the training renderer, on purpose:
- kidneys are geometric (an ellipsoid, a bean with a hilar notch, or a chain of lobes), not KiTS19 shapes;
- the medulla is one confluent block, a few large pyramids or many small ones cut by slab-shaped columns (not
  sectors), under a cortex 2.5-7 mm thick, with sinus fat from none to ample and sometimes a dilated pelvis;
- its own HU table, a low-frequency heterogeneity per organ instead of voxel texture, a Gaussian in-plane blur and a
  Gaussian slice profile (not a box), and noise filtered to a band of frequencies as CT reconstruction makes it;
- 1.5 mm pixels and 5 mm slices (training cases: 1.6 mm).
The scene around the kidneys is one of the four validation abdomens (:data:`training.anatomies.VALIDATION`), real
label maps that no training case was built on, completed as :func:`training.anatomies.load_anatomy` does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from dicomnode.renal import Side
from training.anatomies import VALIDATION, anatomy_sources, load_anatomy
from training.synth_anatomy import ATLAS_MM, Atlas, KidneySite, Tissue
from training.truth_case import SIDE_CODES, TruthCase, as_images

SLICE_MM = 5.0
#: Arterial HU per tissue (low, high), this renderer's own; tissues not listed are soft tissue.
_ARTERIAL_HU: dict[Tissue, tuple[float, float]] = {
    Tissue.OUTSIDE: (-1000, -1000),
    Tissue.TABLE: (-300, 100),
    Tissue.FAT: (-110, -85),
    Tissue.GAS: (-950, -800),
    Tissue.LUNG: (-870, -760),
    Tissue.LIVER: (60, 90),
    Tissue.SPLEEN: (110, 170),
    Tissue.PANCREAS: (90, 130),
    Tissue.GALLBLADDER: (5, 20),
    Tissue.BONE: (180, 420),
    Tissue.VERTEBRA: (180, 380),
    Tissue.RIB: (250, 600),
    Tissue.AORTA: (250, 480),
    Tissue.RENAL_ARTERY: (250, 480),
    Tissue.IVC: (60, 110),
    Tissue.PORTAL_VEIN: (100, 160),
    Tissue.RENAL_VEIN: (120, 200),
    Tissue.SPINAL_CANAL: (15, 35),
    Tissue.RENAL_SINUS: (-100, -50),
    Tissue.RENAL_PELVIS: (0, 20),
    Tissue.BLADDER: (0, 15),
    Tissue.HEART: (180, 320),
    Tissue.COLON: (-40, 50),
}
_SOFT_TISSUE_HU = (35.0, 70.0)
CORTEX_HU, CORTICOMEDULLARY_HU, MEDULLA_HU = (120.0, 250.0), (25.0, 150.0), (30.0, 150.0)
_SHAPES = ("ellipsoid", "bean", "lobes")
_MEDULLAS = ("confluent", "few", "many")


@dataclass(frozen=True)
class Kidney:
    """How one kidney was drawn."""

    side: str
    shape: str
    medulla: str
    axes_mm: tuple[float, float, float]
    cortex_mm: float
    sinus: float  # size of the sinus fat, 0 for none
    dilated_pelvis: bool
    cortex_hu: float
    medulla_hu: float


def holdout_case(seed: int, data: Path, cache_dir: Path) -> TruthCase:
    """One arterial case, deterministic from ``seed``: a validation abdomen with two geometric kidneys, 5 mm slices.
    Truth volumes (``metadata["truth_ml"]``) are counted on the 1.5 mm grid the kidneys were drawn on."""
    rng = np.random.default_rng([seed, 771])
    sources = {s.name: s for s in anatomy_sources(data / "anatomy")}
    anatomy = VALIDATION[seed % len(VALIDATION)]
    atlas = load_anatomy(sources[anatomy], cache_dir)
    tissues = atlas.tissues.copy()
    codes = np.zeros(tissues.shape, np.uint8)  # 1 medulla, 2 cortex, 3 sinus, 4 pelvis
    sides = np.zeros(tissues.shape, np.uint8)
    drawn = [_draw_kidney(Side(side), site, atlas, tissues, codes, sides, rng) for side, site in sorted(atlas.sites.items())]
    voxel_ml = ATLAS_MM**3 / 1000.0
    truth = {
        k.side: {
            "parenchyma": round(float(np.sum((sides == SIDE_CODES[Side(k.side)]) & np.isin(codes, (1, 2)))) * voxel_ml, 2),
            "cortex": round(float(np.sum((sides == SIDE_CODES[Side(k.side)]) & (codes == 2))) * voxel_ml, 2),
        }
        for k in drawn
    }
    hu = _render(tissues, codes, sides, drawn, rng)
    box = _field_of_view(np.isin(codes, (1, 2)), rng)
    image, labels, side_map, origin = _acquire(hu[box], codes[box], sides[box], atlas, box, rng)
    made = as_images(_grid(image.shape, origin), image, labels, side_map)
    metadata = {"renderer": "holdout_render", "seed": seed, "phase": "arterial", "anatomy": anatomy, "kidneys": [vars(k) for k in drawn], "truth_ml": truth}
    return TruthCase(made[0], made[1], made[2], metadata)


def _draw_kidney(side: Side, site: KidneySite, atlas: Atlas, tissues: np.ndarray, codes: np.ndarray, sides: np.ndarray, rng: np.random.Generator) -> Kidney:
    """Paint one geometric kidney at ``site``: its codes and side, and fat under it in ``tissues``."""
    scale = rng.uniform(0.75, 1.1)
    axes = np.array([rng.uniform(50, 64), rng.uniform(26, 34), rng.uniform(18, 25)]) * scale  # semi-axes: long, hilum, third
    long_axis = np.array(site.long_axis) + rng.normal(0.0, 0.12, 3)
    long_axis /= np.linalg.norm(long_axis)
    medial = np.array([1.0, 0.0, 0.0]) if side is Side.RIGHT else np.array([-1.0, 0.0, 0.0])  # LPS: the right kidney lies at -x
    hilum = 0.8 * medial + 0.6 * np.array([0.0, -1.0, 0.0])
    hilum -= hilum.dot(long_axis) * long_axis
    hilum /= np.linalg.norm(hilum)
    frame = np.stack([long_axis, hilum, np.cross(long_axis, hilum)])
    centre_idx = np.round(atlas.to_index(np.array(site.centre))).astype(int)
    reach = int(np.ceil(axes.max() / ATLAS_MM)) + 3
    box = tuple(slice(max(0, c - reach), min(n, c + reach + 1)) for c, n in zip(centre_idx, tissues.shape))
    grid = np.stack(np.meshgrid(*(np.arange(b.start, b.stop) for b in box), indexing="ij"), axis=-1)
    points = grid[..., ::-1] * ATLAS_MM + np.array(atlas.origin) - np.array(site.centre)  # (x, y, z) mm from the centre
    local = points @ frame.T  # (u along the long axis, h towards the hilum, w)
    shape = _SHAPES[int(rng.integers(len(_SHAPES)))]
    mask = _shape_mask(shape, local, axes, rng)
    free = ~np.isin(tissues[box], (Tissue.BONE, Tissue.VERTEBRA, Tissue.RIB, Tissue.AORTA, Tissue.IVC, Tissue.SPINAL_CANAL))
    mask &= free
    depth = ndimage.distance_transform_edt(np.pad(mask, 1), sampling=ATLAS_MM)[1:-1, 1:-1, 1:-1]
    cortex_mm = float(rng.uniform(2.5, 7.0))
    sinus_size = 0.0 if rng.random() < 0.25 else float(rng.uniform(0.3, 1.1))
    lip = (local[..., 1] > 0.55 * axes[1]) & (np.abs(local[..., 0]) < 0.3 * axes[0])
    sinus_centre = np.array([0.0, 0.45 * axes[1], 0.0])
    sinus = mask & ((depth > cortex_mm + 1.0) | lip) & _inside(local, sinus_centre, axes * np.array([0.5, 0.5, 0.5]) * sinus_size)
    dilated = bool(rng.random() < 0.15)
    pelvis = mask & ((depth > cortex_mm + 1.0) | lip) & _inside(local, sinus_centre + [0.0, 0.1 * axes[1], 0.0], axes * (0.4 if dilated else 0.0))
    medulla_style = _MEDULLAS[int(rng.integers(len(_MEDULLAS)))]
    deep = mask & (depth > cortex_mm) & ~sinus & ~pelvis
    if medulla_style != "confluent":
        slabs = int(rng.integers(2, 4) if medulla_style == "few" else rng.integers(5, 9))
        for _ in range(slabs):
            normal = rng.normal(size=3)
            normal -= normal.dot([1.0, 0.0, 0.0]) * np.array([1.0, 0.0, 0.0]) * 0.7  # mostly across the long axis
            normal /= np.linalg.norm(normal)
            deep &= np.abs(local @ normal) > rng.uniform(1.0, 2.0)
    cortex_hu = float(rng.uniform(*CORTEX_HU))
    medulla_hu = float(np.clip(cortex_hu - rng.uniform(*CORTICOMEDULLARY_HU), *MEDULLA_HU))
    region = codes[box]
    region[mask] = 2
    region[deep] = 1
    region[sinus] = 3
    region[pelvis] = 4
    sides[box][mask] = SIDE_CODES[side]
    tissues[box][mask] = Tissue.FAT
    return Kidney(side.value, shape, medulla_style, (float(axes[0]), float(axes[1]), float(axes[2])), cortex_mm, sinus_size, dilated, cortex_hu, medulla_hu)


def _shape_mask(shape: str, local: np.ndarray, axes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """An ellipsoid, a bean (an ellipsoid with a notch at the hilum) or a chain of three or four lobes."""
    if shape == "lobes":
        count = int(rng.integers(3, 5))
        mask = np.zeros(local.shape[:-1], bool)
        for u in np.linspace(-0.55, 0.55, count) * axes[0]:
            lobe = axes * np.array([1.25 / count + 0.15, rng.uniform(0.85, 1.05), rng.uniform(0.85, 1.05)])
            mask |= _inside(local, np.array([u, rng.uniform(-2, 2), rng.uniform(-2, 2)]), lobe)
        return mask
    mask = _inside(local, np.zeros(3), axes)
    if shape == "bean":
        mask &= ~_inside(local, np.array([0.0, 1.1 * axes[1], 0.0]), np.array([0.45 * axes[0], 0.5 * axes[1], 0.9 * axes[2]]))
    return mask


def _inside(local: np.ndarray, centre: np.ndarray, axes: np.ndarray) -> np.ndarray:
    if not np.all(axes > 0):
        return np.zeros(local.shape[:-1], bool)
    return np.sum(((local - centre) / axes) ** 2, axis=-1) <= 1.0


def _render(tissues: np.ndarray, codes: np.ndarray, sides: np.ndarray, kidneys: list[Kidney], rng: np.random.Generator) -> np.ndarray:
    """HU on the 1.5 mm grid: a value per tissue and per kidney structure, and a smooth heterogeneity."""
    table = np.array([rng.uniform(*_ARTERIAL_HU.get(t, _SOFT_TISSUE_HU)) for t in Tissue], np.float32)
    hu = table[tissues]
    for kidney in kidneys:
        own = sides == SIDE_CODES[Side(kidney.side)]
        hu[own & (codes == 2)] = kidney.cortex_hu
        hu[own & (codes == 1)] = kidney.medulla_hu
        hu[own & (codes == 3)] = rng.uniform(-100, -50)
        hu[own & (codes == 4)] = rng.uniform(0, 20)
    field = ndimage.gaussian_filter(rng.standard_normal(tissues.shape).astype(np.float32), 5.0)
    field /= max(float(field.std()), 1e-6)
    hu += field * rng.uniform(3.0, 10.0) * (tissues != Tissue.OUTSIDE)
    return hu


def _field_of_view(kidneys: np.ndarray, rng: np.random.Generator) -> tuple[slice, ...]:
    """Both kidneys whole, 30-90 mm of margin above and below them, the whole body across."""
    z = np.flatnonzero(kidneys.any(axis=(1, 2)))
    below, above = (int(rng.uniform(30, 90) / ATLAS_MM) for _ in range(2))
    return (slice(max(0, z[0] - below), min(kidneys.shape[0], z[-1] + above + 1)), slice(None), slice(None))


def _acquire(hu: np.ndarray, codes: np.ndarray, sides: np.ndarray, atlas: Atlas, box: tuple[slice, ...], rng: np.random.Generator):
    """5 mm slices with a Gaussian slice profile (FWHM 5 mm), a Gaussian in-plane blur and band-limited noise;
    labels and sides from the nearest 1.5 mm slice. Returns image, labels, sides and the first slice's origin."""
    in_plane = rng.uniform(0.5, 1.0) / ATLAS_MM
    blurred = ndimage.gaussian_filter(hu, (SLICE_MM / 2.355 / ATLAS_MM, in_plane, in_plane))
    positions = np.arange(0.0, (hu.shape[0] - 1) * ATLAS_MM + 1e-6, SLICE_MM) / ATLAS_MM  # in 1.5 mm slices
    low = np.floor(positions).astype(int)
    high = np.minimum(low + 1, hu.shape[0] - 1)
    weight = (positions - low)[:, None, None]
    image = (1 - weight) * blurred[low] + weight * blurred[high]
    white = rng.standard_normal(image.shape).astype(np.float32)
    noise = ndimage.gaussian_filter(white, (0, 0.7, 0.7)) - ndimage.gaussian_filter(white, (0, 2.5, 2.5))
    image += noise / max(float(noise.std()), 1e-6) * rng.uniform(8.0, 25.0)
    nearest = np.rint(positions).astype(int)
    labels = np.where(np.isin(codes[nearest], (1, 2)), codes[nearest], 0).astype(np.uint8)
    side_map = np.where(labels > 0, sides[nearest], 0).astype(np.uint8)
    origin = np.array(atlas.origin) + np.array([0.0, 0.0, box[0].start * ATLAS_MM])
    return image.astype(np.float32), labels, side_map, origin


def _grid(shape: tuple[int, ...], origin: np.ndarray) -> sitk.Image:
    """An empty image with the cases' grid: 1.5 mm pixels, 5 mm slices, axial LPS."""
    reference = sitk.Image([int(n) for n in shape[::-1]], sitk.sitkUInt8)
    reference.SetSpacing((ATLAS_MM, ATLAS_MM, SLICE_MM))
    reference.SetOrigin(tuple(float(v) for v in origin))
    return reference
