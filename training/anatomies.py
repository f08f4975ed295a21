"""Many real abdomens as atlases for synthetic cases: label maps drawn or corrected by people, completed here.

``shared/data/anatomy/`` holds label maps without images from three sources (WORD, TotalSegmentator, AMOS); each
labels some structures and lacks others (WORD and AMOS: no bones, vessels, muscles or body outline; TotalSegmentator:
no body outline or fat). Each map is resampled to ``ATLAS_MM`` in LPS, its labels mapped to :class:`Tissue` by name,
its kidneys taken out (their sites kept), and what its source lacks is filled in: vertebral column, spinal canal,
back muscles, psoas, aorta, IVC, ribs, the body outline with its fat and wall, and the unlabelled space between
organs. The fill is deterministic per anatomy. Arrays are ``[z, y, x]`` growing to +x (left), +y (posterior), +z.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from training.synth_anatomy import ATLAS_MM, CACHE_VERSION, Atlas, KidneySite, Tissue, cached_atlas, principal_axis, triple

#: Bumped when the completion below changes: cached atlases are reused by name.
ANATOMY_VERSION = 1
#: Anatomies kept out of training for validation (``dicomnode-train synth --anatomies validation``).
VALIDATION = ("word_0024", "word_0077", "word_0131", "s0327")
#: The shared real CT's anatomy (``synth_anatomy.load_atlas``), listed with the others under this name.
SHARED_ATLAS = "real_ct"

#: Whose anatomy a case is built on, by source folder: citation and licence.
ANATOMY_CREDITS = {
    "word": "Anatomy: WORD (Luo X. et al., Medical Image Analysis 82:102642, 2022; github.com/HiLab-git/WORD), GPL-3.0, "
    "for academic research only: not for clinical, commercial or second-development use.",
    "totalsegmentator": "Anatomy: TotalSegmentator dataset (Wasserthal J. et al., Radiology: Artificial Intelligence 2023; "
    "Zenodo 10.5281/zenodo.6802613), CC BY 4.0.",
    "amos": "Anatomy: AMOS 2022 (Ji Y. et al., NeurIPS 2022 Datasets and Benchmarks), CC BY 4.0.",
}

_UNLABELLED = 255
_KIDNEY = {"kidney_left": "left", "kidney_right": "right", "kidney_cyst_left": "left", "kidney_cyst_right": "right"}
#: Label names of every source -> tissue; a name ending in "*" matches every name it begins.
_NAMES: dict[str, Tissue] = {
    "liver": Tissue.LIVER,
    "spleen": Tissue.SPLEEN,
    "stomach": Tissue.STOMACH,
    "gallbladder": Tissue.GALLBLADDER,
    "esophagus": Tissue.VISCERA,
    "pancreas": Tissue.PANCREAS,
    "duodenum": Tissue.DUODENUM,
    "colon": Tissue.COLON,
    "rectum": Tissue.COLON,
    "intestine": Tissue.SMALL_BOWEL,
    "small_bowel": Tissue.SMALL_BOWEL,
    "adrenal*": Tissue.ADRENAL,
    "bladder": Tissue.BLADDER,
    "urinary_bladder": Tissue.BLADDER,
    "prostate*": Tissue.VISCERA,
    "thyroid_gland": Tissue.VISCERA,
    "brain": Tissue.VISCERA,
    "head_of_femur*": Tissue.BONE,
    "femur*": Tissue.BONE,
    "hip*": Tissue.BONE,
    "sacrum": Tissue.BONE,
    "sternum": Tissue.BONE,
    "clavicula*": Tissue.BONE,
    "scapula*": Tissue.BONE,
    "humerus*": Tissue.BONE,
    "skull": Tissue.BONE,
    "vertebrae*": Tissue.VERTEBRA,
    "rib*": Tissue.RIB,
    "costal_cartilages": Tissue.COSTAL_CARTILAGE,
    "lung*": Tissue.LUNG,
    "trachea": Tissue.GAS,
    "heart": Tissue.HEART,
    "atrial_appendage_left": Tissue.HEART,
    "pulmonary_vein": Tissue.HEART,
    "aorta": Tissue.AORTA,
    "iliac_artery*": Tissue.AORTA,
    "brachiocephalic_trunk": Tissue.AORTA,
    "subclavian_artery*": Tissue.AORTA,
    "common_carotid_artery*": Tissue.AORTA,
    "inferior_vena_cava": Tissue.IVC,
    "superior_vena_cava": Tissue.IVC,
    "iliac_vena*": Tissue.IVC,
    "brachiocephalic_vein*": Tissue.IVC,
    "portal_vein_and_splenic_vein": Tissue.PORTAL_VEIN,
    "spinal_cord": Tissue.SPINAL_CANAL,
    "autochthon*": Tissue.AUTOCHTHON,
    "iliopsoas*": Tissue.PSOAS,
    "gluteus*": Tissue.MUSCLE,
}
#: How far behind the kidneys' mean centre the centroid of the whole vertebra (body and arch) lies on the kidneys'
#: slices (y, mm): 14.4, 8.5, 0.5, 1.7 and 7.7 mm on the five TotalSegmentator anatomies with kidneys, which label
#: both; the drawn vertebra's centroid lies about 12 mm behind its body's centre.
VERTEBRA_BEHIND_KIDNEYS_MM, _BODY_AHEAD_OF_CENTROID_MM = 6.6, 12.0
_MARGIN_MM = 90.0  # room around the labelled organs for the body wall and fat


@dataclass(frozen=True)
class AnatomySource:
    """One label map of ``shared/data/anatomy``: its name, file and label numbering."""

    name: str
    path: Path
    labels: dict[int, str]
    source: str  # word, totalsegmentator, amos


def anatomy_sources(anatomy: Path) -> list[AnatomySource]:
    """Every label map under ``anatomy`` (one folder per source with a ``labels.json``), sorted by name."""
    found = []
    for folder in sorted(p for p in anatomy.iterdir() if (p / "labels.json").exists()):
        labels = {int(k): v for k, v in json.loads((folder / "labels.json").read_text()).items()}
        found += [AnatomySource(p.name.removesuffix(".nii.gz"), p, labels, folder.name) for p in sorted(folder.glob("*.nii.gz"))]
    return found


def tissue_of(name: str) -> Tissue | None:
    """The tissue a source label name stands for (None for kidneys and unknown names)."""
    if name in _NAMES:
        return _NAMES[name]
    return next((t for key, t in _NAMES.items() if key.endswith("*") and name.startswith(key[:-1])), None)


def load_anatomy(source: AnatomySource, cache_dir: Path) -> Atlas:
    """The completed atlas of one source, built once and cached in ``cache_dir``."""
    digest = hashlib.sha1(f"{source.path.name}:{source.path.stat().st_size}".encode()).hexdigest()[:8]
    return cached_atlas(cache_dir / f"anatomy_v{CACHE_VERSION}.{ANATOMY_VERSION}_{source.name}_{digest}.npz", lambda: build_anatomy(source))


def build_anatomy(source: AnatomySource) -> Atlas:
    """Resample, map, take the kidneys out and complete one label map."""
    raw, origin = _lps_resampled(source.path)
    lookup = np.full(max(max(source.labels), int(raw.max())) + 1, _UNLABELLED, np.uint8)
    kidneys = {"left": np.zeros(raw.shape, bool), "right": np.zeros(raw.shape, bool)}
    for value, name in source.labels.items():
        tissue = tissue_of(name)
        if tissue is not None:
            lookup[value] = tissue
    tissues = lookup[raw]
    for value, name in source.labels.items():
        if name in _KIDNEY:
            kidneys[_KIDNEY[name]] |= raw == value
    del raw
    tissues, origin, kidneys = _padded(tissues, origin, kidneys)
    sites = {side: _site(side, mask, origin) for side, mask in kidneys.items() if mask.sum() * ATLAS_MM**3 / 1000.0 >= 20.0}
    rng = np.random.default_rng(int(hashlib.sha1(source.name.encode()).hexdigest()[:8], 16))
    present = set(np.unique(tissues).tolist())
    midline_x, spine_y = _spine_position(tissues, origin, sites)
    if Tissue.VERTEBRA not in present:
        _draw_spine(tissues, origin, midline_x, spine_y, rng)
    if Tissue.PSOAS not in present:
        _draw_psoas(tissues, origin, midline_x, spine_y, sites, rng)
    for vessel, dx, dy, radius in ((Tissue.AORTA, 18.0, -30.0, 11.0), (Tissue.IVC, -22.0, -30.0, 12.0)):
        if vessel not in present:
            _draw_column(tissues, origin, (midline_x + dx, spine_y + dy), radius, vessel)
    perirenal = np.zeros(tissues.shape, bool)
    for mask in kidneys.values():
        if mask.any():
            perirenal |= ndimage.binary_dilation(mask, iterations=int(15 / ATLAS_MM))
    tissues[perirenal & (tissues == _UNLABELLED)] = Tissue.FAT
    tissues[kidneys["left"] | kidneys["right"]] = Tissue.FAT
    _draw_body(tissues, origin, midline_x, Tissue.RIB not in present, rng)
    return Atlas(tissues, origin, sites)


def _lps_resampled(path: Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    """A label file on an axis-aligned LPS grid at ``ATLAS_MM`` (nearest neighbour through its affine, which may be
    oblique or not exactly orthonormal: read with nibabel)."""
    import nibabel as nib

    image = nib.load(str(path))
    if not isinstance(image, nib.Nifti1Image):
        raise ValueError(f"path: {path} is not a NIfTI-1 image")
    data = np.asarray(image.dataobj)
    to_lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ image.affine
    corners = np.array([[i, j, k, 1.0] for i in (0, data.shape[0] - 1) for j in (0, data.shape[1] - 1) for k in (0, data.shape[2] - 1)]) @ to_lps.T
    lo, hi = corners[:, :3].min(axis=0), corners[:, :3].max(axis=0)
    nx, ny, nz = (int(np.floor(v)) + 1 for v in (hi - lo) / ATLAS_MM)
    inverse = np.linalg.inv(to_lps)[:3]
    out = np.zeros((nz, ny, nx), data.dtype)
    y, x = np.meshgrid(np.arange(ny) * ATLAS_MM + lo[1], np.arange(nx) * ATLAS_MM + lo[0], indexing="ij")
    for k in range(nz):
        points = np.stack([x, y, np.full_like(x, lo[2] + k * ATLAS_MM), np.ones_like(x)], axis=-1)
        index = np.rint(points @ inverse.T).astype(int)
        valid = np.all((index >= 0) & (index < np.array(data.shape)), axis=-1)
        out[k][valid] = data[index[valid][:, 0], index[valid][:, 1], index[valid][:, 2]]
    return out, triple(lo)


def _padded(tissues: np.ndarray, origin, kidneys: dict[str, np.ndarray]):
    """Crop to the labelled slices and organs, with ``_MARGIN_MM`` of room around them in x and y."""
    labelled = (tissues != _UNLABELLED) | kidneys["left"] | kidneys["right"]
    z, y, x = (np.flatnonzero(labelled.any(axis=axes)) for axes in ((1, 2), (0, 2), (0, 1)))
    margin = int(_MARGIN_MM / ATLAS_MM)
    ny, nx = y[-1] - y[0] + 1 + 2 * margin, x[-1] - x[0] + 1 + 2 * margin
    out = np.full((z[-1] - z[0] + 1, ny, nx), _UNLABELLED, np.uint8)
    crop = (slice(z[0], z[-1] + 1), slice(y[0], y[-1] + 1), slice(x[0], x[-1] + 1))
    inner = (slice(None), slice(margin, ny - margin), slice(margin, nx - margin))
    out[inner] = tissues[crop]
    padded = {}
    for side, mask in kidneys.items():
        padded[side] = np.zeros(out.shape, bool)
        padded[side][inner] = mask[crop]
    new_origin = np.array(origin) + np.array([x[0] - margin, y[0] - margin, z[0]]) * ATLAS_MM
    return out, triple(new_origin), padded


def _site(side: str, mask: np.ndarray, origin) -> KidneySite:
    components, count = ndimage.label(mask)
    largest = components == np.argmax(np.bincount(components.ravel())[1:]) + 1
    points = np.argwhere(largest)[:, ::-1] * ATLAS_MM + np.array(origin)
    centre = points.mean(axis=0)
    return KidneySite(side, triple(centre), triple(principal_axis(points - centre)), float(largest.sum() * ATLAS_MM**3 / 1000.0))


def _spine_position(tissues: np.ndarray, origin, sites: dict[str, KidneySite]) -> tuple[float, float]:
    """Midline x and the vertebral body's y (mm): from labelled vertebrae, else from the kidneys, else the organs."""
    vertebra = np.argwhere(tissues == Tissue.VERTEBRA)
    if vertebra.size:
        centre = vertebra[:, ::-1].mean(axis=0) * ATLAS_MM + np.array(origin)
        return float(centre[0]), float(centre[1])
    if len(sites) == 2:
        centres = np.array([site.centre for site in sites.values()])
        return float(centres[:, 0].mean()), float(centres[:, 1].mean() + VERTEBRA_BEHIND_KIDNEYS_MM - _BODY_AHEAD_OF_CENTROID_MM)
    organs = np.argwhere(tissues != _UNLABELLED)[:, ::-1] * ATLAS_MM + np.array(origin)
    return float(np.median(organs[:, 0])), float(np.quantile(organs[:, 1], 0.9))


