"""Variants of a real CT for testing what the node reports: one kidney replaced by fat (a nephrectomy or agenesis),
one moved down (a low or pelvic kidney) and a field of view that ends in the middle of one kidney. Images are SimpleITK (HU), masks boolean ``[z, y, x]``
arrays on their grid."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

#: Perirenal fat (HU): mean and the spread of the real image's noise drawn over it.
FAT_HU, FAT_NOISE_HU = -100.0, 12.0


def without_kidney(ct: sitk.Image, kidney: np.ndarray, seed: int = 0) -> sitk.Image:
    """``ct`` with ``kidney`` (grown by two voxels, its partial-volume rim) replaced by fat with noise."""
    hu = sitk.GetArrayFromImage(ct).astype(np.float32)
    _fat(hu, ndimage.binary_dilation(kidney, iterations=2), seed)
    out = sitk.GetImageFromArray(hu)
    out.CopyInformation(ct)
    return out


def moved_down(ct: sitk.Image, kidney: np.ndarray, slices: int, seed: int = 0) -> tuple[sitk.Image, np.ndarray]:
    """``ct`` with ``kidney`` (and a voxel of rim) moved ``slices`` slices down (towards index 0), as a low or pelvic
    kidney lies, fat left in its place; returns the image and the kidney's new mask."""
    hu = sitk.GetArrayFromImage(ct).astype(np.float32)
    source = ndimage.binary_dilation(kidney, iterations=1)
    target, moved = np.zeros_like(source), np.zeros_like(kidney)
    target[:-slices], moved[:-slices] = source[slices:], kidney[slices:]
    out = hu.copy()
    _fat(out, source, seed)
    out[target] = hu[slices:][source[slices:]]
    image = sitk.GetImageFromArray(out)
    image.CopyInformation(ct)
    return image, moved


def _fat(hu: np.ndarray, where: np.ndarray, seed: int) -> None:
    """Fill ``where`` of ``hu`` with perirenal fat and noise, in place."""
    hu[where] = FAT_HU + np.random.default_rng(seed).normal(0.0, FAT_NOISE_HU, int(where.sum()))


def cut_through(ct: sitk.Image, kidney: np.ndarray, masks: dict[str, np.ndarray]) -> tuple[sitk.Image, dict[str, np.ndarray]]:
    """``ct`` cropped left-right through the middle of ``kidney`` (its centre column), keeping the side that holds
    the body's middle; ``masks`` cropped the same way."""
    columns = ct.GetSize()[0]
    centre = int(round(np.argwhere(kidney)[:, 2].mean()))
    keep = slice(centre, columns) if centre < columns / 2 else slice(0, centre + 1)
    cropped = ct[keep.start : keep.stop, :, :]
    return cropped, {name: np.ascontiguousarray(mask[:, :, keep]) for name, mask in masks.items()}
