"""Measure stage: keep the kidneys of the prediction, find their sides from the anatomy, and compute renal volumes."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
from scipy import ndimage
from skimage.morphology import convex_hull_image

from dicomnode.imaging.anatomy import Midline, find_midline
from dicomnode.imaging.axes import canonical_flips
from dicomnode.imaging.load import LoadedSeries
from dicomnode.imaging.tissue import SHELL_VOXELS, fat_share, shell_box
from dicomnode.renal import SIDES, STRUCTURES, Side, Structure
from dicomnode.renal_limits import KIDNEY_ANTEROPOSTERIOR_MM, KIDNEY_HU, KIDNEY_LATERAL_MM, KIDNEY_ML, KIDNEY_PART_ML
from dicomnode.segment.band import VolumeBand
from dicomnode.segment.model import Algorithm, ModelSide, Segmentation, TissueLabel

#: Components smaller than this (ml) are not kidneys: half the smallest of 416 hand-drawn KiTS19 kidneys (43 ml), or,
#: for a component the image's edge cuts, KIDNEY_PART_ML; at most MAX_CANDIDATES of the largest are considered.
MIN_KIDNEY_ML, MAX_CANDIDATES = 20.0, 8
#: Two kidneys' centres at most this far apart in height (mm) count as a pair.
SAME_HEIGHT_MM = 100.0
#: A kidney lies in the retroperitoneum, wrapped in perirenal fat: the share of a component's shell (1-3 voxels
#: outside it) below FAT_HU (see :func:`fat_share`). Reference kidneys of the shared real CTs measure 0.72-0.91; a
#: kidney-sized blob inside the liver 0.04. A component with less than RETROPERITONEAL_FAT_SHARE is not preferred as
#: a kidney.
RETROPERITONEAL_FAT_SHARE = 0.25
#: The outline's ring: how deep (voxels, in-plane) into each slice's convex hull of the kidney the outer surface is
#: taken, so that the sinus, inside the hull, is not part of it.
OUTLINE_RING_VOXELS = 1
#: At most about this many of a kidney's slices are looked at for its outline (evenly spaced; thin-slice series).
OUTLINE_SLICES = 40
#: Without contrast the parenchyma is nearly uniform (cortex and medulla 30-40 HU), and the liver (about 55-65 HU) and
#: spleen (45-50 HU) lie against it. A voxel more than DENSER_HU above the kidney's median, after a median filter of
#: DENSER_FILTER_VOXELS in-plane (noise), is denser tissue inside the outline; the share of such voxels (voxels of the
#: outline's own 1-voxel ring left out: partial volume) is :attr:`KidneyMeasurement.denser_share`.
DENSER_HU, DENSER_FILTER_VOXELS = 20.0, 5
#: Inside a kidney's outline (each slice's convex hull) but outside its mask, tissue between unopacified urine and an
#: enhanced vessel (HU, after an in-plane median filter of DENSER_FILTER_VOXELS) is renal tissue the model left out;
#: sinus fat, the collecting system and arteries fall outside the range (the hilar veins do not, so a little is
#: expected). Its share of the kidney is :attr:`KidneyMeasurement.left_out_share`.
LEFT_OUT_HU = (25.0, 180.0)
#: A cortex is at most some 10 mm thick; cortex voxels deeper than this (mm) inside the cortex mask belong to a
#: thicker structure taken in (spleen, liver, bowel wall, a vessel of cortex density): their share of the cortex is
#: :attr:`KidneyMeasurement.thick_cortex_share`.
CORTEX_HALF_THICKNESS_MM = 6.0


@dataclass(frozen=True)
class KidneyMeasurement:
    """Volumes (ml) of one kidney, its masks (kept inside its box of the series grid), and where and how it lies."""

    side: Side
    parenchyma_ml: float
    cortex_ml: float
    medulla_ml: float
    box: tuple[slice, ...]  # of the series grid (slice, row, column), holding the kidney
    shape: tuple[int, ...]  # the series grid's
    cortex_in_box: np.ndarray
    medulla_in_box: np.ndarray
    cortex_hu: float
    medulla_hu: float
    centre_mm: tuple[float, float, float]  # patient (x, y, z), LPS
    extent_mm: float  # longest side of its bounding box
    touches_edge: bool  # reaches the first or last row, column or slice
    cut_share: float  # the largest face of it on an image edge, as a share of its largest cross-section on that axis
    spine_offset_mm: tuple[float, float] | None  # (x, y) of its centre from the spine's centre on its slices
    spine_slices: float  # share of its slices on which a vertebra was found
    model_side: Side | None = None  # the side most of its voxels have in the model's own labels, where it has them
    fat_share: float = float("nan")  # share of its shell that is fat (FAT_HU): perirenal fat
    outline_medulla_share: float = float("nan")  # share of its outer surface the model labelled medulla
    denser_share: float = float("nan")  # share of it denser than its median by DENSER_HU (see there)
    left_out_share: float = float("nan")  # renal-density tissue inside its outline but outside it, as a share of it (LEFT_OUT_HU)
    thick_cortex_share: float = float("nan")  # share of its cortex deeper than CORTEX_HALF_THICKNESS_MM inside the cortex
    ranges: dict[Structure, tuple[float, float]] = field(default_factory=dict)  # ml (minimum, maximum) per structure (band.py)

    @property
    def cortex(self) -> np.ndarray:
        return self.mask(Structure.CORTEX)

    @property
    def medulla(self) -> np.ndarray:
        return self.mask(Structure.MEDULLA)

    @property
    def parenchyma(self) -> np.ndarray:
        return self.mask(Structure.PARENCHYMA)

    def volume(self, structure: str) -> float:
        return {Structure.PARENCHYMA: self.parenchyma_ml, Structure.CORTEX: self.cortex_ml, Structure.MEDULLA: self.medulla_ml}[Structure(structure)]

    def spread(self, structure: str) -> float | None:
        """The width of the structure's range as a share of its volume; None where the model gave no range."""
        found = self.ranges.get(Structure(structure))
        volume = self.volume(structure)
        return None if found is None or not volume else (found[1] - found[0]) / volume

    def mask_in_box(self, structure: str) -> np.ndarray:
        """The structure's mask inside :attr:`box`."""
        if structure == Structure.PARENCHYMA:
            return self.cortex_in_box | self.medulla_in_box
        return {Structure.CORTEX: self.cortex_in_box, Structure.MEDULLA: self.medulla_in_box}[Structure(structure)]

    def mask(self, structure: str) -> np.ndarray:
        """The structure's mask on the whole series grid (a new array, as large as the volume)."""
        full = np.zeros(self.shape, bool)
        full[self.box] = self.mask_in_box(structure)
        return full

    def slice_mask(self, structure: str, k: int) -> np.ndarray:
        """The structure's mask on the series' slice ``k`` (array order)."""
        plane = np.zeros(self.shape[1:], bool)
        z, rows, columns = self.box
        if z.start <= k < z.stop:
            plane[rows, columns] = self.mask_in_box(structure)[k - z.start]
        return plane

    def slice_areas(self) -> np.ndarray:
        """Parenchyma voxels on each of the series' slices (array order)."""
        areas = np.zeros(self.shape[0], np.int64)
        areas[self.box[0]] = self.mask_in_box(Structure.PARENCHYMA).sum(axis=(1, 2))
        return areas