def _plane(tissues: np.ndarray, origin) -> tuple[np.ndarray, np.ndarray]:
    """Patient x and y (mm) of every pixel of one axial slice."""
    ny, nx = tissues.shape[1:]
    return np.meshgrid(np.arange(nx) * ATLAS_MM + origin[0], np.arange(ny) * ATLAS_MM + origin[1])


def _paint(slice_: np.ndarray, mask: np.ndarray, tissue: Tissue) -> None:
    slice_[mask & (slice_ == _UNLABELLED)] = tissue


def _draw_spine(tissues: np.ndarray, origin, x0: float, y0: float, rng: np.random.Generator) -> None:
    """Vertebral bodies with discs, the arch with spinous and transverse processes, canal and back muscles."""
    x, y = _plane(tissues, origin)
    half_width, half_depth = rng.uniform(20, 25), rng.uniform(15, 18)
    period, phase = rng.uniform(33, 40), rng.uniform(0, 40)
    for k in range(tissues.shape[0]):
        z = origin[2] + k * ATLAS_MM
        yk = y0 + 6.0 * np.sin(z / 120.0)  # a gentle lordosis
        s = tissues[k]
        canal_y = yk + half_depth + 8.0
        disc = (z + phase) % period < 8.0
        body = ((x - x0) / half_width) ** 2 + ((y - yk) / half_depth) ** 2 <= 1.0
        canal = (x - x0) ** 2 + (y - canal_y) ** 2 <= 8.0**2
        ring = ((x - x0) ** 2 + (y - canal_y) ** 2 <= 14.0**2) & ~canal & (y > canal_y - 8.0)
        spinous = (np.abs(x - x0) < 4.0) & (y > canal_y) & (y < canal_y + 35.0)
        transverse = (np.abs(y - canal_y + 4.0) < 4.0) & (np.abs(x - x0) < 38.0) & (np.abs(x - x0) > 10.0)
        _paint(s, canal, Tissue.SPINAL_CANAL)
        _paint(s, body, Tissue.DISC if disc else Tissue.VERTEBRA)
        _paint(s, ring | spinous | (transverse & (not disc)), Tissue.VERTEBRA)
        back = (((np.abs(x - x0) - 22.0) / 18.0) ** 2 + ((y - canal_y - 22.0) / 22.0) ** 2 <= 1.0) & (np.abs(x - x0) > 5.0)
        _paint(s, back, Tissue.AUTOCHTHON)


