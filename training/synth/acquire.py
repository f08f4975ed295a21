"""The simulated scan: partial-volume blur of a random acquisition, sampling onto the output grid, noise, a smooth
offset field and occasional streaks."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from training.phantoms import Grid
from training.synth.geometry import smooth_field
from training.synth_anatomy import Tissue


@dataclass(frozen=True)
class Acquisition:
    """The simulated scan: resolution, noise, offset field and artefacts."""

    pixel_mm: float
    slice_mm: float
    noise_sd: float
    noise_corr_px: float
    offset_field_hu: float
    streaks: bool


def draw_acquisition(rng: np.random.Generator) -> Acquisition:
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


def acquire(image: np.ndarray, tissues: np.ndarray, factors, grid: Grid, acquisition: Acquisition, rng: np.random.Generator) -> np.ndarray:
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
    out += body * smooth_field(rng, out.shape, (3, 4, 4), acquisition.offset_field_hu)
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
