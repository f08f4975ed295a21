"""Real anatomy for synthetic training cases: one patient's label map and many people's kidney shapes.

Sources (read-only, ``shared/data``): the TotalSegmentator example CT (Apache-2.0) with its model-made
labels, and the KiTS19 hand-drawn kidney + tumour label maps (CC BY-NC-SA 4.0, Heller et al.).
Everything here is in DICOM patient space (LPS, mm) on arrays indexed ``[z, y, x]`` whose index grows
towards +x (patient's left), +y (posterior) and +z (superior); spacings and points are given as (x, y, z).
Both sources are parsed once and cached as ``.npz`` files (KiTS files are 512 x 512 x N and slow to read).
"""

from __future__ import annotations

import enum
import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

#: Isotropic spacing (mm) of the atlas and of the cached kidney shapes.
ATLAS_MM = 1.5
CACHE_VERSION = 1  # bump when the parsing below changes: caches are reused by name
CREDITS = (
    "Kidney shapes: KiTS19 challenge labels (Heller et al., 2019/2021; github.com/neheller/kits19), "
    "CC BY-NC-SA 4.0: derived data and models are non-commercial and shared alike.",
    "Surrounding anatomy: TotalSegmentator example CT and labels (Wasserthal et al.; github.com/wasserth/TotalSegmentator, Apache-2.0).",
)


class Tissue(enum.IntEnum):
    """Labels of the synthetic anatomy (the full map behind each case)."""

    OUTSIDE = 0
    TABLE = 1
    FAT = 2
    MUSCLE = 3  # body wall and other unlabelled muscle near the skin
    VISCERA = 4  # unlabelled soft tissue inside: bowel loops, vessels, nodes
    BONE = 5
    GAS = 6
    LUNG = 7
    LIVER = 8
    SPLEEN = 9
    STOMACH = 10
    PANCREAS = 11
    GALLBLADDER = 12
    ADRENAL = 13
    SMALL_BOWEL = 14
    DUODENUM = 15
    COLON = 16
    VERTEBRA = 17
    AORTA = 18
    IVC = 19
    PORTAL_VEIN = 20
    SPINAL_CANAL = 21
    AUTOCHTHON = 22
    PSOAS = 23
    RIB = 24
    COSTAL_CARTILAGE = 25
    RENAL_SINUS = 26
    RENAL_PELVIS = 27
    RENAL_MASS = 28
    RENAL_ARTERY = 29
    RENAL_VEIN = 30
    CORTEX_RIGHT = 31
    MEDULLA_RIGHT = 32
    CORTEX_LEFT = 33
    MEDULLA_LEFT = 34
    BLADDER = 35
    HEART = 36
    DISC = 37  # intervertebral disc
    LESION = 38  # a lesion or cyst of the liver or spleen


#: TotalSegmentator 'total' class -> tissue (kidneys 2/3 come from the full-length masks instead).
_TOTALSEG = {
    1: Tissue.SPLEEN,
    4: Tissue.GALLBLADDER,
    5: Tissue.LIVER,
    6: Tissue.STOMACH,
    7: Tissue.PANCREAS,
    8: Tissue.ADRENAL,
    9: Tissue.ADRENAL,
    10: Tissue.LUNG,
    11: Tissue.LUNG,
    12: Tissue.LUNG,
    13: Tissue.LUNG,
    14: Tissue.LUNG,
    18: Tissue.SMALL_BOWEL,
    19: Tissue.DUODENUM,
    20: Tissue.COLON,
    30: Tissue.VERTEBRA,
    31: Tissue.VERTEBRA,
    32: Tissue.VERTEBRA,
    33: Tissue.VERTEBRA,
    52: Tissue.AORTA,
    63: Tissue.IVC,
    64: Tissue.PORTAL_VEIN,
    79: Tissue.SPINAL_CANAL,
    86: Tissue.AUTOCHTHON,
    87: Tissue.AUTOCHTHON,
    88: Tissue.PSOAS,
    89: Tissue.PSOAS,
    117: Tissue.COSTAL_CARTILAGE,
    **{n: Tissue.RIB for n in (*range(98, 104), *range(110, 116))},
}
#: Full-length masks of the example CT, painted over everything else.
_FULL_MASKS = {"liver": Tissue.LIVER, "spleen": Tissue.SPLEEN, "aorta": Tissue.AORTA, "inferior_vena_cava": Tissue.IVC}
#: Structures carried below the end of the labelled slab, slice by slice, into tissue of the right density.
_EXTENDED_DOWN = (Tissue.VERTEBRA, Tissue.PSOAS, Tissue.AUTOCHTHON, Tissue.SPINAL_CANAL)
_BODY_WALL_MM = 40.0
_ATLAS_BELOW_KIDNEYS_MM = 75.0


