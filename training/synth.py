"""Synthetic training cases on real anatomy (``dicomnode-train synth``), in the manner of SynthSeg.

Each case takes one of many real patients' label maps (:mod:`training.anatomies`, and the shared real CT's in
:mod:`training.synth_anatomy`), gives it two real kidneys of other people (KiTS19 shapes, rescaled and placed at
the patient's own kidney sites, sometimes lower, rotated, small or large), a synthesized cortex, medulla, sinus and
pelvis inside each, renal vessels, lesions and cysts in the liver and spleen, and a random affine + elastic
deformation. Its field of view may cut a kidney at any edge or hold no kidney at all. The label map is then
rendered as CT: per-structure HU drawn for a contrast phase (or fully at random), texture, partial-volume blur of a
random acquisition, noise, a smooth offset field and occasional streaks.
Each case is deterministic from its seed. Arrays are ``[z, y, x]`` in LPS; spacings are (x, y, z) mm.
"""

from __future__ import annotations

import enum
import functools
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from training.anatomies import ANATOMY_CREDITS, SHARED_ATLAS, VALIDATION, AnatomySource, anatomy_sources, load_anatomy
from training.cases import Case, write_manifest
from training.phantom_dicom import to_sitk
from training.phantoms import Grid, Phase
from training.synth_anatomy import (
    ATLAS_MM,
    CREDITS,
    Atlas,
    KidneySite,
    KitsKidney,
    Tissue,
    load_atlas,
    load_kits_kidneys,
    principal_axis,
    triple,
)

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
DEFAULT_CACHE = Path.home() / ".cache" / "dicomnode-train"

PHASE_WEIGHTS = {Phase.ARTERIAL: 0.6, Phase.NEPHROGRAPHIC: 0.2, Phase.NONCONTRAST: 0.12, Phase.DELAYED: 0.08}
RANDOM_INTENSITY_SHARE = 0.2
RANDOM_HU = (-200.0, 500.0)
_PHASES = (Phase.NONCONTRAST, Phase.ARTERIAL, Phase.NEPHROGRAPHIC, Phase.DELAYED)

_R, _L = ("right", "left")
CORTEX = {_R: Tissue.CORTEX_RIGHT, _L: Tissue.CORTEX_LEFT}
MEDULLA = {_R: Tissue.MEDULLA_RIGHT, _L: Tissue.MEDULLA_LEFT}
KIDNEY_TISSUES = (*CORTEX.values(), *MEDULLA.values())
BONES = (Tissue.BONE, Tissue.VERTEBRA, Tissue.RIB)
BOWEL = (Tissue.STOMACH, Tissue.DUODENUM, Tissue.SMALL_BOWEL, Tissue.COLON)
#: A new kidney never overwrites these; vessels are drawn only through these.
_KIDNEY_PROOF = (*BONES, Tissue.AORTA, Tissue.IVC, Tissue.SPINAL_CANAL)
_VESSEL_PATH = (Tissue.FAT, Tissue.VISCERA, Tissue.RENAL_SINUS)

