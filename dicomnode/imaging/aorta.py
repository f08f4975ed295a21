"""Image evidence for the contrast phase: the attenuation of the abdominal aorta, found by its shape and place.

The aorta is a round, vessel-sized region (12-40 mm across) in front of the vertebral body and left of its centre,
below bone density, at the same place on several slices. Bone, bowel with oral contrast and the iliac arteries fail
one of these tests; a slice without a vertebra gives no evidence.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from scipy import ndimage

from dicomnode.imaging.anatomy import disc, slice_landmarks
from dicomnode.imaging.axes import plane_in_patient_axes
from dicomnode.imaging.rescale import to_hu

#: Aorta attenuation (HU) at or above which a series looks arterial, and below which it looks unenhanced.
ARTERIAL_HU, UNENHANCED_HU = 200.0, 100.0
#: Lowest HU of an enhanced aorta candidate; unenhanced blood is about 30-60 HU.
ENHANCED_CANDIDATE_HU = UNENHANCED_HU
#: Search window relative to the vertebra (mm): anterior of its front edge, and left (+) / right (-) of its centre.
AHEAD_MM, BEHIND_MM, RIGHT_MM, LEFT_MM = 60.0, 10.0, 30.0, 50.0
#: Where a candidate's centre may lie: left (+) / right (-) of the vertebra's centre, and anterior (-) of its front
#: edge; the psoas muscles lie farther out and behind the front edge, the IVC to the right.
CENTRE_DX, MAX_CENTRE_DY = (-15.0, 40.0), 3.0
#: Expected aorta centre relative to the vertebra: left of centre and anterior of the front edge (mm).
EXPECTED_DX, EXPECTED_DY = 12.0, -18.0
#: Aorta calibre (equivalent diameter, mm) accepted.
MIN_DIAMETER_MM, MAX_DIAMETER_MM = 12.0, 40.0
#: Detections on different slices farther apart than this (mm, relative to the vertebra) are not one vessel.
CONTINUITY_MM = 15.0
#: Slices sampled per series, spread over its middle 70 %.
SAMPLED_SLICES = 9


class ImagePhase(str, enum.Enum):
    """What the aorta says about the contrast phase."""

    ARTERIAL = "arterial enhancement"
    ENHANCED = "enhanced, below arterial level"
    UNENHANCED = "no contrast enhancement"
    UNKNOWN = "no image evidence"


@dataclass(frozen=True)
class AortaEvidence:
    """The verdict of the image check, the aorta's HU where it was measured, and why."""

    phase: ImagePhase
    hu: float | None
    reason: str


@dataclass(frozen=True)
class _Detection:
    hu: float
    enhanced: bool
    offset: tuple[float, float]  # (dx, dy) mm of the candidate's centre from the vertebra's centre and front edge


def phase_of(hu: float) -> ImagePhase:
    """The phase an aorta attenuation indicates."""
    if hu >= ARTERIAL_HU:
        return ImagePhase.ARTERIAL
    return ImagePhase.ENHANCED if hu >= UNENHANCED_HU else ImagePhase.UNENHANCED


def aorta_evidence(files: list[Path]) -> AortaEvidence:
    """Find the aorta on slices spread over the series and judge the phase by its attenuation."""
    if not files:
        return AortaEvidence(ImagePhase.UNKNOWN, None, "no slices")
    picks = sorted({int(round(f * (len(files) - 1))) for f in np.linspace(0.15, 0.85, SAMPLED_SLICES)})
    spine_slices, detections = 0, []
    for index in picks:
        read = _read_slice(files[index])
        if read is None:
            continue
        with_spine, detection = find_aorta(*read)
        spine_slices += with_spine
        if detection is not None:
            detections.append(detection)
    return judge(detections, spine_slices)


def judge(detections: list[_Detection], spine_slices: int) -> AortaEvidence:
    """One verdict from the slices' detections: consistent enhanced ones first, then consistent unenhanced ones."""
    for enhanced in (True, False):
        found = _consistent([d for d in detections if d.enhanced == enhanced])
        if len(found) >= 2:
            hu = float(np.median([d.hu for d in found]))
            return AortaEvidence(phase_of(hu), hu, f"aorta {hu:.0f} HU on {len(found)} slices")
    if spine_slices >= 3 and not any(d.enhanced for d in detections):
        return AortaEvidence(
            ImagePhase.UNENHANCED,
            None,
            f"no vessel above {ENHANCED_CANDIDATE_HU:.0f} HU in front of the spine on {spine_slices} slices",
        )
    return AortaEvidence(ImagePhase.UNKNOWN, None, f"aorta not found (spine on {spine_slices} slices)")


def _consistent(detections: list[_Detection]) -> list[_Detection]:
    """The detections lying at one place relative to the spine (within 15 mm of their median)."""
    if not detections:
        return []
    centre = np.median([d.offset for d in detections], axis=0)
    return [d for d in detections if np.hypot(*(np.array(d.offset) - centre)) <= CONTINUITY_MM]


