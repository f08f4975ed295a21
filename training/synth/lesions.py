"""Round lesions and cysts painted into the liver and spleen of an atlas (their HU: :mod:`.hu`)."""

from __future__ import annotations

import numpy as np

from training.synth.geometry import atlas_box, box_points
from training.synth_anatomy import ATLAS_MM, Atlas, Tissue

#: Share of cases with liver and spleen lesions: cysts, hypodense lesions, and lesions that enhance like renal cortex.
_LESION_SHARE = 0.6
_LESION_RADIUS_MM, _LESIONS_PER_ORGAN = (5.0, 25.0), {Tissue.LIVER: 4, Tissue.SPLEEN: 2}


def draw_lesions(tissues: np.ndarray, atlas: Atlas, rng: np.random.Generator) -> list[dict]:
    """Round lesions or cysts inside the liver and spleen (in a share of cases); returns where (organ, centre and
    radii in mm, unrounded), for the metadata."""
    if rng.random() >= _LESION_SHARE:
        return []
    drawn = []
    for organ, most in _LESIONS_PER_ORGAN.items():
        inside = np.argwhere(tissues[::3, ::3, ::3] == organ) * 3
        for _ in range(int(rng.integers(0, most + 1)) if inside.size else 0):
            centre = inside[int(rng.integers(len(inside)))][::-1] * ATLAS_MM + np.array(atlas.origin)
            radii = rng.uniform(*_LESION_RADIUS_MM) * rng.uniform(0.7, 1.3, 3)
            box = atlas_box(atlas, centre - radii, centre + radii, tissues.shape)
            region = tissues[box]
            region[(np.sum(((box_points(atlas, box) - centre) / radii) ** 2, axis=-1) <= 1.0) & (region == organ)] = Tissue.LESION
            drawn.append({"organ": organ.name.lower(), "centre_mm": centre, "radii_mm": radii})
    return drawn
