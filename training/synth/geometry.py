"""Points, boxes, rotations and smooth random fields in the atlas's patient space (x, y, z mm; arrays ``[z, y, x]``)."""

from __future__ import annotations

import numpy as np

from training.synth_anatomy import ATLAS_MM, Atlas


def atlas_box(atlas: Atlas, lo_mm: np.ndarray, hi_mm: np.ndarray, shape) -> tuple[slice, ...]:
    """Index slices (z, y, x) of the atlas covering the points between ``lo_mm`` and ``hi_mm``."""
    lo = np.floor(atlas.to_index(lo_mm)).astype(int)
    hi = np.ceil(atlas.to_index(hi_mm)).astype(int) + 1
    return tuple(slice(max(int(a), 0), min(int(b), n)) for a, b, n in zip(lo, hi, shape))


def box_points(atlas: Atlas, box: tuple[slice, ...]) -> np.ndarray:
    """Patient coordinates (x, y, z mm) of every atlas voxel in ``box``, shaped (z, y, x, 3)."""
    z, y, x = np.meshgrid(*(np.arange(s.start, s.stop) for s in box), indexing="ij")
    return np.stack([x, y, z], axis=-1) * ATLAS_MM + np.array(atlas.origin)


def rotation_xyz(degrees) -> np.ndarray:
    """Rotation about x, then y, then z (degrees)."""
    rx, ry, rz = np.radians(degrees)
    x = np.array([[1, 0, 0], [0, np.cos(rx), -np.sin(rx)], [0, np.sin(rx), np.cos(rx)]])
    y = np.array([[np.cos(ry), 0, np.sin(ry)], [0, 1, 0], [-np.sin(ry), 0, np.cos(ry)]])
    z = np.array([[np.cos(rz), -np.sin(rz), 0], [np.sin(rz), np.cos(rz), 0], [0, 0, 1]])
    return z @ y @ x


def smooth_field(rng: np.random.Generator, shape, coarse, sd: float) -> np.ndarray:
    """A smooth random field of ``shape``: ``coarse`` control points of standard deviation ``sd``, Gaussian-kernel upsampled."""
    field = rng.normal(0.0, sd, coarse).astype(np.float32)
    for axis, (n, c) in enumerate(zip(shape, coarse)):
        t = np.linspace(0, c - 1, n)[:, None] - np.arange(c)[None, :]
        weights = np.exp(-0.5 * (t / 0.7) ** 2)
        weights = (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)
        field = np.moveaxis(np.tensordot(weights, field, axes=([1], [axis])), 0, axis)
    return field
