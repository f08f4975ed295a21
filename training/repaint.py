"""Semi-real arterial cases: a real CT whose kidneys are repainted as in the corticomedullary (arterial) phase.

Inside each real kidney mask a cortex shell and a medulla (one confluent block, or pyramids between columns) get
arterial HU, the aorta is enhanced, and the real image's texture (its fine residual) is kept everywhere, so the
model meets real neighbours, real noise and a real header around kidneys whose cortex and medulla are known by
construction. Written at the CT's own slices and as 5 mm slices (each the mean of the thin slices it covers). Cases
made here test a model; never train on the ones you test with.
Arrays are ``[z, y, x]``; spacings (x, y, z) mm as SimpleITK gives them.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from dicomnode.renal import Side
from training.truth_case import SIDE_CODES, TruthCase, as_images, write_truth_case

#: Arterial-phase HU drawn per case (cortex, medulla below it by the difference, aorta); real ranges: cortex
#: 120-250, medulla 30-150, corticomedullary difference about 40-150 depending on timing and renal function.
CORTEX_HU, CORTICOMEDULLARY_HU, MEDULLA_HU, AORTA_HU = (140.0, 240.0), (40.0, 140.0), (30.0, 150.0), (220.0, 400.0)
CORTEX_MM = (3.0, 6.0)
#: Smoothing (mm) that separates the image's texture (the residual) from its local mean.
_TEXTURE_MM = 2.0
THICK_MM = 5.0


def read_nifti(path: Path) -> sitk.Image:
    """A NIfTI file as a SimpleITK image in LPS, read with nibabel (some public files have affines SimpleITK refuses:
    not exactly orthonormal); the direction is orthonormalised, axial volumes only."""
    img = nib.load(str(path))
    if not isinstance(img, nib.Nifti1Image):
        raise ValueError(f"path: {path} is not a NIfTI-1 image")
    data = np.asarray(img.dataobj, dtype=np.float32)
    affine = img.affine.copy()
    axes = nib.orientations.io_orientation(affine)
    lps = nib.orientations.axcodes2ornt(("L", "P", "S"))
    transform = nib.orientations.ornt_transform(axes, lps)
    data = nib.orientations.apply_orientation(data, transform)
    affine = affine @ nib.orientations.inv_ornt_aff(transform, img.shape)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    ras_to_lps = np.diag([-1.0, -1.0, 1.0])
    origin = ras_to_lps @ affine[:3, 3]
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(data, (2, 1, 0))))
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetOrigin(tuple(float(v) for v in origin))
    image.SetDirection((1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    return image


def repaint_arterial(ct: sitk.Image, kidneys: dict[Side, np.ndarray], aorta: np.ndarray | None, seed: int, confluent: bool) -> TruthCase:
    """Repaint ``ct`` (HU) as arterial inside ``kidneys`` (boolean masks on its grid, per side) and ``aorta``.

    ``confluent``: the medulla is one block under the cortex shell; otherwise 6-10 pyramids separated by columns of
    cortex. Truth volumes are counted on the CT's own grid."""
    rng = np.random.default_rng([seed, 20261207])
    hu = sitk.GetArrayFromImage(ct).astype(np.float32)
    spacing_zyx = ct.GetSpacing()[::-1]
    sigma = [_TEXTURE_MM / s for s in spacing_zyx]
    residual = hu - ndimage.gaussian_filter(hu, sigma)
    out, labels, sides = hu.copy(), np.zeros(hu.shape, np.uint8), np.zeros(hu.shape, np.uint8)
    drawn: dict[str, dict[str, float]] = {}
    truth: dict[str, dict[str, float]] = {}
    for side, mask in kidneys.items():
        cortex_hu = float(rng.uniform(*CORTEX_HU))
        medulla_hu = float(np.clip(cortex_hu - rng.uniform(*CORTICOMEDULLARY_HU), *MEDULLA_HU))
        cortex_mm = float(rng.uniform(*CORTEX_MM))
        depth = ndimage.distance_transform_edt(np.pad(mask, 1), sampling=spacing_zyx)[1:-1, 1:-1, 1:-1]
        cortex = mask & (depth <= cortex_mm)
        if not confluent:
            cortex |= mask & _columns(mask, spacing_zyx, int(rng.integers(6, 11)), rng)
        medulla = mask & ~cortex
        labels[medulla], labels[cortex] = 1, 2
        sides[mask] = SIDE_CODES[side]
        out[cortex] = cortex_hu + residual[cortex]
        out[medulla] = medulla_hu + residual[medulla]
        voxel_ml = float(np.prod(spacing_zyx)) / 1000.0
        drawn[side.value] = {
            "cortex_hu": round(cortex_hu, 1),
            "medulla_hu": round(medulla_hu, 1),
            "cortex_mm": round(cortex_mm, 2),
        }
        truth[side.value] = {"parenchyma": round(float(mask.sum()) * voxel_ml, 2), "cortex": round(float(cortex.sum()) * voxel_ml, 2)}
    aorta_hu = float(rng.uniform(*AORTA_HU))
    if aorta is not None:
        out[aorta] = aorta_hu + residual[aorta]
    image, label_image, side_image = as_images(ct, out, labels, sides)
    metadata = {"seed": seed, "medulla": "confluent" if confluent else "pyramids", "kidneys": drawn, "aorta_hu": round(aorta_hu, 1), "truth_ml": truth}
    return TruthCase(image, label_image, side_image, metadata)


