"""Tissue around and inside a component on CT: the fat of its shell (perirenal fat) and whether it is bone."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

#: HU below which a voxel is fat (fat is about -150 to -50 HU; water and soft tissue above 0).
FAT_HU = -20.0
#: The shell fat_share looks at reaches this many voxels outside a mask.
SHELL_VOXELS = 3
#: HU above which a voxel is dense bone: cortical bone measures 500-1900 HU, the cancellous bone of ribs, vertebrae
#: and pelvis 100-400 HU. Renal parenchyma stays below it in every phase (corticomedullary cortex about 150-250
#: HU); only vessels, calyces filled with excreted contrast and stones inside a kidney reach it.
DENSE_HU = 300.0
#: A component at least BONE_DENSE_SHARE of whose voxels are above DENSE_HU, and less than BONE_FAT_SHARE of whose
#: shell is fat, is bone: a kidney lies in perirenal fat (the shared real CTs' kidneys: 0.65-0.93 of the shell at
#: the localizer's grid, none of their voxels dense), bone in muscle and marrow (the hip and ribs a localizer took
#: for kidney there: 0.12-0.26 fat, 14-64 % dense). Its limit: a corticomedullary kidney whose cortex averages near
#: 300 HU and which has little fat around it (a thin patient, a kidney against the liver or spleen) would be taken
#: for bone, and its side found missing.
BONE_DENSE_SHARE, BONE_FAT_SHARE = 0.10, 0.40


def shell_box(box: tuple[slice, ...], shape: tuple[int, ...]) -> tuple[slice, ...]:
    """``box`` grown by SHELL_VOXELS on every side, within ``shape``: the crop that holds a component's shell."""
    return tuple(slice(max(s.start - SHELL_VOXELS, 0), min(s.stop + SHELL_VOXELS, n)) for s, n in zip(box, shape))


def fat_share(hu: np.ndarray, mask: np.ndarray) -> float:
    """The share of ``mask``'s shell (1 to SHELL_VOXELS voxels outside it, in-plane and across slices) below FAT_HU;
    ``hu`` and ``mask`` are crops that hold the shell."""
    shell = ndimage.binary_dilation(mask, iterations=SHELL_VOXELS) & ~ndimage.binary_dilation(mask, iterations=1)
    values = hu[shell]
    return float(np.mean(values < FAT_HU)) if values.size else 0.0


def bone_like(hu: np.ndarray, mask: np.ndarray) -> tuple[bool, str]:
    """Whether the component ``mask`` is bone rather than kidney (dense, and not wrapped in fat), and why;
    ``hu`` and ``mask`` are crops that hold the component's shell."""
    dense = float(np.mean(hu[mask] > DENSE_HU)) if mask.any() else 0.0
    fat = fat_share(hu, mask)
    reason = f"{dense:.0%} of it above {DENSE_HU:.0f} HU, {fat:.0%} of its surroundings fat"
    return dense >= BONE_DENSE_SHARE and fat < BONE_FAT_SHARE, reason