@dataclass(frozen=True)
class Volume:
    """An array ``[z, y, x]`` in LPS index order with its spacing and origin (x, y, z, mm)."""

    array: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]


@dataclass(frozen=True)
class KidneySite:
    """Where a kidney of the atlas patient lay: centroid (x, y, z mm), unit long axis pointing up, volume."""

    side: str
    centre: tuple[float, float, float]
    long_axis: tuple[float, float, float]
    volume_ml: float


@dataclass(frozen=True)
class Atlas:
    """One patient's anatomy (kidneys removed, their sites kept) at ``ATLAS_MM`` isotropic."""

    tissues: np.ndarray  # uint8 Tissue, [z, y, x]
    origin: tuple[float, float, float]
    sites: dict[str, KidneySite]

    def to_index(self, points_xyz: np.ndarray) -> np.ndarray:
        """Continuous indices ``(z, y, x)`` of points ``(..., 3)`` given as (x, y, z) mm."""
        return ((np.asarray(points_xyz) - self.origin) / ATLAS_MM)[..., ::-1]


@dataclass(frozen=True)
class KitsKidney:
    """One kidney of a KiTS19 case at ``ATLAS_MM`` isotropic, LPS: 1 kidney, 2 tumour."""

    case_id: str
    side: str  # in its own patient
    labels: np.ndarray
    kidney_ml: float
    tumour_ml: float


def lps_volume(image: sitk.Image) -> Volume:
    """Reorder an axis-aligned image so that its array indices grow towards +x, +y, +z (LPS)."""
    direction = np.array(image.GetDirection()).reshape(3, 3)
    axis_of = [int(np.argmax(np.abs(direction[b]))) for b in range(3)]  # image axis along patient axis b
    if sorted(axis_of) != [0, 1, 2] or min(abs(direction[b, axis_of[b]]) for b in range(3)) < 0.99:
        raise ValueError("only axis-aligned images are supported")
    array = sitk.GetArrayFromImage(image).transpose([2 - axis_of[b] for b in (2, 1, 0)])
    flips = [direction[b, axis_of[b]] < 0 for b in (2, 1, 0)]
    array = array[tuple(slice(None, None, -1) if flip else slice(None) for flip in flips)]
    index = [0, 0, 0]  # the image voxel that becomes array[0, 0, 0]
    for b, a in enumerate(axis_of):
        if direction[b, a] < 0:
            index[a] = image.GetSize()[a] - 1
    spacing = triple(image.GetSpacing()[axis_of[b]] for b in range(3))
    return Volume(np.ascontiguousarray(array), spacing, triple(image.TransformIndexToPhysicalPoint(index)))


def read_lps(path: Path) -> Volume:
    """Read an image file as an LPS-ordered volume."""
    return lps_volume(sitk.ReadImage(str(path)))


# --- the atlas: one real patient -------------------------------------------------------------------------


def load_atlas(real_ct: Path, cache_dir: Path) -> Atlas:
    """The example patient's anatomy at ``ATLAS_MM``, built once and cached in ``cache_dir``."""
    return cached_atlas(cache_dir / f"atlas_v{CACHE_VERSION}.npz", lambda: build_atlas(real_ct))


def cached_atlas(cache: Path, build: Callable[[], Atlas]) -> Atlas:
    """The atlas cached in the file ``cache``, made by ``build`` and saved there first where absent: the shared real
    CT's atlas (:func:`load_atlas`) and those of :func:`training.anatomies.load_anatomy`, each under its own name."""
    if not cache.exists():
        atlas = build()
        _save(cache, tissues=atlas.tissues, origin=atlas.origin, sites=json.dumps({side: vars(site) for side, site in atlas.sites.items()}))
    with np.load(cache) as data:
        sites = {
            side: KidneySite(site["side"], triple(site["centre"]), triple(site["long_axis"]), float(site["volume_ml"]))
            for side, site in json.loads(str(data["sites"])).items()
        }
        return Atlas(data["tissues"], triple(data["origin"]), sites)