def _draw_psoas(tissues: np.ndarray, origin, x0: float, y0: float, sites: dict[str, KidneySite], rng: np.random.Generator) -> None:
    """Psoas beside the vertebral bodies: absent above the kidneys' centres, growing towards the pelvis."""
    x, y = _plane(tissues, origin)
    top = max((site.centre[2] for site in sites.values()), default=origin[2] + tissues.shape[0] * ATLAS_MM / 2) + 30.0
    largest = rng.uniform(12, 20)
    for k in range(tissues.shape[0]):
        grow = (top - (origin[2] + k * ATLAS_MM)) / 150.0
        if grow <= 0:
            continue
        r = largest * min(1.0, grow) + 4.0
        for sign in (-1.0, 1.0):
            cx = x0 + sign * (22.0 + r)
            _paint(tissues[k], ((x - cx) / r) ** 2 + ((y - y0 + 2.0) / (0.8 * r)) ** 2 <= 1.0, Tissue.PSOAS)


def _draw_column(tissues: np.ndarray, origin, centre: tuple[float, float], radius: float, tissue: Tissue) -> None:
    x, y = _plane(tissues, origin)
    disc = (x - centre[0]) ** 2 + (y - centre[1]) ** 2 <= radius**2
    for k in range(tissues.shape[0]):
        _paint(tissues[k], disc, tissue)