#: HU range (low, high) per tissue, one for all phases or one per phase (native, arterial, nephrographic, delayed).
_HU: dict[Tissue, tuple] = {
    Tissue.OUTSIDE: (-1010, -990),
    Tissue.TABLE: (-150, 250),
    Tissue.FAT: (-120, -75),
    Tissue.MUSCLE: ((35, 60), (40, 65), (45, 75), (45, 70)),
    Tissue.VISCERA: ((20, 50), (35, 90), (50, 110), (45, 95)),
    Tissue.BONE: (80, 350),  # cancellous bone and marrow; the cortical rim is added in _render
    Tissue.GAS: (-1000, -850),
    Tissue.LUNG: (-900, -780),
    Tissue.LIVER: ((45, 70), (55, 95), (90, 140), (75, 110)),
    Tissue.SPLEEN: ((40, 60), (90, 170), (100, 150), (85, 120)),
    Tissue.STOMACH: ((10, 45), (20, 70), (30, 90), (25, 80)),
    Tissue.PANCREAS: ((30, 55), (80, 140), (70, 120), (55, 95)),
    Tissue.GALLBLADDER: (0, 25),
    Tissue.ADRENAL: ((20, 45), (45, 90), (50, 95), (40, 80)),
    Tissue.SMALL_BOWEL: ((15, 45), (30, 90), (40, 100), (35, 90)),
    Tissue.DUODENUM: ((15, 45), (30, 90), (40, 100), (35, 90)),
    Tissue.COLON: ((-60, 40), (-40, 60), (-30, 70), (-30, 60)),
    Tissue.VERTEBRA: (90, 300),
    Tissue.AORTA: ((30, 55), (200, 450), (130, 220), (100, 160)),
    Tissue.IVC: ((30, 55), (60, 140), (120, 190), (90, 150)),
    Tissue.PORTAL_VEIN: ((30, 55), (80, 170), (140, 220), (100, 160)),
    Tissue.SPINAL_CANAL: (10, 40),
    Tissue.AUTOCHTHON: ((35, 60), (40, 65), (45, 75), (45, 70)),
    Tissue.PSOAS: ((35, 60), (40, 65), (45, 75), (45, 70)),
    Tissue.RIB: (150, 600),
    Tissue.COSTAL_CARTILAGE: (70, 160),
    Tissue.RENAL_SINUS: (-110, -60),
    Tissue.RENAL_PELVIS: ((0, 20), (0, 25), (0, 30), (300, 1200)),
    Tissue.RENAL_MASS: ((20, 45), (40, 200), (60, 150), (50, 120)),
    Tissue.RENAL_ARTERY: ((30, 55), (200, 450), (130, 220), (100, 160)),
    Tissue.RENAL_VEIN: ((30, 55), (100, 200), (120, 200), (90, 150)),
    Tissue.CORTEX_RIGHT: ((25, 45), (120, 250), (130, 210), (100, 170)),
    Tissue.CORTEX_LEFT: ((25, 45), (120, 250), (130, 210), (100, 170)),
    Tissue.BLADDER: ((0, 20), (0, 20), (0, 25), (150, 900)),
    Tissue.HEART: ((35, 55), (150, 350), (120, 200), (100, 160)),
    Tissue.DISC: (70, 110),
}
#: Liver and spleen lesions: cysts, hypodense lesions, and lesions that enhance like renal cortex (arterial and later).
_LESION_SHARE, _LESION_HU = 0.6, ((0.0, 20.0), (20.0, 60.0), (120.0, 260.0))
#: Medulla HU relative to the cortex of the same case, per phase; arterial medulla is drawn on its own.
_MEDULLA_OFFSET = {Phase.NONCONTRAST: (-10, 5), Phase.NEPHROGRAPHIC: (-15, 20), Phase.DELAYED: (-5, 30)}
#: Arterial medulla: below the cortex by 0-150 HU (by less than 60 in a third of kidneys: late timing, poor renal
#: function), and within 30-150 HU.
_CORTICOMEDULLARY_HU, _WEAK_CORTICOMEDULLARY_SHARE, _ARTERIAL_MEDULLA_HU = (60.0, 150.0), 0.33, (30.0, 150.0)
#: Texture (HU standard deviation) range per tissue; others get _TEXTURE_DEFAULT.
_TEXTURE = {
    Tissue.OUTSIDE: (0, 2),
    Tissue.COLON: (20, 60),
    Tissue.VISCERA: (10, 30),
    Tissue.SMALL_BOWEL: (10, 30),
    Tissue.BONE: (30, 100),
    Tissue.VERTEBRA: (20, 60),
    Tissue.RIB: (30, 100),
    Tissue.RENAL_MASS: (15, 40),
    Tissue.GAS: (20, 60),
    Tissue.LUNG: (20, 50),
    Tissue.TABLE: (20, 80),
}
_TEXTURE_DEFAULT = (3.0, 12.0)
#: Added to the outer voxel of every bone: cortical bone over cancellous bone, whose HU falls with age to 80-150 in
#: the pelvis of older patients (real CT here: 130-160 HU mean in the iliac bones and sacrum).
_CORTICAL_RIM_HU = (150.0, 600.0)
_ORAL_CONTRAST_SHARE, _ORAL_CONTRAST_HU = 0.3, (150.0, 600.0)
_CYST_SHARE, _CYST_HU = 0.4, (0.0, 20.0)  # a dropped tumour is sometimes rendered as a cyst


@dataclass(frozen=True)
class OutputGrid:
    """Spacing (x, y, z mm) and largest shape (z, y, x) of the written cases."""

    spacing: tuple[float, float, float] = (1.6, 1.6, 5.0)
    max_shape: tuple[int, int, int] = (72, 256, 256)
    max_work_mm: tuple[float, float, float] = (1.7, 1.7, 2.0)  # finer grid the anatomy is rendered on