@dataclass(frozen=True)
class Measurements:
    """Per-side volumes, totals, ratios, the midline the sides came from, and notes on what was left out."""

    kidneys: dict[Side, KidneyMeasurement]
    notes: list[str] = field(default_factory=list)
    midline_x: float = float("nan")  # patient x (mm) of the midline
    midline_source: str = ""  # spine, body outline, the two kidneys, nothing
    predicted_ml: float = 0.0  # everything the model called kidney, kept or not
    algorithms: dict[str, Algorithm] = field(default_factory=dict)  # what made each structure

    @property
    def total_parenchyma_ml(self) -> float:
        return sum(k.parenchyma_ml for k in self.kidneys.values())

    @property
    def cortex_ratio(self) -> float | None:
        total = self.total_parenchyma_ml
        return sum(k.cortex_ml for k in self.kidneys.values()) / total if total else None

    @property
    def left_split(self) -> float | None:
        """Left share of total parenchyma (split renal volume), where both kidneys are measured."""
        total = self.total_parenchyma_ml
        return self.kidneys[Side.LEFT].parenchyma_ml / total if total and len(self.kidneys) == 2 else None

    def summary(self) -> dict[str, object]:
        """Plain figures for the job record."""
        figures: dict[str, object] = {f"{structure}_{side}_ml": round(k.volume(structure), 2) for side, k in self.kidneys.items() for structure in STRUCTURES}
        for side, k in self.kidneys.items():
            figures.update({f"cortex_{side}_hu": round(k.cortex_hu, 1), f"medulla_{side}_hu": round(k.medulla_hu, 1)})
            figures.update({f"{structure}_{side}_range_ml": [round(low, 2), round(high, 2)] for structure, (low, high) in k.ranges.items()})
        figures.update(
            total_parenchyma_ml=round(self.total_parenchyma_ml, 2),
            predicted_ml=round(self.predicted_ml, 2),
            cortex_ratio=None if self.cortex_ratio is None else round(self.cortex_ratio, 4),
            left_split=None if self.left_split is None else round(self.left_split, 4),
            midline_x_mm=None if not np.isfinite(self.midline_x) else round(self.midline_x, 1),
            midline_from=self.midline_source,
            notes=self.notes,
        )
        return figures