def _columns(mask: np.ndarray, spacing_zyx, count: int, rng: np.random.Generator) -> np.ndarray:
    """Columns of Bertin: slabs 3 mm thick through the kidney's centre, at ``count`` random orientations."""
    points = np.argwhere(mask)
    centre = points.mean(axis=0)
    columns = np.zeros(mask.shape, bool)
    offsets = (points - centre) * np.array(spacing_zyx)
    for _ in range(count):
        normal = rng.normal(size=3)
        normal /= np.linalg.norm(normal)
        near = np.abs(offsets @ normal) < 1.5
        columns[tuple(points[near].T)] = True
    return columns


def thick_slices(case: TruthCase, thickness_mm: float = THICK_MM) -> TruthCase:
    """The case at ``thickness_mm`` slices, one per ``thickness_mm``: each the mean of the thin slices weighted by
    how much of each its slab covers (partial volume), its labels and sides those of the nearest thin slice."""
    spacing = case.image.GetSpacing()
    hu = sitk.GetArrayFromImage(case.image)
    thin = np.arange(hu.shape[0]) * spacing[2]  # thin slice centres from the first
    count = int((thin[-1] + spacing[2]) // thickness_mm)
    centres = thickness_mm / 2 - spacing[2] / 2 + np.arange(count) * thickness_mm
    low, high = centres[:, None] - thickness_mm / 2, centres[:, None] + thickness_mm / 2
    overlap = np.clip(np.minimum(high, thin + spacing[2] / 2) - np.maximum(low, thin - spacing[2] / 2), 0.0, None)
    weights = overlap / overlap.sum(axis=1, keepdims=True)
    nearest = np.abs(thin[None, :] - centres[:, None]).argmin(axis=1)
    arrays = [np.tensordot(weights, hu, axes=(1, 0)).astype(np.float32)]
    arrays += [sitk.GetArrayFromImage(m)[nearest] for m in (case.labels, case.sides)]
    direction = np.array(case.image.GetDirection()).reshape(3, 3)
    origin = np.array(case.image.GetOrigin()) + direction[:, 2] * centres[0]
    made = []
    for array in arrays:
        out = sitk.GetImageFromArray(np.ascontiguousarray(array))
        out.SetSpacing((spacing[0], spacing[1], thickness_mm))
        out.SetDirection(case.image.GetDirection())
        out.SetOrigin(tuple(float(v) for v in origin))
        made.append(out)
    return TruthCase(made[0], made[1], made[2], {**case.metadata, "slice_mm": thickness_mm})


def repaint_shared(data: Path, out: Path, seed: int) -> list[str]:
    """The shared real CTs (``real_ct``, ``real_ct2/s0009``) repainted as arterial, one with a confluent medulla and one
    with pyramids each, at their own slices and at 5 mm: eight cases written into ``out``; returns their names."""
    real, second = data / "real_ct", data / "real_ct2" / "s0009"
    sources = {
        "real_ct": (real / "example_ct.nii.gz", real / "example_ct_labels" / "kidney_{}.nii.gz", real / "example_ct_labels" / "aorta.nii.gz"),
        "s0009": (second / "ct.nii.gz", second / "kidney_{}.nii.gz", second / "aorta.nii.gz"),
    }
    names = []
    for index, (name, (ct_path, kidney_path, aorta_path)) in enumerate(sources.items()):
        ct = read_nifti(ct_path)
        kidneys = {side: sitk.GetArrayFromImage(read_nifti(Path(str(kidney_path).format(side.value)))) > 0.5 for side in Side}
        aorta = sitk.GetArrayFromImage(read_nifti(aorta_path)) > 0.5
        for confluent in (True, False):
            case = repaint_arterial(ct, kidneys, aorta, seed + 2 * index + int(confluent), confluent)
            case = TruthCase(case.image, case.labels, case.sides, {**case.metadata, "source": name})
            style = "confluent" if confluent else "pyramids"
            for thick, made in ((False, case), (True, thick_slices(case))):
                names.append(f"{name}_{style}_{'5mm' if thick else 'thin'}")
                write_truth_case(made, out, names[-1])
    return names