@dataclass(frozen=True)
class Anatomy:
    """One patient's completed anatomy, its name and whom to credit for it."""

    name: str
    credit: str
    atlas: Atlas


@dataclass(frozen=True)
class Sources:
    """The atlases (real patients' anatomies by name) and the pool of KiTS19 kidneys."""

    anatomies: tuple[Anatomy, ...]
    kidneys: tuple[KitsKidney, ...]


@dataclass(frozen=True)
class SynthCase:
    """A rendered case: HU image, ITK-SNAP labels (1 medulla, 2 cortex), full anatomy, grid and metadata."""

    image: np.ndarray  # float32 HU
    labels: np.ndarray  # uint8
    tissues: np.ndarray  # uint8 Tissue
    grid: Grid
    metadata: dict

    @property
    def spacing(self) -> tuple[float, float, float]:
        return self.grid.spacing


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


@dataclass(frozen=True)
class Deformation:
    """Output point p maps to atlas point centre + matrix (p - centre) + shift + elastic(p)."""

    rotation_deg: tuple[float, float, float]
    scale: tuple[float, float, float]
    shift_mm: tuple[float, float, float]
    elastic_sd_mm: float


@dataclass(frozen=True)
class Acquisition:
    """The simulated scan: resolution, noise, offset field and artefacts."""

    pixel_mm: float
    slice_mm: float
    noise_sd: float
    noise_corr_px: float
    offset_field_hu: float
    streaks: bool


class AnatomySet(str, enum.Enum):
    """Which anatomies ``load_sources`` builds cases on."""

    TRAIN = "train"  # every anatomy but those kept for validation, and the shared real CT's
    VALIDATION = "validation"  # the anatomies kept out of training (``anatomies.VALIDATION``)
    SHARED = "shared"  # the shared real CT's alone (the generator's first version)


@functools.lru_cache(maxsize=4)
def load_sources(
    data: Path = DEFAULT_DATA,
    cache_dir: Path = DEFAULT_CACHE,
    kits_cases: tuple[str, ...] | None = None,
    anatomies: AnatomySet | tuple[str, ...] = AnatomySet.TRAIN,
) -> Sources:
    """Atlases and KiTS kidneys (all cases, or ``kits_cases``), parsed once per process and cached on disk.

    ``anatomies`` is a set of them or a tuple of names (``real_ct`` is the shared real CT's)."""
    found = {source.name: source for source in anatomy_sources(data / "anatomy")} if (data / "anatomy").exists() else {}
    names = anatomy_names(found, anatomies)
    built = tuple(
        Anatomy(name, CREDITS[1], load_atlas(data / "real_ct", cache_dir))
        if name == SHARED_ATLAS
        else Anatomy(name, ANATOMY_CREDITS[found[name].source], load_anatomy(found[name], cache_dir))
        for name in names
    )
    if not built:
        raise ValueError(f"anatomies: none found under {data}")
    kidneys = load_kits_kidneys(data / "kits19_labels", cache_dir, list(kits_cases) if kits_cases else None)
    if not kidneys:
        raise ValueError(f"no usable KiTS19 kidneys under {data / 'kits19_labels'}")
    return Sources(built, tuple(kidneys))


def anatomy_names(found: dict[str, AnatomySource], anatomies: AnatomySet | tuple[str, ...]) -> list[str]:
    """The names of the anatomies in a set (of those ``found``), or the names given, checked."""
    if isinstance(anatomies, tuple):
        unknown = sorted(set(anatomies) - set(found) - {SHARED_ATLAS})
        if unknown:
            raise ValueError(f"anatomies: {', '.join(unknown)} not found")
        return list(anatomies)
    if anatomies is AnatomySet.VALIDATION:
        return [name for name in VALIDATION if name in found]
    if anatomies is AnatomySet.SHARED:
        return [SHARED_ATLAS]
    return [SHARED_ATLAS, *(name for name in found if name not in VALIDATION)]