def _draw_body(tissues: np.ndarray, origin, x0: float, ribs: bool, rng: np.random.Generator) -> None:
    """Body outline as an ellipse per slice around everything labelled, with subcutaneous fat, a muscular wall,
    ribs in the wall (where the source has none) and fat or soft tissue between the organs."""
    x, y = _plane(tissues, origin)
    fat_mm, wall_mm = rng.uniform(8, 35), rng.uniform(8, 16)
    labelled = tissues != _UNLABELLED
    extents = []
    for k in range(tissues.shape[0]):
        pts = np.argwhere(labelled[k])
        extents.append(None if pts.size < 20 else (pts[:, 1].min(), pts[:, 1].max(), pts[:, 0].min(), pts[:, 0].max()))
    known = [k for k, e in enumerate(extents) if e is not None]
    # the extents, smoothed along z so that the outline does not jump between slices
    table = np.array([extents[min(known, key=lambda j: abs(j - k))] for k in range(len(extents))], float)
    table = ndimage.uniform_filter1d(table, size=max(1, int(30 / ATLAS_MM)), axis=0, mode="nearest")
    noise = ndimage.gaussian_filter(rng.standard_normal(tissues.shape, np.float32), (4, 6, 6))
    noise /= max(float(noise.std()), 1e-6)
    top_ribs = origin[2] + tissues.shape[0] * ATLAS_MM
    rib_bottom = top_ribs - rng.uniform(90, 150)
    for k in range(tissues.shape[0]):
        x_lo, x_hi, y_lo, y_hi = table[k] * ATLAS_MM + np.array([origin[0], origin[0], origin[1], origin[1]])
        a, b, cy = max(x_hi - x0, x0 - x_lo) + 4.0, (y_hi - y_lo) / 2.0 + 4.0, (y_lo + y_hi) / 2.0

        def within(grow: float) -> np.ndarray:
            return ((x - x0) / (a + grow)) ** 2 + ((y - cy) / (b + grow)) ** 2 <= 1.0  # noqa: B023 (used at once)

        s = tissues[k]
        inner, fat_inside = within(0.0), within(wall_mm)
        s[~within(wall_mm + fat_mm)] = Tissue.OUTSIDE
        _paint(s, ~fat_inside & (s != Tissue.OUTSIDE), Tissue.FAT)
        _paint(s, ~inner & fat_inside, Tissue.MUSCLE)
        z = origin[2] + k * ATLAS_MM
        if ribs and z > rib_bottom:
            angle = np.arctan2(y - cy, x - x0)
            band = within(0.8 * wall_mm + 2.0) & ~within(0.2 * wall_mm) & (np.sin(angle) > -0.2)
            _paint(s, band & (np.sin(angle * 9.0 + z / 6.0) > 0.55), Tissue.RIB)
        free = s == _UNLABELLED
        s[free] = np.where(noise[k][free] > 0.2, Tissue.VISCERA, Tissue.FAT)
