"""Measure stage: keep the kidneys of the prediction, find their sides from the anatomy, and compute renal volumes."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from dicomnode.anatomy import Midline, canonical_flips, find_midline
from dicomnode.load import LoadedSeries
from dicomnode.segment import CORTEX, MEDULLA, Segmentation

STRUCTURES = ("parenchyma", "cortex", "medulla")
SIDES = ("left", "right")
#: Components smaller than this (ml) are specks, not kidneys.
MIN_KIDNEY_ML = 10.0


@dataclass(frozen=True)
class KidneyMeasurement:
    """Volumes (ml) of one kidney, its masks on the series grid, and where and how it lies."""

    side: str
    parenchyma_ml: float
    cortex_ml: float
    medulla_ml: float
    cortex: np.ndarray
    medulla: np.ndarray
    cortex_hu: float
    medulla_hu: float
    centre_mm: tuple[float, float, float]  # patient (x, y, z), LPS
    extent_mm: float  # longest side of its bounding box
    touches_edge: bool  # reaches the first or last row, column or slice
    spine_offset_mm: tuple[float, float] | None  # (x, y) of its centre from the spine's centre on its slices
    spine_slices: float  # share of its slices on which a vertebra was found

    @property
    def parenchyma(self) -> np.ndarray:
        return self.cortex | self.medulla

    def volume(self, structure: str) -> float:
        return {"parenchyma": self.parenchyma_ml, "cortex": self.cortex_ml, "medulla": self.medulla_ml}[structure]

    def mask(self, structure: str) -> np.ndarray:
        return {"parenchyma": self.parenchyma, "cortex": self.cortex, "medulla": self.medulla}[structure]


@dataclass(frozen=True)
class Measurements:
    """Per-side volumes, totals, ratios, the midline the sides came from, and notes on what was left out."""

    kidneys: dict[str, KidneyMeasurement]
    notes: list[str] = field(default_factory=list)
    midline_x: float = float("nan")  # patient x (mm) of the midline
    midline_source: str = ""  # spine, body outline, the two kidneys, nothing
    predicted_ml: float = 0.0  # everything the model called kidney, kept or not

    @property
    def total_parenchyma_ml(self) -> float:
        return sum(k.parenchyma_ml for k in self.kidneys.values())

    @property
    def cortex_ratio(self) -> float | None:
        total = self.total_parenchyma_ml
        return sum(k.cortex_ml for k in self.kidneys.values()) / total if total else None

    @property
    def left_split(self) -> float | None:
        """Left share of total parenchyma (split renal volume)."""
        total = self.total_parenchyma_ml
        return self.kidneys["left"].parenchyma_ml / total if total and "left" in self.kidneys else None

    def summary(self) -> dict[str, float | None | list[str]]:
        """Plain figures for the job record."""
        figures: dict[str, float | None | list[str]] = {
            f"{structure}_{side}_ml": round(k.volume(structure), 2) for side, k in self.kidneys.items() for structure in STRUCTURES
        }
        for side, k in self.kidneys.items():
            figures.update({f"cortex_{side}_hu": round(k.cortex_hu, 1), f"medulla_{side}_hu": round(k.medulla_hu, 1)})
        figures.update(
            total_parenchyma_ml=round(self.total_parenchyma_ml, 2),
            cortex_ratio=None if self.cortex_ratio is None else round(self.cortex_ratio, 4),
            left_split=None if self.left_split is None else round(self.left_split, 4),
            midline_x_mm=None if not np.isfinite(self.midline_x) else round(self.midline_x, 1),
            midline_from=self.midline_source,
            notes=self.notes,
        )
        return figures


def measure(series: LoadedSeries, segmentation: Segmentation) -> Measurements:
    """Keep the two largest kidney-sized components, assign sides from the patient's midline, and measure.

    The midline is the vertebral column's centre on the kidneys' slices; where no vertebra is found, the body
    outline's centre; where neither is found, the point between the two kidneys. LPS: +x is the patient's left.
    """
    labels = segmentation.labels
    parenchyma = labels > 0
    components, count = ndimage.label(parenchyma, structure=np.ones((3, 3, 3), bool))
    if count == 0:
        return Measurements({}, midline_source="nothing", predicted_ml=0.0)
    index = np.arange(1, count + 1)
    sizes = ndimage.sum_labels(parenchyma, components, index=index)
    kept = [int(i) + 1 for i in np.argsort(sizes)[::-1][:2] if sizes[i] * series.voxel_ml >= MIN_KIDNEY_ML]
    centres = {c: series.to_patient(np.array(ndimage.center_of_mass(components == c))) for c in kept}
    kidney_slices = np.unique(np.nonzero(np.isin(components, kept))[0]) if kept else np.array([], int)
    midline = _midline(series, kidney_slices)
    midline_x, source = midline.x_at(_canonical_slices(series, kidney_slices))
    if not np.isfinite(midline_x):
        midline_x = float(np.mean([c[0] for c in centres.values()])) if len(kept) == 2 else float("nan")
        source = "the two kidneys" if len(kept) == 2 else "nothing"
    kidneys: dict[str, KidneyMeasurement] = {}
    notes: list[str] = []
    for component in kept:
        centre = centres[component]
        if not np.isfinite(midline_x):
            notes.append("one kidney-sized component and no landmark for the midline: its side is unknown")
            continue
        side = "left" if centre[0] > midline_x else "right"
        if side in kidneys:
            notes.append(f"two kidney-sized components on the {side} side of the midline; the smaller one was ignored")
            continue
        kidneys[side] = _kidney(series, labels, components == component, side, centre, midline)
    return Measurements(
        kidneys, notes, midline_x=midline_x, midline_source=source,
        predicted_ml=float(parenchyma.sum() * series.voxel_ml),
    )


def _midline(series: LoadedSeries, slices: np.ndarray) -> Midline:
    """Spine and body centre on the given slices (array order), found on the volume in patient axes."""
    hu, corner = series.canonical()
    wanted = _canonical_slices(series, slices)
    subset = np.zeros(hu.shape[0], bool)
    subset[wanted] = True
    spacing = np.array(series.spacing)
    full = find_midline(hu[subset], corner, spacing)
    out = Midline(*(np.full(hu.shape[0], np.nan) for _ in range(3)))
    for values, target in zip((full.spine_x, full.spine_y, full.body_x), (out.spine_x, out.spine_y, out.body_x)):
        target[subset] = values
    return out


def _canonical_slices(series: LoadedSeries, slices: np.ndarray) -> np.ndarray:
    """Slice indices of the series in the slice order of its canonical (patient-axes) view."""
    flipped = canonical_flips(series.direction)
    return (series.hu.shape[0] - 1 - slices) if 0 in flipped else slices


def _kidney(series: LoadedSeries, labels: np.ndarray, mask: np.ndarray, side: str, centre: np.ndarray, midline: Midline) -> KidneyMeasurement:
    cortex, medulla = mask & (labels == CORTEX), mask & (labels == MEDULLA)
    box = ndimage.find_objects(mask.astype(np.uint8))[0]
    extent = max((s.stop - s.start) * d for s, d in zip(box, (series.spacing[2], series.spacing[1], series.spacing[0])))
    slices = _canonical_slices(series, np.arange(box[0].start, box[0].stop))
    found = np.isfinite(midline.spine_x[slices])
    offset = None
    if found.any():
        offset = (float(centre[0] - np.median(midline.spine_x[slices][found])), float(centre[1] - np.median(midline.spine_y[slices][found])))
    return KidneyMeasurement(
        side,
        float(mask.sum() * series.voxel_ml),
        float(cortex.sum() * series.voxel_ml),
        float(medulla.sum() * series.voxel_ml),
        cortex,
        medulla,
        float(series.hu[cortex].mean()) if cortex.any() else float("nan"),
        float(series.hu[medulla].mean()) if medulla.any() else float("nan"),
        (float(centre[0]), float(centre[1]), float(centre[2])),
        float(extent),
        _touches_edge(mask),
        offset,
        float(found.mean()),
    )


def _touches_edge(mask: np.ndarray) -> bool:
    return bool(mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any() or mask[:, :, 0].any() or mask[:, :, -1].any())