def make_synth_case(seed: int, sources: Sources, grid: OutputGrid = OutputGrid(), no_kidney_share: float | None = None) -> SynthCase:
    """One synthetic case, deterministic from ``seed``; ``no_kidney_share`` is the chance of a field of view without
    kidney (default: _VIEW_SHARES's), the other views keeping their proportions."""
    rng = np.random.default_rng([seed, 20261202])
    anatomy = sources.anatomies[int(rng.integers(len(sources.anatomies)))]
    atlas = anatomy.atlas
    tissues_atlas = atlas.tissues.copy()
    deformation = _draw_deformation(rng)
    growth = 1.0 / float(np.prod(deformation.scale))  # the deformation's change of volume
    lesions = _draw_lesions(tissues_atlas, atlas, rng)
    sites = {side: _varied_site(atlas.sites[side], rng) for side in (_R, _L) if side in atlas.sites}
    kidneys = [place_kidney(tissues_atlas, atlas, site, sources.kidneys, growth, rng) for site in sites.values()]
    for kidney in kidneys:
        _draw_renal_vessels(tissues_atlas, atlas, kidney, rng)
    view = View(rng.choice([v.value for v in View], p=view_shares(no_kidney_share)))
    out_grid, factors, view = _field_of_view(tissues_atlas, atlas, grid, view, rng)
    work = _deform(tissues_atlas, atlas, out_grid, factors, deformation, rng)
    phase = _draw_phase(rng)
    oral = phase not in (None, Phase.NONCONTRAST) and rng.random() < _ORAL_CONTRAST_SHARE
    hu_table = _hu_table(phase, oral, rng)
    image_work = _render(work, hu_table, oral, rng)
    acquisition = _draw_acquisition(rng)
    centre = tuple(slice((f - 1) // 2, None, f) for f in factors)
    image = _acquire(image_work, work, factors, out_grid, acquisition, rng)
    tissues = np.ascontiguousarray(work[centre])
    labels = np.zeros(tissues.shape, np.uint8)
    labels[np.isin(tissues, tuple(MEDULLA.values()))] = 1
    labels[np.isin(tissues, tuple(CORTEX.values()))] = 2
    in_view = labels > 0  # the deformation moves the kidneys: say what the image shows
    view = View.NO_KIDNEY if not in_view.any() else View.CUT if _on_edge(in_view) else View.KIDNEYS
    metadata = {
        "seed": seed,
        "phase": phase.value if phase is not None else "random",
        "intensities": "phase" if phase is not None else "random",
        "oral_contrast": oral,
        "hu": {t.name.lower(): round(float(v), 1) for t, v in zip(Tissue, hu_table)},
        "anatomy": anatomy.name,
        "view": view.value,
        "lesions": lesions,
        "kidneys": {k.side: _rounded(asdict(k)) for k in kidneys},
        "kits_cases": sorted({k.kits_case for k in kidneys}),
        "volumes_ml": volumes_ml(tissues, out_grid),
        "deformation": _rounded(asdict(deformation)),
        "acquisition": _rounded(asdict(acquisition)),
        "spacing_mm": list(out_grid.spacing),
        "shape_zyx": list(tissues.shape),
        "credits": [CREDITS[0], anatomy.credit],
    }
    return SynthCase(image, labels, tissues, out_grid, metadata)


def volumes_ml(tissues: np.ndarray, grid: Grid) -> dict[str, dict[str, float]]:
    """Cortex, medulla and parenchyma volume per side."""
    volumes = {}
    for side in (_R, _L):
        cortex, medulla = (float(np.sum(tissues == t) * grid.voxel_ml) for t in (CORTEX[side], MEDULLA[side]))
        volumes[side] = {"cortex": round(cortex, 2), "medulla": round(medulla, 2), "parenchyma": round(cortex + medulla, 2)}
    return volumes


def write_synth_cases(folder: Path, seeds: list[int], sources: Sources, grid: OutputGrid = OutputGrid(), no_kidney_share: float | None = None) -> list[Case]:
    """Write cases as NIfTI (image, ITK-SNAP labels, full anatomy, metadata JSON), a manifest and a README."""
    folder.mkdir(parents=True, exist_ok=True)
    cases = []
    for seed in seeds:
        case = make_synth_case(seed, sources, grid, no_kidney_share)
        case_id = f"synth_{seed:05d}"
        image, labels = folder / f"{case_id}.nii.gz", folder / f"{case_id}_labels.nii.gz"
        sitk.WriteImage(to_sitk(np.clip(np.rint(case.image), -1024, 3071).astype(np.int16), case.grid), str(image))
        sitk.WriteImage(to_sitk(case.labels, case.grid), str(labels))
        sitk.WriteImage(to_sitk(case.tissues, case.grid), str(folder / f"{case_id}_anatomy.nii.gz"))
        (folder / f"{case_id}.json").write_text(json.dumps(case.metadata, indent=1))
        cases.append(Case(case_id, image, labels, group=case.metadata["phase"]))
    write_manifest(folder / "manifest.csv", cases)
    legend = "\n".join(f"- {t.value} {t.name.lower()}" for t in Tissue)
    (folder / "README.md").write_text(
        "# Synthetic renal CT cases (dicomnode-train synth)\n\n"
        "Labels: 0 background, 1 medulla, 2 cortex (parenchyma = 1 + 2). `*_anatomy.nii.gz` holds the full map:\n"
        f"{legend}\n\nCredits and licence (each case's JSON names its anatomy):\n"
        + "\n".join(f"- {line}" for line in (*CREDITS, *ANATOMY_CREDITS.values()))
        + "\n"
    )
    return cases


# --- kidneys ------------------------------------------------------------------------------------------------

_SCALE = (0.8, 1.2)
_KIDNEY_ML = (70.0, 380.0)  # the whole mask (sinus included) after the case's deformation
#: Shares of small (chronic kidney disease) and large kidneys, with the whole mask's volume (ml) each is scaled to.
_SMALL_KIDNEY, _LARGE_KIDNEY = (0.15, (45.0, 100.0)), (0.1, (260.0, 420.0))
#: Kidney sites moved down (a low or ptotic kidney) and tilted: share, and how far (mm, degrees).
_LOW_SITE, _TILTED_SITE = (0.15, (20.0, 60.0)), (0.2, 25.0)
_TUMOUR_KEPT_SHARE = 0.35  # else the tumour is dropped from the kidney and rendered as a mass


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
    medial = np.array([1.0 if site.side == _R else -1.0, 0.0, 0.0])
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


def _varied_site(site: KidneySite, rng: np.random.Generator) -> KidneySite:
    """The atlas patient's kidney site, sometimes lower (a low or ptotic kidney) or tilted further."""
    centre, axis = np.array(site.centre), np.array(site.long_axis)
    if rng.random() < _LOW_SITE[0]:
        centre[2] -= rng.uniform(*_LOW_SITE[1])
    if rng.random() < _TILTED_SITE[0]:
        axis = _rotation(rng.uniform(-_TILTED_SITE[1], _TILTED_SITE[1], 3) * np.array([1.0, 1.0, 0.0])) @ axis
    return KidneySite(site.side, triple(centre), triple(axis / np.linalg.norm(axis)), site.volume_ml)


_LESION_RADIUS_MM, _LESIONS_PER_ORGAN = (5.0, 25.0), {Tissue.LIVER: 4, Tissue.SPLEEN: 2}


def _draw_lesions(tissues: np.ndarray, atlas: Atlas, rng: np.random.Generator) -> list[dict]:
    """Round lesions or cysts inside the liver and spleen (in a share of cases); returns where, for the metadata."""
    if rng.random() >= _LESION_SHARE:
        return []
    drawn = []
    for organ, most in _LESIONS_PER_ORGAN.items():
        inside = np.argwhere(tissues[::3, ::3, ::3] == organ) * 3
        for _ in range(int(rng.integers(0, most + 1)) if inside.size else 0):
            centre = inside[int(rng.integers(len(inside)))][::-1] * ATLAS_MM + np.array(atlas.origin)
            radii = rng.uniform(*_LESION_RADIUS_MM) * rng.uniform(0.7, 1.3, 3)
            box = _atlas_box(atlas, centre - radii, centre + radii, tissues.shape)
            region = tissues[box]
            region[(np.sum(((_box_points(atlas, box) - centre) / radii) ** 2, axis=-1) <= 1.0) & (region == organ)] = Tissue.LESION
            drawn.append({"organ": organ.name.lower(), "centre_mm": _rounded(centre), "radii_mm": _rounded(radii)})
    return drawn


def _resample_kidney(shape, centre_idx, rotation, scale, centre, atlas: Atlas, atlas_shape):
    """Kidney and tumour masks of a source shape mapped into a box of the atlas around ``centre`` (mm)."""
    reach = ATLAS_MM * scale * np.linalg.norm(np.maximum(centre_idx, np.array(shape.shape) - centre_idx)) + 3.0
    box = _atlas_box(atlas, centre - reach, centre + reach, atlas_shape)
    source = ((_box_points(atlas, box) - centre) @ rotation) / (scale * ATLAS_MM)  # R^T (p - c) / s, source voxels (x, y, z)
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


# --- renal vessels --------------------------------------------------------------------------------------------


def _draw_renal_vessels(tissues: np.ndarray, atlas: Atlas, kidney: PlacedKidney, rng: np.random.Generator) -> None:
    """Renal artery from the aorta and vein to the IVC, through fat only (left vein in front of the aorta)."""
    sinus, hilum_dir = np.array(kidney.sinus_centre_mm), np.array(kidney.hilum)
    hilum = sinus + 25.0 * hilum_dir
    aorta, ivc = (_vessel_centre(tissues, atlas, t, sinus[2]) for t in (Tissue.AORTA, Tissue.IVC))
    if aorta is None or ivc is None:
        return
    front, behind = np.array([0.0, -20.0, 0.0]), np.array([0.0, 20.0, 0.0])
    if kidney.side == _R:
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
        box = _atlas_box(atlas, np.minimum(a, b) - radius, np.maximum(a, b) + radius, tissues.shape)
        points = _box_points(atlas, box)
        along = np.clip(((points - a) @ (b - a)) / max(float((b - a) @ (b - a)), 1e-6), 0.0, 1.0)
        inside = np.linalg.norm(points - (a + along[..., None] * (b - a)), axis=-1) <= radius
        region = tissues[box]
        region[inside & np.isin(region, _VESSEL_PATH)] = tissue


def _atlas_box(atlas: Atlas, lo_mm: np.ndarray, hi_mm: np.ndarray, shape) -> tuple[slice, ...]:
    """Index slices (z, y, x) of the atlas covering the points between ``lo_mm`` and ``hi_mm``."""
    lo = np.floor(atlas.to_index(lo_mm)).astype(int)
    hi = np.ceil(atlas.to_index(hi_mm)).astype(int) + 1
    return tuple(slice(max(int(a), 0), min(int(b), n)) for a, b, n in zip(lo, hi, shape))


def _box_points(atlas: Atlas, box: tuple[slice, ...]) -> np.ndarray:
    """Patient coordinates (x, y, z mm) of every atlas voxel in ``box``, shaped (z, y, x, 3)."""
    z, y, x = np.meshgrid(*(np.arange(s.start, s.stop) for s in box), indexing="ij")
    return np.stack([x, y, z], axis=-1) * ATLAS_MM + np.array(atlas.origin)


# --- field of view and deformation -----------------------------------------------------------------------------


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


def _field_of_view(tissues: np.ndarray, atlas: Atlas, grid: OutputGrid, view: View, rng: np.random.Generator) -> tuple[Grid, tuple[int, int, int], View]:
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
            side = (_R, _L)[int(rng.integers(2))]
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


def _on_edge(mask: np.ndarray) -> bool:
    return bool(mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any() or mask[:, :, 0].any() or mask[:, :, -1].any())


def _odd_factor(spacing: float, finest: float) -> int:
    """The smallest odd f with spacing / f <= finest, so output voxel centres are work voxel centres."""
    f = 1
    while spacing / f > finest:
        f += 2
    return f


def _draw_deformation(rng: np.random.Generator) -> Deformation:
    """Rotation up to 10 degrees about x and y and 15 about z, scale 0.85-1.15, a shift and an elastic field."""
    return Deformation(
        rotation_deg=(rng.uniform(-10, 10), rng.uniform(-10, 10), rng.uniform(-15, 15)),
        scale=tuple(rng.uniform(0.85, 1.15) * rng.uniform(0.95, 1.05, 3)),
        shift_mm=tuple(rng.normal(0.0, 5.0, 3)),
        elastic_sd_mm=rng.uniform(0.0, 4.0),
    )


def _deform(tissues: np.ndarray, atlas: Atlas, grid: Grid, factors, deformation: Deformation, rng: np.random.Generator) -> np.ndarray:
    """The atlas labels sampled (nearest neighbour) through the deformation on the fine work grid."""
    shape = tuple(n * f for n, f in zip(grid.shape, factors))
    step = np.array(grid.spacing) / np.array(factors[::-1])
    axes = [grid.origin[a] + (np.arange(shape[2 - a]) - (factors[2 - a] - 1) / 2) * step[a] for a in range(3)]
    centre = np.array(grid.origin) + (np.array(grid.shape[::-1]) - 1) * np.array(grid.spacing) / 2
    matrix = _rotation(deformation.rotation_deg) @ np.diag(deformation.scale)
    deltas = [(axes[a] - centre[a]).reshape([-1 if 2 - a == d else 1 for d in range(3)]).astype(np.float32) for a in range(3)]
    coarse = tuple(max(3, int(np.ceil(n * s / 60.0)) + 1) for n, s in zip(shape, step[::-1]))
    coords = []
    for b in (2, 1, 0):  # atlas index order z, y, x
        point = centre[b] + deformation.shift_mm[b] + sum(matrix[b, a] * deltas[a] for a in range(3))
        point = point + _smooth_field(rng, shape, coarse, deformation.elastic_sd_mm)
        coords.append((point - atlas.origin[b]) / ATLAS_MM)
    return ndimage.map_coordinates(tissues, coords, order=0, mode="nearest")


def _rotation(degrees) -> np.ndarray:
    """Rotation about x, then y, then z (degrees)."""
    rx, ry, rz = np.radians(degrees)
    x = np.array([[1, 0, 0], [0, np.cos(rx), -np.sin(rx)], [0, np.sin(rx), np.cos(rx)]])
    y = np.array([[np.cos(ry), 0, np.sin(ry)], [0, 1, 0], [-np.sin(ry), 0, np.cos(ry)]])
    z = np.array([[np.cos(rz), -np.sin(rz), 0], [np.sin(rz), np.cos(rz), 0], [0, 0, 1]])
    return z @ y @ x


def _smooth_field(rng: np.random.Generator, shape, coarse, sd: float) -> np.ndarray:
    """A smooth random field of ``shape``: ``coarse`` control points of standard deviation ``sd``, Gaussian-kernel upsampled."""
    field = rng.normal(0.0, sd, coarse).astype(np.float32)
    for axis, (n, c) in enumerate(zip(shape, coarse)):
        t = np.linspace(0, c - 1, n)[:, None] - np.arange(c)[None, :]
        weights = np.exp(-0.5 * (t / 0.7) ** 2)
        weights = (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)
        field = np.moveaxis(np.tensordot(weights, field, axes=([1], [axis])), 0, axis)
    return field


# --- intensities ----------------------------------------------------------------------------------------------


def _draw_phase(rng: np.random.Generator) -> Phase | None:
    """A contrast phase, or None for fully random intensities."""
    if rng.random() < RANDOM_INTENSITY_SHARE:
        return None
    phases = list(PHASE_WEIGHTS)
    return phases[int(rng.choice(len(phases), p=list(PHASE_WEIGHTS.values())))]


def _hu_table(phase: Phase | None, oral: bool, rng: np.random.Generator) -> np.ndarray:
    """Mean HU per tissue (indexed by Tissue) for a phase, or at random (``phase`` None)."""
    table = np.zeros(len(Tissue), np.float32)
    for tissue in Tissue:
        if phase is None and tissue is not Tissue.OUTSIDE:
            table[tissue] = rng.uniform(*RANDOM_HU)
        elif tissue in _HU:
            ranges = _HU[tissue]
            table[tissue] = rng.uniform(*(ranges[_PHASES.index(phase)] if isinstance(ranges[0], tuple) else ranges))
    if phase is None:
        return table
    for side in (_R, _L):
        table[MEDULLA[side]] = _medulla_hu(phase, float(table[CORTEX[side]]), rng)
    if rng.random() < _CYST_SHARE:
        table[Tissue.RENAL_MASS] = rng.uniform(*_CYST_HU)
    kind = int(rng.integers(len(_LESION_HU))) if phase is not Phase.NONCONTRAST else int(rng.integers(2))
    table[Tissue.LESION] = rng.uniform(*_LESION_HU[kind])
    filled = [t for t in BOWEL if rng.random() < 0.6] if oral else []
    table[filled] = rng.uniform(*_ORAL_CONTRAST_HU, len(filled))
    return table


def _medulla_hu(phase: Phase, cortex: float, rng: np.random.Generator) -> float:
    """Arterial: its own range, well below the cortex; other phases: close to the cortex."""
    if phase is Phase.ARTERIAL:
        weak = rng.random() < _WEAK_CORTICOMEDULLARY_SHARE
        difference = rng.uniform(0.0, _CORTICOMEDULLARY_HU[0]) if weak else rng.uniform(*_CORTICOMEDULLARY_HU)
        return float(np.clip(cortex - difference, *_ARTERIAL_MEDULLA_HU))
    return cortex + rng.uniform(*_MEDULLA_OFFSET[phase])


def _render(tissues: np.ndarray, table: np.ndarray, oral: bool, rng: np.random.Generator) -> np.ndarray:
    """HU on the work grid: mean per tissue, texture, cortical bone rims, contrast-filled loops among the viscera."""
    amplitude = np.array([rng.uniform(*_TEXTURE.get(t, _TEXTURE_DEFAULT)) for t in Tissue], np.float32)
    texture = ndimage.gaussian_filter(rng.standard_normal(tissues.shape, np.float32), rng.uniform(0.6, 1.5))
    texture /= max(float(texture.std()), 1e-6)
    image = table[tissues] + amplitude[tissues] * texture
    bone = np.isin(tissues, BONES)
    image[bone & ~ndimage.binary_erosion(bone)] += rng.uniform(_CORTICAL_RIM_HU[0], _CORTICAL_RIM_HU[1])
    if oral:
        loops = _smooth_field(rng, tissues.shape, tuple(max(3, n // 8) for n in tissues.shape), 1.0) > rng.uniform(0.3, 1.0)
        image[loops & (tissues == Tissue.VISCERA)] = rng.uniform(*_ORAL_CONTRAST_HU)
    return image


def _draw_acquisition(rng: np.random.Generator) -> Acquisition:
    """Pixels 0.6-1.8 mm, thin (0.5-1.5 mm) or thick (2-5 mm) slices, noise growing as slices thin."""
    slice_mm = rng.uniform(0.5, 1.5) if rng.random() < 0.4 else rng.uniform(2.0, 5.0)
    return Acquisition(
        pixel_mm=rng.uniform(0.6, 1.8),
        slice_mm=slice_mm,
        noise_sd=float(min(rng.uniform(6, 20) * np.sqrt(5.0 / slice_mm), 45.0)),
        noise_corr_px=rng.uniform(0.0, 1.0),
        offset_field_hu=rng.uniform(0.0, 20.0),
        streaks=bool(rng.random() < 0.15),
    )


def _acquire(image: np.ndarray, tissues: np.ndarray, factors, grid: Grid, acquisition: Acquisition, rng: np.random.Generator) -> np.ndarray:
    """Blur by the scan's point spread, sample the output voxels, add noise, an offset field and streaks."""
    step = np.array(grid.spacing) / np.array(factors[::-1])
    fwhm = np.array([acquisition.pixel_mm * rng.uniform(0.9, 1.4)] * 2 + [acquisition.slice_mm])
    image = ndimage.gaussian_filter(image, (fwhm / 2.355 / step)[::-1])
    centre = tuple(slice((f - 1) // 2, None, f) for f in factors)
    out = np.ascontiguousarray(image[centre])
    body = ~np.isin(tissues[centre], (Tissue.OUTSIDE, Tissue.TABLE))
    noise = rng.standard_normal(out.shape, np.float32)
    if acquisition.noise_corr_px > 0.1:
        noise = ndimage.gaussian_filter(noise, (0.0, acquisition.noise_corr_px, acquisition.noise_corr_px))
    out += acquisition.noise_sd * noise / max(float(noise.std()), 1e-6)
    out += body * _smooth_field(rng, out.shape, (3, 4, 4), acquisition.offset_field_hu)
    if acquisition.streaks:
        out += _streaks(out.shape, rng)
    return np.clip(out, -1024, 3071).astype(np.float32)


def _streaks(shape, rng: np.random.Generator) -> np.ndarray:
    """Bright and dark lines through one point, fading with distance, over a run of slices."""
    nz, ny, nx = shape
    cy, cx = rng.uniform(0.3, 0.7) * ny, rng.uniform(0.3, 0.7) * nx
    y, x = np.mgrid[0:ny, 0:nx].astype(np.float32)
    fade = np.exp(-np.hypot(y - cy, x - cx) / rng.uniform(30, 90))
    pattern = np.zeros((ny, nx), np.float32)
    for i, angle in enumerate(rng.uniform(0, np.pi, int(rng.integers(3, 10)))):
        distance = np.abs((x - cx) * np.sin(angle) - (y - cy) * np.cos(angle))
        pattern += (-1) ** i * rng.uniform(40, 200) * np.exp(-0.5 * (distance / rng.uniform(0.7, 2.0)) ** 2)
    first = int(rng.integers(0, nz))
    run = slice(first, min(nz, first + int(rng.integers(1, max(2, nz // 2)))))
    out = np.zeros(shape, np.float32)
    out[run] = pattern * fade * rng.uniform(0.5, 1.0, (run.stop - run.start, 1, 1)).astype(np.float32)
    return out


def _rounded(value):
    """A JSON-ready copy with floats rounded and tuples as lists."""
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_rounded(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return round(float(value), 3)
    return value.item() if isinstance(value, np.generic) else value