def measure(series: LoadedSeries, segmentation: Segmentation) -> Measurements:
    """Pick one kidney per side of the patient's midline from the predicted components, and measure them.

    The midline is the vertebral column's centre on the candidates' slices; where no vertebra is found, the body
    outline's centre; where neither is found, the point between the two largest components. LPS: +x is the
    patient's left. The two kidneys are the pair of components, one per side, that best look like kidneys: beside
    the spine at its depth, of a kidney's volume, at one height, inside the field of view (the pelvis and the lung
    bases often reach the image's edge), and then the largest. A kidney is chosen by anatomy before size: beside
    the spine at its depth, wrapped in perirenal fat (a blob in the liver or spleen is not), of a kidney's volume, at
    one height with the other, and then the larger. Touching the image's edge does not count against a component: a
    kidney cut off by the field of view is still the kidney (QC reports it). Everything else is stray.
    """
    labels = segmentation.labels
    algorithms: dict[str, Algorithm] = {structure: segmentation.algorithm(structure) for structure in STRUCTURES}
    crop = _occupied(labels, SHELL_VOXELS)
    if crop is None:
        return Measurements({}, midline_source="nothing", predicted_ml=0.0, algorithms=algorithms)
    # everything is done inside the prediction's box (a few % of a thin-slice volume); boxes are global
    parenchyma = labels[crop] > 0
    predicted_ml = float(np.count_nonzero(parenchyma) * series.voxel_ml)
    start = np.array([s.start for s in crop])
    components, count = ndimage.label(parenchyma, structure=np.ones((3, 3, 3), bool))
    sizes = np.bincount(components.ravel(), minlength=count + 1)[1:]  # one pass, not scipy's sum_labels (a pass per label)
    boxes = [_shifted(box, start) for box in ndimage.find_objects(components)]
    largest = [int(i) + 1 for i in np.argsort(sizes)[::-1][:MAX_CANDIDATES] if sizes[i] * series.voxel_ml >= KIDNEY_PART_ML]
    sized = [c for c in largest if sizes[c - 1] * series.voxel_ml >= MIN_KIDNEY_ML or _box_touches_edge(boxes[c - 1], labels.shape)]

    def inside(c: int) -> np.ndarray:
        """Component ``c`` within its (global) box."""
        return components[_shifted(boxes[c - 1], -start)] == c

    candidates = [c for c in sized if KIDNEY_HU[0] <= float(series.hu[boxes[c - 1]][inside(c)].mean()) <= KIDNEY_HU[1]]
    if not candidates:
        return Measurements({}, midline_source="nothing", predicted_ml=predicted_ml, algorithms=algorithms)
    centres = {c: series.to_patient(np.argwhere(inside(c)).mean(axis=0) + [b.start for b in boxes[c - 1]]) for c in candidates}
    slices = np.unique(np.concatenate([np.arange(boxes[c - 1][0].start, boxes[c - 1][0].stop) for c in candidates]))
    midline = _midline(series, slices)
    midline_x, source = midline.x_at(_canonical_slices(series, slices))
    if not np.isfinite(midline_x):
        largest = candidates[:2]
        midline_x = float(np.mean([centres[c][0] for c in largest])) if len(largest) == 2 else float("nan")
        source = "the two kidneys" if len(largest) == 2 else "nothing"
    if not np.isfinite(midline_x):
        unknown = ["one kidney-sized component and no landmark for the midline: its side is unknown"]
        return Measurements({}, unknown, midline_x, source, predicted_ml, algorithms)
    offsets = {c: _spine_offset(series, boxes[c - 1], centres[c], midline) for c in candidates}
    sides = {c: Side.LEFT if centres[c][0] > midline_x else Side.RIGHT for c in candidates}
    in_place = {c: _in_kidney_place(offsets[c][0]) for c in candidates}
    fat = {c: _fat_share(series.hu, components, start, boxes[c - 1], c) for c in candidates}
    wrapped = {c: fat[c] >= RETROPERITONEAL_FAT_SHARE for c in candidates}

    kidney_sized = {c: KIDNEY_ML[0] <= sizes[c - 1] * series.voxel_ml <= KIDNEY_ML[1] for c in candidates}

    def preference(pair: tuple[int | None, int | None]) -> tuple[int, int, int, bool, float]:
        """Kidneys in their place first, wrapped in fat, then of a kidney's size, at one height, larger."""
        chosen = [c for c in pair if c is not None]
        heights = [centres[c][2] for c in chosen]
        same_height = len(chosen) == 2 and abs(heights[0] - heights[1]) <= SAME_HEIGHT_MM
        return (
            sum(in_place[c] for c in chosen),
            sum(wrapped[c] for c in chosen),
            sum(kidney_sized[c] for c in chosen),
            same_height,
            float(sum(sizes[c - 1] for c in chosen)),
        )

    left = [c for c in candidates if sides[c] is Side.LEFT] + [None]
    right = [c for c in candidates if sides[c] is Side.RIGHT] + [None]
    best = max(((lc, rc) for lc in left for rc in right), key=preference)
    kidneys: dict[Side, KidneyMeasurement] = {}
    notes: list[str] = []
    for side, component in zip(SIDES, best):
        if component is not None:
            box = boxes[component - 1]
            mask = inside(component)
            model_side = _model_side(segmentation.sides, mask, box)
            kidney = _kidney(series, labels, mask, side, centres[component], box, offsets[component], model_side, fat[component])
            kidneys[side] = replace(kidney, ranges=_ranges(kidney, segmentation.bands))
        if sum(in_place[c] for c in candidates if sides[c] == side and c != component):
            notes.append(f"more than one kidney-sized component beside the spine on the {side} side; one was kept")
    return Measurements(kidneys, notes, midline_x=midline_x, midline_source=source, predicted_ml=predicted_ml, algorithms=algorithms)