def build_atlas(real_ct: Path) -> Atlas:
    """Label every voxel of the example CT near the kidneys; remove its kidneys (to fat)."""
    ct = read_lps(real_ct / "example_ct.nii.gz")
    hu = ct.array.astype(np.float32)
    tissues = _tissues_from_hu(hu, ct.spacing)
    kidneys = {side: read_lps(real_ct / "example_ct_labels" / f"kidney_{side}.nii.gz").array > 0.5 for side in ("right", "left")}
    either = kidneys["right"] | kidneys["left"]
    tissues[either] = Tissue.FAT  # before the slab's muscles are carried down, so that they stop at the kidneys
    slab = _labelled_slab(real_ct, ct)
    _paint_slab(tissues, slab, int(np.argmax(slab.any(axis=(1, 2)))), hu)
    for name, tissue in _FULL_MASKS.items():
        tissues[read_lps(real_ct / "example_ct_labels" / f"{name}.nii.gz").array > 0.5] = tissue
    tissues[either] = Tissue.FAT
    sites = {side: _site(side, mask, ct) for side, mask in kidneys.items()}
    lowest = min(np.argwhere(mask)[:, 0].min() for mask in kidneys.values())
    first = max(0, lowest - int(_ATLAS_BELOW_KIDNEYS_MM / ct.spacing[2]))
    origin = np.array(ct.origin) + np.array([0.0, 0.0, first * ct.spacing[2]])
    fine, fine_origin = _upsample_labels(tissues[first:], ct.spacing, origin)
    return Atlas(fine, triple(fine_origin), sites)


def _tissues_from_hu(hu: np.ndarray, spacing) -> np.ndarray:
    """Body, fat, soft tissue (wall muscle vs viscera), bone and gas from the HU of a native CT."""
    body = _body_mask(hu)
    tissues = np.full(hu.shape, Tissue.OUTSIDE, np.uint8)
    tissues[(hu > -500) & ~body] = Tissue.TABLE
    skin_mm = ndimage.distance_transform_edt(body, sampling=spacing[::-1])
    bone = np.stack([ndimage.binary_fill_holes(s) for s in (hu >= 150) & body])
    tissues[body] = Tissue.VISCERA
    tissues[body & (skin_mm < _BODY_WALL_MM)] = Tissue.MUSCLE
    tissues[body & (hu < -30)] = Tissue.FAT
    tissues[body & (hu < -400)] = Tissue.GAS
    tissues[bone] = Tissue.BONE
    return tissues


def _body_mask(hu: np.ndarray) -> np.ndarray:
    dense = ndimage.binary_opening(hu > -500, iterations=2)
    components, _ = ndimage.label(dense)
    body = components == np.argmax(np.bincount(components.ravel())[1:]) + 1
    return np.stack([ndimage.binary_fill_holes(s) for s in body])


def _labelled_slab(real_ct: Path, ct: Volume) -> np.ndarray:
    """TotalSegmentator labels of the small crop, placed on the full CT's grid.

    The crop's header repeats the full CT's origin, so its slices are located by matching its pixels.
    """
    crop = read_lps(real_ct / "example_ct_sm.nii.gz").array
    labels = read_lps(real_ct / "example_ct_sm_total_labels.nii.gz").array
    n = crop.shape[0]
    offsets = [k for k in range(ct.array.shape[0] - n + 1) if np.array_equal(ct.array[k : k + n], crop)]
    if len(offsets) != 1 or crop.shape[1:] != ct.array.shape[1:]:
        raise ValueError("example_ct_sm.nii.gz is not a slab of example_ct.nii.gz")
    slab = np.zeros(ct.array.shape, np.uint8)
    slab[offsets[0] : offsets[0] + n] = labels
    return slab


