"""Resampling between a series' grid and a model's: the series reduced to a coarser spacing (smoothed, then linear),
probabilities brought back linearly box by box, labels by nearest neighbour."""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from scipy import ndimage

#: The first, most reduced axis is smoothed and resampled in slabs of about this many voxels (8 MiB of float32),
#: REDUCE_THREADS at a time, so that the series is never held whole as float32.
SLAB_VOXELS = 2 * 2**20
UNALIGN_PAD = 16
REDUCE_THREADS = max(1, min(4, len(os.sched_getaffinity(0))))


def reduced(volume: np.ndarray, shape: np.ndarray) -> np.ndarray:
    """``volume`` resampled to ``shape`` (smaller or equal on each axis), smoothed first against aliasing; float32.

    Gaussian smoothing and linear interpolation are separable, so each axis is smoothed and resampled in turn, the
    most reduced first: the same result as smoothing and zooming the whole volume at once, in a third of the time
    for a 1 mm series (the later axes work on an already reduced volume). Each line along an axis is smoothed and
    resampled on its own, so the first axis is done in slabs across another one: the same values, without a float32
    copy of the whole series."""
    factors = np.array(volume.shape) / shape
    axes = [int(a) for a in np.argsort(factors)[::-1] if factors[a] > 1]
    if not axes:
        return np.asarray(volume, np.float32)
    first, across = axes[0], 1 if axes[0] == 0 else 0
    out = np.empty([int(shape[a]) if a == first else n for a, n in enumerate(volume.shape)], np.float32)
    step = max(1, SLAB_VOXELS * volume.shape[across] // volume.size)

    def reduce_slab(start: int) -> None:
        slab = tuple(slice(start, start + step) if a == across else slice(None) for a in range(volume.ndim))
        part = _unaligned(volume[slab])
        out[slab] = _linear_resize(ndimage.gaussian_filter1d(part, (factors[first] - 1) / 2, axis=first), first, int(shape[first]))

    with ThreadPoolExecutor(REDUCE_THREADS) as pool:  # scipy's filters release the GIL
        list(pool.map(reduce_slab, range(0, volume.shape[across], step)))
    for axis in axes[1:]:
        out = _linear_resize(ndimage.gaussian_filter1d(out, (factors[axis] - 1) / 2, axis=axis), axis, int(shape[axis]))
    return out


def _unaligned(part: np.ndarray) -> np.ndarray:
    """``part`` as float32 in a buffer whose last axis is padded: lines along another axis then do not stride by a
    power of two, which made them all compete for the same cache sets (a 64-row slab of a 512 x 512 series filtered
    along its slices took 3 times as long)."""
    view = np.empty((*part.shape[:-1], part.shape[-1] + UNALIGN_PAD), np.float32)[..., : part.shape[-1]]
    view[...] = part
    return view


def _linear_resize(volume: np.ndarray, axis: int, n: int) -> np.ndarray:
    """``volume`` linearly resampled to ``n`` samples along ``axis``, voxel edges aligned and edge values repeated
    (``scipy.ndimage.zoom`` with order 1, ``grid_mode`` and mode "nearest", on one axis)."""
    m = volume.shape[axis]
    return _interpolated(volume, axis, np.clip((np.arange(n) + 0.5) * m / n - 0.5, 0, m - 1))


def upsampled(
    values: np.ndarray, box: tuple[slice, ...], shape: tuple[int, ...], target: tuple[int, ...], to_labels: Callable[[np.ndarray], np.ndarray]
) -> tuple[tuple[slice, ...], np.ndarray]:
    """The labels ``to_labels`` gives for ``values`` (channels first) of ``box`` in a grid of ``shape``, brought
    linearly to the grid of ``target`` shape that covers the same field (voxel edges aligned, as ``reduced`` made
    it): the box on the ``target`` grid, and the labels there (uint8). Beyond the box's outer voxel centres, its edge
    values are repeated. Each axis is interpolated in turn, and after the first in slabs of the target's slices,
    each made labels at once: the same labels as for the whole box brought over, without holding its values at the
    target's resolution."""
    spans, positions = [], []
    for s, m, n in zip(box, shape, target):
        start, stop = (s.start * n) // m, -((-s.stop * n) // m)
        positions.append(np.clip((np.arange(start, stop) + 0.5) * m / n - 0.5 - s.start, 0, s.stop - s.start - 1))
        spans.append(slice(start, stop))
    values = _interpolated(values, 1, positions[0])
    labels = np.empty([len(p) for p in positions], np.uint8)
    step = max(1, SLAB_VOXELS // (values.shape[0] * labels.shape[1] * labels.shape[2]))
    for first in range(0, labels.shape[0], step):
        slab = _interpolated(_interpolated(values[:, first : first + step], 2, positions[1]), 3, positions[2])
        labels[first : first + step] = to_labels(slab)
    return tuple(spans), labels


def _interpolated(values: np.ndarray, axis: int, position: np.ndarray) -> np.ndarray:
    """``values`` linearly interpolated along ``axis`` at fractional indices ``position`` (within the axis)."""
    m = values.shape[axis]
    below = np.minimum(position.astype(int), max(m - 2, 0))
    weight = (position - below).astype(np.float32).reshape([-1 if a == axis else 1 for a in range(values.ndim)])
    return np.take(values, below, axis=axis) * (1 - weight) + np.take(values, np.minimum(below + 1, m - 1), axis=axis) * weight


def nearest_resize(labels: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Labels brought to ``shape`` by nearest neighbour, voxel centres aligned (one axis at a time)."""
    for axis, (n, m) in enumerate(zip(shape, labels.shape)):
        labels = np.take(labels, np.minimum(((np.arange(n) + 0.5) * m / n).astype(int), m - 1), axis=axis)
    return labels