def _model_side(sides: np.ndarray | None, mask: np.ndarray, box: tuple[slice, ...]) -> Side | None:
    """The side the model gave most of ``mask``'s voxels (``mask`` within ``box``), where the model names sides."""
    if sides is None:
        return None
    named = sides[box][mask]
    right, left = np.count_nonzero(named == ModelSide.RIGHT), np.count_nonzero(named == ModelSide.LEFT)
    return None if right == left == 0 else (Side.LEFT if left > right else Side.RIGHT)


def _spine_offset(series: LoadedSeries, box: tuple[slice, ...], centre: np.ndarray, midline: Midline) -> tuple[tuple[float, float] | None, float]:
    """A component's centre relative to the spine's centre on its slices (x, y mm), and the share of its slices on
    which a vertebra was found."""
    slices = _canonical_slices(series, np.arange(box[0].start, box[0].stop))
    found = np.isfinite(midline.spine_x[slices])
    if not found.any():
        return None, 0.0
    spine = (float(np.median(midline.spine_x[slices][found])), float(np.median(midline.spine_y[slices][found])))
    return (float(centre[0] - spine[0]), float(centre[1] - spine[1])), float(found.mean())


def _in_kidney_place(offset: tuple[float, float] | None) -> bool:
    """Beside the spine and at its depth (unknown where no spine was found: then size alone decides)."""
    if offset is None:
        return False
    (low, high), (front, back) = KIDNEY_LATERAL_MM, KIDNEY_ANTEROPOSTERIOR_MM
    return low <= abs(offset[0]) <= high and front <= offset[1] <= back


def _midline(series: LoadedSeries, slices: np.ndarray) -> Midline:
    """Spine and body centre on the given slices (array order), found on the volume in patient axes."""
    hu, corner = series.canonical()
    return find_midline(hu, corner, np.array(series.spacing), _canonical_slices(series, slices))


def _canonical_slices(series: LoadedSeries, slices: np.ndarray) -> np.ndarray:
    """Slice indices of the series in the slice order of its canonical (patient-axes) view."""
    flipped = canonical_flips(series.direction)
    return (series.hu.shape[0] - 1 - slices) if 0 in flipped else slices


