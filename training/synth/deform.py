"""A case's random affine + elastic deformation, and the atlas labels sampled through it on the fine work grid."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from training.phantoms import Grid
from training.synth.geometry import rotation_xyz, smooth_field
from training.synth_anatomy import ATLAS_MM, Atlas


@dataclass(frozen=True)
class Deformation:
    """Output point p maps to atlas point centre + matrix (p - centre) + shift + elastic(p)."""

    rotation_deg: tuple[float, float, float]
    scale: tuple[float, float, float]
    shift_mm: tuple[float, float, float]
    elastic_sd_mm: float


def draw_deformation(rng: np.random.Generator) -> Deformation:
    """Rotation up to 10 degrees about x and y and 15 about z, scale 0.85-1.15, a shift and an elastic field."""
    return Deformation(
        rotation_deg=(rng.uniform(-10, 10), rng.uniform(-10, 10), rng.uniform(-15, 15)),
        scale=tuple(rng.uniform(0.85, 1.15) * rng.uniform(0.95, 1.05, 3)),
        shift_mm=tuple(rng.normal(0.0, 5.0, 3)),
        elastic_sd_mm=rng.uniform(0.0, 4.0),
    )


def deform(tissues: np.ndarray, atlas: Atlas, grid: Grid, factors, deformation: Deformation, rng: np.random.Generator) -> np.ndarray:
    """The atlas labels sampled (nearest neighbour) through the deformation on the fine work grid."""
    shape = tuple(n * f for n, f in zip(grid.shape, factors))
    step = np.array(grid.spacing) / np.array(factors[::-1])
    axes = [grid.origin[a] + (np.arange(shape[2 - a]) - (factors[2 - a] - 1) / 2) * step[a] for a in range(3)]
    centre = np.array(grid.origin) + (np.array(grid.shape[::-1]) - 1) * np.array(grid.spacing) / 2
    matrix = rotation_xyz(deformation.rotation_deg) @ np.diag(deformation.scale)
    deltas = [(axes[a] - centre[a]).reshape([-1 if 2 - a == d else 1 for d in range(3)]).astype(np.float32) for a in range(3)]
    coarse = tuple(max(3, int(np.ceil(n * s / 60.0)) + 1) for n, s in zip(shape, step[::-1]))
    coords = []
    for b in (2, 1, 0):  # atlas index order z, y, x
        point = centre[b] + deformation.shift_mm[b] + sum(matrix[b, a] * deltas[a] for a in range(3))
        point = point + smooth_field(rng, shape, coarse, deformation.elastic_sd_mm)
        coords.append((point - atlas.origin[b]) / ATLAS_MM)
    return ndimage.map_coordinates(tissues, coords, order=0, mode="nearest")