def _read_slice(path: Path) -> tuple[np.ndarray, tuple[float, float]] | None:
    """One slice in HU, flipped into patient axes, with its (x, y) pixel size; None where unreadable."""
    try:
        ds = pydicom.dcmread(path)
        hu = to_hu(ds, ds.pixel_array)
        row_mm, col_mm = (float(v) for v in ds.PixelSpacing)
        orientation = [float(v) for v in ds.ImageOrientationPatient]
    except Exception:  # no usable pixels or geometry: no image evidence from this slice
        return None
    if hu.ndim != 2 or len(orientation) != 6:
        return None
    return plane_in_patient_axes(hu, orientation[:3], orientation[3:]), (col_mm, row_mm)


def find_aorta(hu: np.ndarray, pixel_mm: tuple[float, float]) -> tuple[bool, _Detection | None]:
    """On one axial slice in patient axes: whether a vertebra was found, and the aorta candidate nearest its expected place.

    An enhanced candidate (> 100 HU) is preferred; otherwise an unenhanced one (-10 to 100 HU, opened by a 4 mm disc
    to part it from the crura and bowel).
    """
    marks = slice_landmarks(hu, pixel_mm)
    if marks is None or marks.spine is None or marks.spine_front_mm is None or marks.spine_centre is None:
        return False, None
    sx, sy = pixel_mm
    spine_x, front = marks.spine_centre[0], marks.spine_front_mm
    rows = np.arange(hu.shape[0])[:, None] * sy
    cols = np.arange(hu.shape[1])[None, :] * sx
    window = (rows >= front - AHEAD_MM) & (rows <= front + BEHIND_MM) & (cols >= spine_x - RIGHT_MM) & (cols <= spine_x + LEFT_MM)
    if not window.any():
        return True, None
    grow, radius = max(1, int(round(2.0 / min(sx, sy)))), max(1, int(round(4.0 / min(sx, sy))))
    # every step below looks no farther than grow or radius voxels, so it is done in the window's box with that margin
    crop = _box(window, grow + radius + 1)
    corner = (crop[0].start, crop[1].start)
    away_from_bone = ~ndimage.binary_dilation(marks.spine[crop], iterations=grow)
    allowed = window[crop] & marks.body[crop] & away_from_bone
    enhanced = allowed & (hu[crop] > ENHANCED_CANDIDATE_HU) & (hu[crop] < 1000)
    plain = ndimage.binary_opening(allowed & (hu[crop] > -10) & (hu[crop] < UNENHANCED_HU), structure=disc(radius))
    for mask, is_enhanced in ((enhanced, True), (plain, False)):
        best = _nearest_round_region(mask, corner, hu, pixel_mm, (spine_x, front))
        if best is not None:
            value, offset = best
            return True, _Detection(value, is_enhanced, offset)
    return True, None


def _nearest_round_region(
    mask: np.ndarray, corner: tuple[int, int], hu: np.ndarray, pixel_mm: tuple[float, float], spine: tuple[float, float]
) -> tuple[float, tuple[float, float]] | None:
    """Median HU and centre offset (mm) from ``spine`` (centre x, front edge y) of the vessel-sized, round region of
    ``mask`` in the aorta's place nearest its expected centre; ``mask`` is a part of ``hu``'s plane whose first
    pixel is ``corner`` (row, column)."""
    sx, sy = pixel_mm
    components, count = ndimage.label(mask)
    best, best_distance = None, np.inf
    for label, box in enumerate(ndimage.find_objects(components), start=1):
        rows, cols = np.nonzero(components[box] == label)
        rows, cols = rows + box[0].start + corner[0], cols + box[1].start + corner[1]
        area = rows.size * sx * sy
        diameter = 2.0 * np.sqrt(area / np.pi)
        if not MIN_DIAMETER_MM <= diameter <= MAX_DIAMETER_MM:
            continue
        cx, cy = float(cols.mean() * sx), float(rows.mean() * sy)
        dx, dy = cx - spine[0], cy - spine[1]
        if not (CENTRE_DX[0] <= dx <= CENTRE_DX[1] and dy <= MAX_CENTRE_DY):
            continue
        reach = float(np.sqrt(((cols * sx - cx) ** 2 + (rows * sy - cy) ** 2).max())) + 0.5 * max(sx, sy)
        if area / (np.pi * reach**2) < 0.45:  # elongated or irregular: bowel, crus, vertebra's edge
            continue
        distance = float(np.hypot(dx - EXPECTED_DX, dy - EXPECTED_DY))
        if distance < best_distance:
            best, best_distance = (float(np.median(hu[rows, cols])), (dx, dy)), distance
    return best


def _box(mask: np.ndarray, margin: int) -> tuple[slice, ...]:
    """The box of ``mask``'s pixels (not empty) grown by ``margin`` within the array."""
    spans = [np.flatnonzero(mask.any(axis=1 - axis)) for axis in range(2)]
    return tuple(slice(max(int(on[0]) - margin, 0), min(int(on[-1]) + 1 + margin, n)) for on, n in zip(spans, mask.shape))
