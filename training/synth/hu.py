"""A case's intensities: its contrast phase (or fully random HU), mean HU per tissue from the per-phase ranges below,
and the rendering of the label map as HU on the work grid (texture, cortical bone rims, contrast-filled loops).

The ranges are drawn from per case, unlike the phantoms' fixed means per phase (:mod:`training.phantoms`); both tables
list their phases in the order of :data:`training.phantoms.PHASE_COLUMN`.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from training.phantoms import PHASE_COLUMN, Phase
from training.synth.geometry import smooth_field
from training.synth.tissues import BONES, CORTEX, LEFT, MEDULLA, RIGHT
from training.synth_anatomy import Tissue

PHASE_WEIGHTS = {Phase.ARTERIAL: 0.6, Phase.NEPHROGRAPHIC: 0.2, Phase.NONCONTRAST: 0.12, Phase.DELAYED: 0.08}
RANDOM_INTENSITY_SHARE = 0.2
RANDOM_HU = (-200.0, 500.0)

#: HU range (low, high) per tissue, one for all phases or one per phase (native, arterial, nephrographic, delayed:
#: PHASE_COLUMN).
_HU: dict[Tissue, tuple] = {
    Tissue.OUTSIDE: (-1010, -990),
    Tissue.TABLE: (-150, 250),
    Tissue.FAT: (-120, -75),
    Tissue.MUSCLE: ((35, 60), (40, 65), (45, 75), (45, 70)),
    Tissue.VISCERA: ((20, 50), (35, 90), (50, 110), (45, 95)),
    Tissue.BONE: (80, 350),  # cancellous bone and marrow; the cortical rim is added in render
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
#: Liver and spleen lesions (:mod:`.lesions`): cysts, hypodense lesions, and lesions that enhance like renal cortex
#: (arterial and later).
_LESION_HU = ((0.0, 20.0), (20.0, 60.0), (120.0, 260.0))
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
BOWEL = (Tissue.STOMACH, Tissue.DUODENUM, Tissue.SMALL_BOWEL, Tissue.COLON)  # filled with oral contrast in a share of cases
_CYST_SHARE, _CYST_HU = 0.4, (0.0, 20.0)  # a dropped tumour is sometimes rendered as a cyst


def draw_phase(rng: np.random.Generator) -> Phase | None:
    """A contrast phase, or None for fully random intensities."""
    if rng.random() < RANDOM_INTENSITY_SHARE:
        return None
    phases = list(PHASE_WEIGHTS)
    return phases[int(rng.choice(len(phases), p=list(PHASE_WEIGHTS.values())))]


def draw_oral_contrast(phase: Phase | None, rng: np.random.Generator) -> bool:
    """Whether the bowel holds oral contrast: in a share of contrast-enhanced cases (no draw otherwise)."""
    return phase not in (None, Phase.NONCONTRAST) and rng.random() < _ORAL_CONTRAST_SHARE


def hu_table(phase: Phase | None, oral: bool, rng: np.random.Generator) -> np.ndarray:
    """Mean HU per tissue (indexed by Tissue) for a phase, or at random (``phase`` None)."""
    table = np.zeros(len(Tissue), np.float32)
    for tissue in Tissue:
        if phase is None and tissue is not Tissue.OUTSIDE:
            table[tissue] = rng.uniform(*RANDOM_HU)
        elif tissue in _HU:
            ranges = _HU[tissue]
            if isinstance(ranges[0], tuple):  # one range per phase
                assert phase is not None  # random intensities take only OUTSIDE from _HU, whose range serves every phase
                ranges = ranges[PHASE_COLUMN[phase]]
            table[tissue] = rng.uniform(*ranges)
    if phase is None:
        return table
    for side in (RIGHT, LEFT):
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


def render(tissues: np.ndarray, table: np.ndarray, oral: bool, rng: np.random.Generator) -> np.ndarray:
    """HU on the work grid: mean per tissue, texture, cortical bone rims, contrast-filled loops among the viscera."""
    amplitude = np.array([rng.uniform(*_TEXTURE.get(t, _TEXTURE_DEFAULT)) for t in Tissue], np.float32)
    texture = ndimage.gaussian_filter(rng.standard_normal(tissues.shape, np.float32), rng.uniform(0.6, 1.5))
    texture /= max(float(texture.std()), 1e-6)
    image = table[tissues] + amplitude[tissues] * texture
    bone = np.isin(tissues, BONES)
    image[bone & ~ndimage.binary_erosion(bone)] += rng.uniform(_CORTICAL_RIM_HU[0], _CORTICAL_RIM_HU[1])
    if oral:
        loops = smooth_field(rng, tissues.shape, tuple(max(3, n // 8) for n in tissues.shape), 1.0) > rng.uniform(0.3, 1.0)
        image[loops & (tissues == Tissue.VISCERA)] = rng.uniform(*_ORAL_CONTRAST_HU)
    return image