def _paint_slab(tissues: np.ndarray, slab: np.ndarray, start: int, hu: np.ndarray) -> None:
    """Paint the slab's labels, then carry spine and back muscles down below it."""
    for label, tissue in _TOTALSEG.items():
        tissues[slab == label] = tissue
    dense = {Tissue.VERTEBRA: hu >= 100, Tissue.SPINAL_CANAL: (hu > -30) & (hu < 100)}
    soft = (hu > -30) & (hu < 150)
    for tissue in _EXTENDED_DOWN:
        allowed = dense.get(tissue, soft)
        mask = tissues[start] == tissue
        for k in range(start - 1, -1, -1):
            mask = ndimage.binary_dilation(mask, iterations=1) & allowed[k] & np.isin(tissues[k], (Tissue.MUSCLE, Tissue.VISCERA, Tissue.BONE))
            if tissue is Tissue.VERTEBRA:
                mask = ndimage.binary_fill_holes(mask)
            tissues[k][mask] = tissue


def _site(side: str, mask: np.ndarray, ct: Volume) -> KidneySite:
    points = np.argwhere(mask)[:, ::-1] * np.array(ct.spacing) + np.array(ct.origin)
    centre = points.mean(axis=0)
    long_axis = principal_axis(points - centre)
    voxel_ml = float(np.prod(ct.spacing)) / 1000.0
    return KidneySite(side, triple(centre), triple(long_axis), float(mask.sum() * voxel_ml))


def principal_axis(offsets: np.ndarray) -> np.ndarray:
    """The unit direction of largest spread of points (x, y, z), pointing superior."""
    _, vectors = np.linalg.eigh(offsets.T @ offsets)
    axis = vectors[:, -1]
    return axis if axis[2] >= 0 else -axis


def _upsample_labels(tissues: np.ndarray, spacing, origin) -> tuple[np.ndarray, np.ndarray]:
    """Labels at ``ATLAS_MM`` with smooth boundaries: per-label linear interpolation, then the arg-max."""
    factors = np.array(spacing[::-1]) / ATLAS_MM
    shape = tuple(int(round(n * f)) for n, f in zip(tissues.shape, factors))
    best = np.full(shape, 0.5, np.float32)
    fine = np.zeros(shape, np.uint8)
    for tissue in np.unique(tissues):
        box = _bounding_box(tissues == tissue, pad=1)
        coarse = (tissues[box] == tissue).astype(np.float32)
        target = tuple(slice(int(round(s.start * f)), int(round(s.start * f)) + int(round((s.stop - s.start) * f))) for s, f in zip(box, factors))
        score = ndimage.zoom(coarse, factors, order=1, grid_mode=True, mode="grid-constant")
        score = score[tuple(slice(0, t.stop - t.start) for t in target)]
        region_best, region_fine = best[target], fine[target]
        wins = score > region_best
        region_best[wins], region_fine[wins] = score[wins], tissue
    fine_origin = np.array(origin) - np.array(spacing) / 2 + ATLAS_MM / 2
    return fine, fine_origin


def _bounding_box(mask: np.ndarray, pad: int = 0) -> tuple[slice, ...]:
    nonzero = np.argwhere(mask)
    lo, hi = nonzero.min(axis=0) - pad, nonzero.max(axis=0) + 1 + pad
    return tuple(slice(max(int(a), 0), min(int(b), n)) for a, b, n in zip(lo, hi, mask.shape))


# --- KiTS19 kidneys ----------------------------------------------------------------------------------------

#: Kidneys kept in the pool: volume range (ml, tumour excluded) and tumour at most this share of the kidney.
_KIDNEY_ML = (40.0, 450.0)
_MAX_TUMOUR_SHARE = 1.0
_MIDLINE_MARGIN_MM = 10.0