def _kidney(
    series: LoadedSeries,
    labels: np.ndarray,
    mask: np.ndarray,
    side: Side,
    centre: np.ndarray,
    box: tuple[slice, ...],
    offset: tuple[tuple[float, float] | None, float],
    model_side: Side | None,
    fat_share: float,
) -> KidneyMeasurement:
    """One kidney's volumes and intensities; ``mask`` is the kidney within ``box``, where all the work is done."""
    inside, hu = mask, series.hu[box]
    cortex, medulla = inside & (labels[box] == TissueLabel.CORTEX), inside & (labels[box] == TissueLabel.MEDULLA)
    cortex_hu, medulla_hu = hu[cortex], hu[medulla]
    extent = max((s.stop - s.start) * d for s, d in zip(box, series.spacing_zyx))
    return KidneyMeasurement(
        side,
        float(inside.sum() * series.voxel_ml),
        float(cortex_hu.size * series.voxel_ml),
        float(medulla_hu.size * series.voxel_ml),
        box,
        labels.shape,
        cortex,
        medulla,
        float(cortex_hu.mean()) if cortex_hu.size else float("nan"),
        float(medulla_hu.mean()) if medulla_hu.size else float("nan"),
        (float(centre[0]), float(centre[1]), float(centre[2])),
        float(extent),
        _box_touches_edge(box, labels.shape),
        _cut_share(inside, box, labels.shape),
        offset[0],
        offset[1],
        model_side,
        fat_share,
        _outline_medulla_share(cortex, medulla),
        _denser_share(hu, inside),
        _left_out_share(hu, inside),
        _thick_share(cortex, series.spacing_zyx),
    )


def _box_touches_edge(box: tuple[slice, ...], shape: tuple[int, ...]) -> bool:
    return any(s.start == 0 or s.stop == n for s, n in zip(box, shape))


def _occupied(mask: np.ndarray, margin: int) -> tuple[slice, ...] | None:
    """The box of ``mask``'s nonzero voxels grown by ``margin`` voxels (within the array), or None where it is
    empty; each axis is searched only within the span found on the axes before it, so that the whole volume is read
    once."""
    spans, region = [], mask
    for axis in range(mask.ndim):
        on = np.flatnonzero(region.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        if not on.size:
            return None
        region = region[tuple(slice(int(on[0]), int(on[-1]) + 1) if a == axis else slice(None) for a in range(mask.ndim))]
        spans.append(slice(max(int(on[0]) - margin, 0), min(int(on[-1]) + 1 + margin, mask.shape[axis])))
    return tuple(spans)


def _shifted(box: tuple[slice, ...], by: np.ndarray) -> tuple[slice, ...]:
    return tuple(slice(s.start + int(d), s.stop + int(d)) for s, d in zip(box, by))


def _fat_share(hu: np.ndarray, components: np.ndarray, start: np.ndarray, box: tuple[slice, ...], label: int) -> float:
    """:func:`fat_share` of a component; ``components`` are labelled in a crop of ``hu`` starting at ``start`` that
    holds the shell, ``box`` is global."""
    padded = shell_box(box, hu.shape)
    return fat_share(hu[padded], components[_shifted(padded, -start)] == label)


def _outline_medulla_share(cortex: np.ndarray, medulla: np.ndarray) -> float:
    """The share of a kidney's outer surface that is labelled medulla: its voxels in the ring just inside each slice's
    convex hull of the kidney (the sinus and the hilum lie deeper in the hull, so they are not part of it). Cortex
    covers the medulla everywhere but at the sinus, so a high share says the outline runs into a neighbour whose
    density is the medulla's (the spleen or liver in the arterial phase)."""
    parenchyma = cortex | medulla
    on_ring = in_medulla = 0
    for z in _sampled_slices(parenchyma):
        hull = convex_hull_image(parenchyma[z])
        ring = hull & ~ndimage.binary_erosion(hull, iterations=OUTLINE_RING_VOXELS) & parenchyma[z]
        on_ring += int(ring.sum())
        in_medulla += int((ring & medulla[z]).sum())
    return in_medulla / on_ring if on_ring else 0.0


def _sampled_slices(mask: np.ndarray) -> np.ndarray:
    """The slices ``mask`` lies on, evenly thinned to about :data:`OUTLINE_SLICES` (a thin-slice series)."""
    on = np.flatnonzero(mask.any(axis=(1, 2)))
    return on[:: max(1, len(on) // OUTLINE_SLICES)]


def _denser_share(hu: np.ndarray, kidney: np.ndarray) -> float:
    """The share of a kidney's voxels (its outline's ring left out) denser than its median by :data:`DENSER_HU`
    after an in-plane median filter, on at most about :data:`OUTLINE_SLICES` of its slices; ``hu`` and ``kidney``
    are its box."""
    slices = _sampled_slices(kidney)
    core = ndimage.binary_erosion(kidney[slices], structure=np.array([[[0, 1, 0], [1, 1, 1], [0, 1, 0]]], bool))
    if not core.any():
        return 0.0
    smooth = median_at(hu[slices].astype(np.float32), core, DENSER_FILTER_VOXELS)
    return float(np.mean(smooth > np.median(smooth) + DENSER_HU))


def _ranges(kidney: KidneyMeasurement, bands: tuple[VolumeBand, ...]) -> dict[Structure, tuple[float, float]]:
    """Each structure's (minimum, maximum) volume from the band whose box holds the kidney's centre."""
    middle = tuple((s.start + s.stop) // 2 for s in kidney.box)
    band = next((b for b in bands if b.holds(middle)), None)
    if band is None:
        return {}
    return {s: (kidney.volume(s) * low, kidney.volume(s) * high) for s, (low, high) in band.ratios.items()}


def _left_out_share(hu: np.ndarray, kidney: np.ndarray) -> float:
    """Tissue of renal density inside each slice's convex hull of the kidney but outside its mask (LEFT_OUT_HU, after
    an in-plane median filter), as a share of the kidney, on at most about :data:`OUTLINE_SLICES` of its slices."""
    slices = _sampled_slices(kidney)
    if not slices.size:
        return 0.0
    hull = np.stack([convex_hull_image(kidney[z]) for z in slices])
    gap = hull & ~kidney[slices]
    if not gap.any():
        return 0.0
    smooth = median_at(hu[slices].astype(np.float32), gap, DENSER_FILTER_VOXELS)
    tissue = (smooth >= LEFT_OUT_HU[0]) & (smooth <= LEFT_OUT_HU[1])
    return float(tissue.sum() / kidney[slices].sum())


def _thick_share(cortex: np.ndarray, spacing_zyx: tuple[float, float, float]) -> float:
    """The share of the cortex deeper than :data:`CORTEX_HALF_THICKNESS_MM` inside the cortex mask (a structure too
    thick to be a cortex)."""
    if not cortex.any():
        return 0.0
    depth = ndimage.distance_transform_edt(np.pad(cortex, 1), sampling=spacing_zyx)[1:-1, 1:-1, 1:-1]
    return float(np.mean(depth[cortex] > CORTEX_HALF_THICKNESS_MM))


def median_at(planes: np.ndarray, where: np.ndarray, size: int) -> np.ndarray:
    """The median of each ``size`` x ``size`` in-plane window of ``planes`` at the voxels ``where`` is set, in the
    order of ``np.nonzero(where)``: ``scipy.ndimage.median_filter(planes, (1, size, size))[where]`` (edges mirrored as
    its default mode does), for those voxels only (a kidney's core is a third of its box)."""
    r, middle = size // 2, size * size // 2
    padded = np.pad(planes, ((0, 0), (r, r), (r, r)), mode="symmetric")
    k, y, x = np.nonzero(where)
    dy, dx = (d.ravel() for d in np.mgrid[0:size, 0:size])
    windows = padded[k[:, None], y[:, None] + dy, x[:, None] + dx]
    return np.partition(windows, middle, axis=1)[:, middle]


def _cut_share(inside: np.ndarray, box: tuple[slice, ...], shape: tuple[int, ...]) -> float:
    """How much of a kidney the image's edge cuts: its largest face on an edge of the image, as a share of its
    largest cross-section on the same axis (0: it does not reach an edge; about 1: cut through its middle)."""
    share = 0.0
    for axis in range(3):
        areas = inside.sum(axis=tuple(a for a in range(3) if a != axis))
        for on_edge, face in ((box[axis].start == 0, 0), (box[axis].stop == shape[axis], -1)):
            if on_edge and areas.max():
                share = max(share, float(areas[face] / areas.max()))
    return share