def load_kits_kidneys(kits: Path, cache_dir: Path, case_ids: list[str] | None = None) -> list[KitsKidney]:
    """Every usable kidney of the KiTS19 cases (all by default), cached per selection in ``cache_dir``."""
    paths = sorted(kits.glob("case_*.nii.gz"))
    if case_ids is not None:
        paths = [p for p in paths if p.name.removesuffix(".nii.gz") in set(case_ids)]
    key = hashlib.sha1("\n".join(f"{p.name}:{p.stat().st_size}" for p in paths).encode()).hexdigest()[:12]
    cache = cache_dir / f"kits_kidneys_v{CACHE_VERSION}_{key}.npz"
    if not cache.exists():
        kidneys = [kidney for path in paths for kidney in kits_case_kidneys(path)]
        meta = [{"case_id": k.case_id, "side": k.side, "kidney_ml": k.kidney_ml, "tumour_ml": k.tumour_ml} for k in kidneys]
        arrays: dict[str, Any] = {f"labels_{i}": k.labels for i, k in enumerate(kidneys)}
        _save(cache, meta=json.dumps(meta), **arrays)
    with np.load(cache) as data:
        return [KitsKidney(labels=data[f"labels_{i}"], **m) for i, m in enumerate(json.loads(str(data["meta"])))]


def kits_case_kidneys(path: Path) -> list[KitsKidney]:
    """The kidneys (with their tumours) of one KiTS19 label file, skipping cut, fused or implausible ones."""
    volume = read_lps(path)
    box = _bounding_box(volume.array > 0)
    labels = volume.array[box]
    components, count = ndimage.label(labels > 0)
    voxel_ml = float(np.prod(volume.spacing)) / 1000.0
    sizes = ndimage.sum_labels(labels > 0, components, range(1, count + 1)) * voxel_ml
    kept = [n for n in range(1, count + 1) if sizes[n - 1] >= _KIDNEY_ML[0] / 2]
    x_mm = {n: volume.origin[0] + (box[2].start + c[2]) * volume.spacing[0] for n, c in zip(kept, ndimage.center_of_mass(labels > 0, components, kept))}
    midline = np.mean(list(x_mm.values())) if len(kept) >= 2 else volume.origin[0] + (volume.array.shape[2] - 1) * volume.spacing[0] / 2
    kidneys = []
    for n in kept:
        part = _bounding_box(components == n, pad=2)
        piece = np.where(components[part] == n, labels[part], 0)
        kidney_ml, tumour_ml = float(np.sum(piece == 1) * voxel_ml), float(np.sum(piece == 2) * voxel_ml)
        lo = np.array([b.start + p.start for b, p in zip(box, part)])
        hi = np.array([b.start + p.stop for b, p in zip(box, part)])
        x_lo, x_hi = (volume.origin[0] + v * volume.spacing[0] - midline for v in (lo[2], hi[2]))
        cut = (lo <= 0).any() or (hi >= volume.array.shape).any()
        fused = x_lo < _MIDLINE_MARGIN_MM and x_hi > -_MIDLINE_MARGIN_MM  # e.g. a horseshoe kidney
        plausible = _KIDNEY_ML[0] <= kidney_ml <= _KIDNEY_ML[1] and tumour_ml <= _MAX_TUMOUR_SHARE * kidney_ml
        if plausible and not cut and not fused:
            side = "left" if x_lo > 0 else "right"
            kidneys.append(KitsKidney(path.name.removesuffix(".nii.gz"), side, _resample_labels(piece, volume.spacing), kidney_ml, tumour_ml))
    return kidneys


def _resample_labels(labels: np.ndarray, spacing) -> np.ndarray:
    """Kidney (1) / tumour (2) labels resampled to ``ATLAS_MM`` isotropic (smoothed before shrinking)."""
    factors = np.array(spacing[::-1]) / ATLAS_MM
    sigma = np.maximum(0.0, 0.5 * (1.0 / factors - 1.0))
    scores = [
        ndimage.zoom(ndimage.gaussian_filter((labels == v).astype(np.float32), sigma), factors, order=1, grid_mode=True, mode="grid-constant") for v in (1, 2)
    ]
    out = np.zeros(scores[0].shape, np.uint8)
    whole = scores[0] + scores[1] > 0.5
    out[whole] = 1
    out[whole & (scores[1] > scores[0])] = 2
    return out


def triple(values: Iterable[float]) -> tuple[float, float, float]:
    """Three numbers (x, y, z or z, y, x) as a typed tuple."""
    a, b, c = (float(v) for v in values)
    return a, b, c


def _save(cache: Path, **arrays: Any) -> None:
    """Write ``arrays`` to the cache file ``cache`` (through a temporary file, so that a file there is whole)."""
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(cache.name + ".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.rename(cache)
